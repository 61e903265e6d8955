"""Per-stage timing of both pipelines, interleaved in one process so that machine noise hits both alike, and judged
from the paired repetitions (`harness.bench.stats`).

Stages: `write` (cache of all sims), `read` (a fresh pipeline opening the training sims), `iterate` (one epoch of
`load_batches`), `convert` (`to_phiml` of one epoch of raw batches), `step` (one training step on the epoch's first
batch through the pipeline's own `train`: legacy loads, converts and trains as its trainer does, native as its own).
Within each repetition every stage runs legacy and native back to back, in alternating order, `PAIRS` such pairs. Warm-up repetitions are dropped. Each pair gives one ratio legacy / native; a stage whose
interval of the median ratio straddles its threshold is measured again, alone, in up to `MAX_ROUNDS` rounds.
"""
from __future__ import annotations

import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from harness import model
from harness.bench.stats import STRADDLE, RatioJudgement, judge_ratios, min_samples
from harness.pipeline import AbstractPipeline, BatchPlan, drain
from harness.data.simulate import Simulation

STAGES = ('write', 'read', 'iterate', 'convert', 'step')
# pairs per repetition: the cheap stages get more (milliseconds each: single pairs scatter most), the train step, the
# stage closest to a tie, 3; the cache write, the longest, one
PAIRS = {'read': 5, 'iterate': 5, 'convert': 5, 'step': 3}
MAX_ROUNDS = 3  # a straddling stage gets at most this many times the repetitions asked for
STAGE_TITLES = {'write': 'cache write', 'read': 'cache read', 'iterate': 'batch loading (1 epoch)',
                'convert': 'conversion to PhiML (1 epoch)', 'step': 'train step (own trainer)'}


@dataclass
class StageTiming:
    """Seconds per pair of one stage; `speedup` = legacy / native (> 1: native is faster).

    Attributes:
        legacy, native: Seconds per timed run; `legacy[i]` and `native[i]` ran back to back.
        judgement: The median paired ratio against the stage's threshold (None until judged).
        repeats: Timed repetitions run by `time_stages` (each of `PAIRS.get(stage, 1)` pairs); 0 where the lists were
            filled directly, one pair per repetition (`harness.bench.stages`).
    """
    stage: str
    legacy: list[float] = field(default_factory=list)
    native: list[float] = field(default_factory=list)
    judgement: RatioJudgement | None = None
    repeats: int = 0

    @property
    def legacy_s(self) -> float:
        return statistics.median(self.legacy)

    @property
    def native_s(self) -> float:
        return statistics.median(self.native)

    @property
    def speedup(self) -> float:
        """The ratio of the medians."""
        return self.legacy_s / self.native_s if self.native_s > 0 else float('inf')

    @property
    def paired_ratios(self) -> list[float]:
        """legacy / native of each pair (a pair timed at 0 s counts as infinitely fast)."""
        return [a / b if b > 0 else math.inf for a, b in zip(self.legacy, self.native)]

    def judge(self, threshold: float, confidence: float) -> RatioJudgement:
        self.judgement = judge_ratios(self.paired_ratios, threshold, confidence)
        return self.judgement

    def to_dict(self) -> dict:
        return {'legacy_s': self.legacy_s, 'native_s': self.native_s, 'speedup': self.speedup,
                'repeats': self.repeats or len(self.legacy), 'pairs': len(self.legacy), 'legacy_samples': self.legacy,
                'native_samples': self.native,
                'judgement': self.judgement.to_dict() if self.judgement else None}


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """`numerators[i] / denominators[i]` per repetition: a figure and its reference measured minutes apart on a shared
    machine drift together, so the spread of these ratios shows how firm the ratio of their medians is."""
    return [a / b for a, b in zip(numerators, denominators)]


def middle_half(values: Sequence[float]) -> list[float] | None:
    """The first and third quartile of `values` (None for none; a single value for both when there is one)."""
    if not values:
        return None
    if len(values) == 1:
        return [values[0], values[0]]
    low, _, high = statistics.quantiles(values, n=4, method='inclusive')
    return [low, high]


