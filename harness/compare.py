"""`python -m harness.compare SCENARIO [key=value ...]`: run both pipelines on the same simulations and seeds,
diff every batch, time every stage, train the same model with both, and write the report that decides the default.

Exit code: 0 when the verdict is go, 1 when no-go, 2 for bad usage or a bad config.
"""
from __future__ import annotations

import logging
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import model
from .cache import CacheReport, build_cache, check_writable
from .cli import OneLineParser, guarded, setup_logging
from .config import ScenarioConfig, load_config
from .diff import ToleranceMap
from .equivalence import compare_pipelines
from .errors import CacheError, HarnessError
from .health import scan_simulation
from .identify import FrameIndex
from .manifest import Manifest
from .diagnose import diagnose_epoch
from .parity import ensemble, train_both
from .selftest import run_selftest
from .shuffle_audit import audit_all, rows_to_dicts
from .pipeline import BatchPlan, WindowKey
from .plan import make_plans
from .provenance import provenance
from .report import plot_worst_frame, write_report
from .simulate import simulate
from .timing import time_stages
from .verdict import (Check, coverage_check, equivalence_check, selftest_check, shuffle_check, speed_check, training_check,
                      verdict, window_keys_check)

logger = logging.getLogger(__name__)
PROG = 'python -m harness.compare'
CACHE_FOLDERS = ('legacy', 'phiml')  # what --cache-dir holds, each with the harness's manifest.json
TIMING_SCRATCH = re.compile(r'\.timing\.[a-z0-9_]{8}\.harness-tmp')  # the timed writes' folder (tempfile.mkdtemp)
LEGACY_CACHE_HINT = "judging a cache of your own (`--legacy-cache DIR`) is not supported yet"
QUICK = ('sim.resolution=[16,16]', 'sim.n_steps=10', 'data.n_sims=3', 'data.n_val_sims=1', 'data.rollout_steps=2',
         'data.batch_size=4', 'model.levels=1', 'model.filters=4', 'trainer.epochs=2', 'compare.timing_repeats=3')


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', help="scenario name: harness/configs/<scenario>.yaml")
    parser.add_argument('overrides', nargs='*', metavar='key=value', help="config overrides, e.g. trainer.epochs=3")
    parser.add_argument('--out', type=Path, help="output folder (default: reports/<scenario>/)")
    parser.add_argument('--cache-dir', type=Path, help="reuse the harness's caches in this folder (legacy/, phiml/; "
                        "default: <out>/cache, rebuilt as needed); they are verified against their manifests and a bad "
                        "file is an error; a folder of files the harness did not write is refused")
    parser.add_argument('--repair', action='store_true', help="rewrite the missing or bad files of --cache-dir that the "
                        "harness wrote (its manifest records them); never a file of anyone else")
    parser.add_argument('--quick', action='store_true', help="a tiny run for smoke tests (~15 s)")
    parser.add_argument('--no-progress', action='store_true', help="no progress bars")
    parser.add_argument('-v', '--verbose', action='store_true', help="log what each step does")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_intermixed_args(argv)
    setup_logging(args.verbose)
    config = load_config(args.scenario, [*(QUICK if args.quick else ()), *args.overrides])
    out = args.out or Path('reports') / config.name
    overrides = [*(['--quick'] if args.quick else []), *args.overrides]
    summary = run_compare(config, out, args.cache_dir, progress=not args.no_progress, overrides=overrides,
                          repair=args.repair)
    print(f"verdict: {summary['verdict'].upper()} ({sum(c['passed'] for c in summary['checks'])}/{len(summary['checks'])} "
          f"checks passed) in {summary['durations']['total_s']:.1f} s")
    for check in summary['checks']:
        if not check['passed']:
            print(f"  FAILED {check['name']}: {check['detail']}")
    print(f"report: {(out / 'index.html').resolve()}")
    return 0 if summary['verdict'] == 'go' else 1


