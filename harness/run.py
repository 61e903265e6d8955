"""`run_compare`: run both pipelines on the same simulations and seeds, diff every batch, time every stage, train the
same model with both, and write the report that decides the default."""
from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from harness import model
from harness.cache.build import build_cache, verify_cache
from harness.config import ScenarioConfig
from harness.equivalence.diff import ToleranceMap
from harness.equivalence.batches import compare_pipelines
from harness.errors import CacheError, HarnessError
from harness.data.health import scan_simulation
from harness.data.physics import check_physics
from harness.equivalence.identify import FrameIndex
from harness.equivalence.diagnose import diagnose_epoch
from harness.equivalence.training import ensemble, train_both
from harness.selftest.run import run_selftest
from harness.equivalence.shuffle_audit import audit_all, rows_to_dicts
from harness.pipeline import AbstractPipeline, BatchPlan, WindowKey
from harness.plan import make_plans
from harness.provenance import provenance
from harness.report.html import plot_worst_frame, write_report
from harness.data.simulate import simulate
from harness.bench.timing import time_stages
from harness.report.verdict import (Check, coverage_check, equivalence_check, selftest_check, shuffle_check, speed_check, training_check,
                      verdict, window_keys_check)
from harness.report.verdict import physics_check

logger = logging.getLogger(__name__)