def round_targets(stage: str, repeats: int, confidence: float) -> list[int]:
    """Total repetitions of `stage` after each round: `repeats`, then 2x and 3x that, but at least as many as an
    interval at `confidence` needs (e.g. `[1, 2, 3]` pairs of 3 for the train step with 1 repetition; `[1, 5]` for
    the other stages)."""
    pairs = PAIRS.get(stage, 1)
    needed = -(-min_samples(confidence) // pairs)
    targets = []
    for k in range(1, MAX_ROUNDS + 1):
        total = k * repeats if k == 1 else max(k * repeats, needed)
        if not targets or total > targets[-1]:
            targets.append(total)
    return targets


def _timed(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def time_stages(legacy: AbstractPipeline, native: AbstractPipeline, simulation: Simulation, plan: BatchPlan,
                sims: Sequence[int], network, learning_rate: float, scratch: Path, *, repeats: int, warmup: int,
                thresholds: Mapping[str, float] | None = None, confidence: float = 0.9, extra_s: float = math.inf,
                progress: Callable[[int], None] | None = None) -> dict[str, StageTiming]:
    """Times every stage of both pipelines (already opened on `sims` and written to their caches) and judges each.

    Args:
        plan: The epoch whose batches are loaded, converted, and whose first batch is trained on.
        network: Copied for the train steps; never modified.
        scratch: Folder for the timed cache writes (removed afterwards).
        thresholds: Stage -> the smallest median ratio legacy / native that passes (0 or missing: not judged, never
            re-measured).
        confidence: Of the interval each stage is judged by.
        extra_s: Seconds the re-measurements of straddling stages may take in all.
        progress: Called with 1 after each repetition (warm-up and re-measurements included).
    """
    pipelines = {'legacy': legacy, 'native': native}
    raw = {side: list(p.load_batches(plan)) for side, p in pipelines.items()}
    nets = {side: model.clone_network(network) for side in pipelines}
    fields = [(sim, simulation.sim_fields(sim), simulation.metadata(sim)) for sim in range(simulation.n_sims)]
    optimizers = {side: model.make_optimizer(net, learning_rate) for side, net in nets.items()}
    first_batch = BatchPlan(plan.seed, plan.epoch, plan.batches[:1])
    runs = {
        'write': lambda side, rep: _time_write(pipelines[side], fields, scratch / f'{side}-{rep}'),
        'read': lambda side, rep: _time_read(pipelines[side], sims),
        'iterate': lambda side, rep: _timed(lambda: drain(pipelines[side].load_batches(plan))),
        'convert': lambda side, rep: _timed(lambda: [pipelines[side].to_phiml(r) for r in raw[side]]),
        'step': lambda side, rep: _timed(lambda: pipelines[side].train([first_batch], nets[side], optimizers[side])),
    }
    try:
        return time_paired(runs, repeats=repeats, warmup=warmup, thresholds=thresholds, confidence=confidence,
                           extra_s=extra_s, progress=progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def time_paired(runs: Mapping[str, Callable[[str, int], float]], *, repeats: int, warmup: int,
                thresholds: Mapping[str, float] | None = None, confidence: float = 0.9, extra_s: float = math.inf,
                progress: Callable[[int], None] | None = None) -> dict[str, StageTiming]:
    """Runs each stage's legacy and native side back to back, the order alternating, judges the paired ratios and
    re-measures the stages that straddle their threshold (alone, up to `round_targets`).

    Args:
        runs: Stage -> `run(side, rep)`, seconds of one run of `side` ('legacy' or 'native') in repetition `rep`.
        thresholds: Stage -> the smallest median ratio legacy / native that passes (0 or missing: not judged).
        extra_s: Seconds the re-measurements may take in all; none starts a repetition after that.
    """
    thresholds = dict(thresholds or {})
    timings = {stage: StageTiming(stage) for stage in runs}
    deadline = math.inf

    def measure(stages: Sequence[str], first: int, count: int, timed: bool = True) -> None:
        for rep in range(first, first + count):
            if time.perf_counter() > deadline:
                return
            for stage in stages:
                # legacy and native back to back per stage, the order alternating: drift in machine load hits both
                for pair in range(PAIRS.get(stage, 1)):
                    order = ('legacy', 'native') if (rep + pair) % 2 == 0 else ('native', 'legacy')
                    seconds = {side: runs[stage](side, rep) for side in order}
                    if timed:
                        timings[stage].legacy.append(seconds['legacy'])
                        timings[stage].native.append(seconds['native'])
                if timed:
                    timings[stage].repeats += 1
            if progress:
                progress(1)

    measure(list(runs), 0, warmup, timed=False)
    measure(list(runs), warmup, repeats)
    targets = {stage: round_targets(stage, repeats, confidence) for stage in runs}
    deadline = time.perf_counter() + extra_s
    for k in range(1, MAX_ROUNDS):
        straddling = [s for s in runs if timings[s].judge(thresholds.get(s, 0.0), confidence).outcome == STRADDLE
                      and len(targets[s]) > k]
        for stage in straddling:  # one stage at a time: only its own pairs are re-measured
            measure([stage], warmup + timings[stage].repeats, targets[stage][k] - timings[stage].repeats)
    for stage in runs:
        timings[stage].judge(thresholds.get(stage, 0.0), confidence)
    return timings


def _time_read(pipeline: AbstractPipeline, sims: Sequence[int]) -> float:
    """A fresh pipeline object opening the cache, with the native reader's parsed-layout cache cleared (cold as a new
    process; the OS page cache stays warm: dropping it needs privileges and would time the disk, not the pipeline)."""
    type(pipeline).forget_read_caches()
    return _timed(lambda: type(pipeline)(pipeline.cache_dir, pipeline.rollout_steps).open(sims))


def _time_write(pipeline: AbstractPipeline, fields: list, folder: Path) -> float:
    """Writing every sim's file from fields sliced beforehand (slicing PhiFlow fields is the harness's work)."""
    fresh = type(pipeline)(folder, pipeline.rollout_steps)
    seconds = _timed(lambda: [fresh.write_cache(sim, f, meta) for sim, f, meta in fields])
    shutil.rmtree(folder, ignore_errors=True)
    return seconds
