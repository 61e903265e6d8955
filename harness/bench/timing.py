"""Per-stage timing of both pipelines, interleaved in one process so that machine noise hits both alike.

Stages: `write` (cache of all sims), `read` (a fresh pipeline opening the training sims), `iterate` (one epoch of
`load_batches`), `convert` (`to_phiml` of one epoch of raw batches), `step` (one training step on one batch).
Within each repetition every stage runs legacy and native back to back, in alternating order; the train step runs
`STEP_PAIRS` such pairs. Warm-up repetitions are dropped; figures are medians.
"""
from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from harness import model
from harness.pipeline import AbstractPipeline, BatchPlan, drain
from harness.data.simulate import Simulation

STAGES = ('write', 'read', 'iterate', 'convert', 'step')
STEP_PAIRS = 3
STAGE_TITLES = {'write': 'cache write', 'read': 'cache read', 'iterate': 'batch loading (1 epoch)',
                'convert': 'conversion to PhiML (1 epoch)', 'step': 'train step'}


@dataclass
class StageTiming:
    """Seconds per repetition of one stage; `speedup` = legacy / native (> 1: native is faster)."""
    stage: str
    legacy: list[float] = field(default_factory=list)
    native: list[float] = field(default_factory=list)

    @property
    def legacy_s(self) -> float:
        return statistics.median(self.legacy)

    @property
    def native_s(self) -> float:
        return statistics.median(self.native)

    @property
    def speedup(self) -> float:
        return self.legacy_s / self.native_s if self.native_s > 0 else float('inf')

    def to_dict(self) -> dict:
        return {'legacy_s': self.legacy_s, 'native_s': self.native_s, 'speedup': self.speedup,
                'repeats': len(self.legacy), 'legacy_samples': self.legacy, 'native_samples': self.native}


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


def _timed(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def time_stages(legacy: AbstractPipeline, native: AbstractPipeline, simulation: Simulation, plan: BatchPlan,
                sims: Sequence[int], network, learning_rate: float, scratch: Path, *, repeats: int, warmup: int,
                progress: Callable[[int], None] | None = None) -> dict[str, StageTiming]:
    """Times every stage of both pipelines (already opened on `sims` and written to their caches).

    Args:
        plan: The epoch whose batches are loaded, converted, and whose first batch is trained on.
        network: Copied for the train steps; never modified.
        scratch: Folder for the timed cache writes (removed afterwards).
    """
    timings = {stage: StageTiming(stage) for stage in STAGES}
    pipelines = (legacy, native)
    raw = {p.name: list(p.load_batches(plan)) for p in pipelines}
    converted = {p.name: p.to_phiml(raw[p.name][0]) for p in pipelines}
    nets = {p.name: model.clone_network(network) for p in pipelines}
    fields = [(sim, simulation.sim_fields(sim), simulation.metadata(sim)) for sim in range(simulation.n_sims)]
    optimizers = {name: model.make_optimizer(net, learning_rate) for name, net in nets.items()}
    stages = {
        'write': lambda p, rep: _time_write(p, fields, scratch / f'{p.name}-{rep}'),
        'read': lambda p, rep: _time_read(p, sims),
        'iterate': lambda p, rep: _timed(lambda: drain(p.load_batches(plan))),
        'convert': lambda p, rep: _timed(lambda: [p.to_phiml(r) for r in raw[p.name]]),
        'step': lambda p, rep: _timed(lambda: model.train_step(nets[p.name], optimizers[p.name], converted[p.name])),
    }
    try:
        for rep in range(warmup + repeats):
            for stage, run in stages.items():
                # legacy and native back to back per stage, the order alternating: drift in machine load hits both;
                # the train step, the stage closest to a tie, gets STEP_PAIRS pairs per repetition
                for pair in range(STEP_PAIRS if stage == 'step' else 1):
                    order = pipelines if (rep + pair) % 2 == 0 else pipelines[::-1]
                    for p in order:
                        seconds = run(p, rep)
                        if rep >= warmup:
                            getattr(timings[stage], 'legacy' if p is legacy else 'native').append(seconds)
            if progress:
                progress(1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
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