def prepare_output(out: Path) -> None:
    """Creates `out` and proves it writable before any work is done.

    Raises:
        HarnessError: naming the folder when it cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / '.write-test'
        probe.write_text('')
        probe.unlink()
    except OSError as err:
        raise HarnessError(f"output folder {str(out)!r} cannot be written: {err.strerror or err}") from None


def run_compare(config: ScenarioConfig, out: Path, cache_dir: Path | None = None, *,
                legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline], progress: bool = True,
                overrides: Sequence[str] = (), repair: bool = False) -> dict:
    """Runs the whole comparison and writes the report into `out`; returns the summary (as in `summary.json`).

    Args:
        cache_dir: A cache folder to reuse (verified; bad files are an error unless `repair`). Default: `out/cache`,
            which is completed or repaired as needed.
        legacy_cls, native_cls: The pipeline classes to judge (the reference and the candidate).
        repair: Rewrite the missing and bad files of `cache_dir`.
    """
    out = Path(out)
    prepare_output(out)
    strict_cache = cache_dir is not None and not repair
    cache_dir = Path(cache_dir) if cache_dir else out / 'cache'
    _seed_everything(config)
    durations = {}
    start = time.perf_counter()
    r, cmp = config.data.rollout_steps, config.compare

    def bar(total, desc):
        return tqdm(total=total, desc=desc, disable=not progress, leave=False, file=sys.stderr)

    with bar(config.sim.n_steps, 'simulate') as b:
        simulation = simulate(config, b.update)
    durations['simulate_s'] = time.perf_counter() - start
    health = scan_simulation(simulation, config.health)

    legacy, native = legacy_cls(cache_dir / 'legacy', r), native_cls(cache_dir / 'phiml', r)
    t = time.perf_counter()
    with bar(2 * len(config.all_sims), 'write caches') as b:
        caches = {p.name: _prepare_cache(p, config, simulation, strict_cache, b.update) for p in (legacy, native)}
    durations['write_s'] = time.perf_counter() - t
    for pipeline in (legacy, native):
        pipeline.open(config.train_sims)

    expected_keys = [WindowKey(s, t0) for s in config.train_sims for t0 in range(config.windows_per_sim)]
    plans = make_plans(expected_keys, config.data.batch_size, seed=config.seed, epochs=config.trainer.epochs)
    t = time.perf_counter()
    with bar(sum(len(p) for p in plans), 'load + compare batches') as b:
        tolerances = ToleranceMap(cmp.tier, cmp.rtol, cmp.atol, cmp.fields, sorted(simulation.fields))
        frames = FrameIndex(simulation, config.train_sims)
        equivalence = compare_pipelines(legacy, native, plans, tolerances, frames, b.update)
    diagnosis = None
    if not equivalence:
        failing = equivalence.first_failure.epoch if equivalence.first_failure else 0
        diagnosis = diagnose_epoch(legacy, native, plans[failing], frames, tolerances)
    shuffle_rows = audit_all([(legacy_cls, legacy.cache_dir), (native_cls, native.cache_dir)], config)
    durations['compare_s'] = time.perf_counter() - t

    network = model.make_network(config.model, _channels(simulation), len(config.sim.resolution), seed=config.seed)
    t = time.perf_counter()
    with bar(cmp.timing_warmup + cmp.timing_repeats, 'time stages') as b:
        timings = time_stages(legacy, native, simulation, plans[0], config.train_sims, network,
                              config.trainer.learning_rate, cache_dir / 'timing', repeats=cmp.timing_repeats,
                              warmup=cmp.timing_warmup, progress=b.update)
    durations['timing_s'] = time.perf_counter() - t

    val = None
    if config.val_sims:
        val_legacy, val_native = legacy_cls(legacy.cache_dir, r), native_cls(native.cache_dir, r)
        val_legacy.open(config.val_sims)
        val_native.open(config.val_sims)
        val_keys = [WindowKey(s, t0) for s in config.val_sims for t0 in range(config.windows_per_sim)]
        b_size = config.data.batch_size
        val_plan = BatchPlan(config.seed, -1, tuple(tuple(val_keys[i:i + b_size]) for i in range(0, len(val_keys), b_size)))
        val = (val_legacy, val_native, val_plan)
    t = time.perf_counter()
    with bar(2 * sum(len(p) for p in plans), 'train') as b:
        training = train_both(legacy, native, plans, network, config.trainer.learning_rate, val,
                              loss_rtol=cmp.loss_rtol, progress=b.update)
    if cmp.parity_seeds > 1:
        seeds = [config.seed + 1000 * k for k in range(1, cmp.parity_seeds)]
        with bar(2 * len(seeds) * sum(len(p) for p in plans), f'train {len(seeds)} more seeds') as b:
            spread = ensemble(legacy, native, expected_keys,
                              lambda s: model.make_network(config.model, _channels(simulation), len(config.sim.resolution), seed=s),
                              lambda s: make_plans(expected_keys, config.data.batch_size, seed=s, epochs=config.trainer.epochs),
                              config.trainer.learning_rate, [config.seed] + seeds, progress=b.update)
    durations['train_s'] = time.perf_counter() - t
    selftest = None
    if cmp.selftest:
        t = time.perf_counter()
        selftest = run_selftest(config, legacy_cls, native_cls, simulation, legacy.cache_dir, native.cache_dir)
        durations['selftest_s'] = time.perf_counter() - t

    checks = [
        Check('data health', health.passed, health.detail if health.passed else
              health.detail + "; fix the simulation or allow these findings in the config's `health` section"),
        window_keys_check(expected_keys, {legacy.name: legacy.window_keys(), native.name: native.window_keys()}),
        equivalence_check(equivalence, config),
        coverage_check(equivalence),
        training_check(training),
        speed_check(timings, 'iterate', 'batch loading', cmp.min_speedup),
        speed_check(timings, 'step', 'train step', cmp.min_speedup),
        shuffle_check(shuffle_rows),
    ]
    if selftest is not None:
        checks.append(selftest_check(selftest))
    durations['total_s'] = time.perf_counter() - start
    summary = {
        'scenario': config.name,
        'verdict': verdict(checks),
        'checks': [c.to_dict() for c in checks],
        'equivalence': {
            'batches_compared': equivalence.batches_compared, 'elements_compared': equivalence.elements_compared,
            'max_abs_diff': equivalence.max_abs_diff, 'max_rel_diff': equivalence.max_rel_diff,
            'identical': equivalence.identical, 'failed_batches': equivalence.failed_batches,
            'tolerance': tolerances.describe(),
            'batch_count_errors': equivalence.batch_count_errors,
            'failures': [f.describe() for f in equivalence.failures],
            'per_tensor': equivalence.per_tensor,
            'diagnosis': diagnosis.to_dict() if diagnosis else None,
            'own_shuffling': rows_to_dicts(shuffle_rows),
            'selftest': selftest.to_dicts() if selftest else None,
            'coverage': [{'pipeline': c.pipeline, 'epoch': c.epoch, 'expected': c.expected, 'delivered': c.delivered,
                          'passed': c.passed, 'detail': c.describe()} for c in equivalence.coverage],
        },
        'health': health.to_dict(),
        'caches': caches,
        'training': {**training.to_dict(), 'ensemble': spread.to_dict() if cmp.parity_seeds > 1 else None},
        'performance': {stage: timing.to_dict() for stage, timing in timings.items()},
        'provenance': {**provenance(config), 'overrides': list(overrides)},
        'durations': durations,
    }
    # --- physics sanity (issue 17): the simulation and what each pipeline serves ---
    if config.sanity.enabled:
        physics = check_physics(simulation, {legacy.name: legacy, native.name: native})
        checks.append(physics_check(physics))
        summary.update(verdict=verdict(checks), checks=[c.to_dict() for c in checks], physics=physics.to_dict())
    # --- end physics sanity ---
    worst_frame = None
    if equivalence.worst is not None:
        plot_worst_frame(*equivalence.worst, out / 'worst_frame.png')
        worst_frame = 'worst_frame.png'
    elif (out / 'worst_frame.png').exists():
        (out / 'worst_frame.png').unlink()  # from an earlier, failing run
    write_report(out, summary, worst_frame=worst_frame)
    logger.info("report written to %s", out)
    return summary


def _prepare_cache(pipeline, config: ScenarioConfig, simulation, strict: bool, progress) -> dict:
    """Makes `pipeline`'s cache complete and verified; with `strict`, an existing cache must verify as it is."""
    folder = pipeline.cache_dir
    if strict and folder.is_dir() and any(folder.iterdir()):
        report = verify_cache(folder, pipeline.name, config)
        if not report:
            raise CacheError(f"{report.summary()}; rerun with --repair to rewrite just those files")
        return {'folder': str(folder), 'rebuilt': [], 'reused': report.sims}
    result = build_cache(pipeline, config, simulation, progress=progress)
    return {'folder': str(folder), 'rebuilt': result.rebuilt, 'reused': result.skipped}


def _channels(simulation) -> int:
    total = 0
    for field in simulation.fields.values():
        total += field.values.shape.channel.volume if field.values.shape.channel else 1
    return total


def _seed_everything(config: ScenarioConfig) -> None:
    """Fixes what could leak nondeterminism into the run; every seed is also passed explicitly where it is used."""
    torch.set_num_threads(config.trainer.torch_threads)
    random.seed(config.seed)
    np.random.seed(config.seed % 2 ** 32)
    torch.manual_seed(config.seed)