def prepare_output(out: Path) -> None:
    """Creates `out` and proves it writable before any work is done.

    Raises:
        HarnessError: naming the folder when it cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # a name of its own: never a user's file
            pass
    except OSError as err:
        raise HarnessError(f"output folder {str(out)!r} cannot be written: {err.strerror or err}") from None


def run_compare(config: ScenarioConfig, out: Path, cache_dir: Path | None = None, *, legacy_cls=None, native_cls=None,
                progress: bool = True, overrides: Sequence[str] = (), repair: bool = False) -> dict:
    """Runs the whole comparison and writes the report into `out`; returns the summary (as in `summary.json`).

    Args:
        cache_dir: A folder of the harness's caches to reuse (verified; bad files are an error unless `repair`).
            Default: `out/cache`, which is completed or repaired as needed.
        legacy_cls, native_cls: Pipeline classes (default: `LegacyPipeline`, `NativePipeline`); tests pass doubles.
        repair: Rewrite the missing and bad files of `cache_dir` that the harness wrote.

    Raises:
        CacheError: before anything is simulated or written: `cache_dir` holds files the harness did not write (in
            itself, or in the way in `legacy/` or `phiml/`), or (without `repair`) a cache there does not verify.
    """
    from legacy import LegacyPipeline
    from phiml_native import NativePipeline
    legacy_cls, native_cls = legacy_cls or LegacyPipeline, native_cls or NativePipeline
    out = Path(out)
    strict_cache = cache_dir is not None and not repair
    cache_dir = Path(cache_dir) if cache_dir else out / 'cache'
    r = config.data.rollout_steps
    legacy, native = legacy_cls(cache_dir / 'legacy', r), native_cls(cache_dir / 'phiml', r)
    _check_cache_root(cache_dir)
    verified = {p.name: _check_cache(p, config, strict_cache) for p in (legacy, native)}
    prepare_output(out)
    _seed_everything(config)
    durations = {}
    start = time.perf_counter()
    cmp = config.compare

    def bar(total, desc):
        return tqdm(total=total, desc=desc, disable=not progress, leave=False, file=sys.stderr)

    with bar(config.sim.n_steps, 'simulate') as b:
        simulation = simulate(config, b.update)
    durations['simulate_s'] = time.perf_counter() - start
    health = scan_simulation(simulation, config.health)

    t = time.perf_counter()
    with bar(2 * len(config.all_sims), 'write caches') as b:
        caches = {p.name: _prepare_cache(p, config, simulation, verified[p.name], b.update) for p in (legacy, native)}
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
        scratch = Path(tempfile.mkdtemp(prefix='.timing.', suffix='.harness-tmp', dir=cache_dir))  # on the caches' disk
        timings = time_stages(legacy, native, simulation, plans[0], config.train_sims, network,
                              config.trainer.learning_rate, scratch, repeats=cmp.timing_repeats,
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
        selftest = run_selftest(config, simulation, legacy.cache_dir, native.cache_dir)
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
    worst_frame = None
    if equivalence.worst is not None:
        plot_worst_frame(*equivalence.worst, out / 'worst_frame.png')
        worst_frame = 'worst_frame.png'
    elif (out / 'worst_frame.png').exists():
        (out / 'worst_frame.png').unlink()  # from an earlier, failing run
    write_report(out, summary, worst_frame=worst_frame)
    logger.info("report written to %s", out)
    return summary


def _check_cache_root(root: Path) -> None:
    """Refuses a `--cache-dir` that holds anything but the harness's `legacy/` and `phiml/` caches (a team's flat
    folder of files must not get simulated caches written beside them and a verdict on data it never read); removes
    the timed writes' scratch folders of killed runs from a folder that holds a cache of the harness.

    Raises:
        CacheError: naming the folder and what is in it.
    """
    if not root.exists() and not root.is_symlink():
        return
    if not root.is_dir():
        raise CacheError(f"{root}: the cache folder is not a folder")
    scratch = [p for p in root.iterdir() if TIMING_SCRATCH.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    others = sorted(p.name for p in root.iterdir() if p not in scratch
                    and not (p.name in CACHE_FOLDERS and p.is_dir() and not p.is_symlink()))
    if others:
        shown = ', '.join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else '')
        raise CacheError(f"{root}: holds {shown}, which the harness did not write; --cache-dir takes a new or empty "
                         f"folder, or one holding the harness's own caches (legacy/ and phiml/, each with the harness's "
                         f"manifest.json); {LEGACY_CACHE_HINT}; nothing was changed")
    if scratch and any(_has_harness_manifest(root / name) for name in CACHE_FOLDERS):
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)
        logger.info("%s: removed the scratch folders of killed runs: %s", root, ', '.join(p.name for p in scratch))


def _has_harness_manifest(folder: Path) -> bool:
    try:
        return folder.is_dir() and Manifest.load(folder) is not None
    except CacheError:
        return False


def _check_cache(pipeline, config: ScenarioConfig, strict: bool) -> CacheReport | None:
    """Checks `pipeline`'s cache folder before anything is simulated: the harness may complete it (it writes only
    where it wrote before); with `strict`, an existing cache must verify as it is (returned, to be reused)."""
    folder = pipeline.cache_dir
    try:
        report = check_writable(folder, pipeline.name, config)
    except CacheError as err:
        raise CacheError(f"{err}; {LEGACY_CACHE_HINT}") from None
    if strict and folder.is_dir() and any(folder.iterdir()):
        if not report:
            raise CacheError(f"{report.summary()}; rerun with --repair to rewrite just those files")
        return report
    return None


def _prepare_cache(pipeline, config: ScenarioConfig, simulation, verified: CacheReport | None, progress) -> dict:
    """Makes `pipeline`'s cache complete and verified, or reuses the cache `verified` as it is."""
    folder = pipeline.cache_dir
    if verified is not None:
        return {'folder': str(folder), 'rebuilt': [], 'reused': verified.sims}
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


if __name__ == '__main__':
    sys.exit(guarded(main, PROG))
