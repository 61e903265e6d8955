"""`run_compare`: run both pipelines on the same simulations and seeds, diff every batch, time every stage, train the
same model with both, and write the report that decides the default."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from harness import model
from harness.bench.epoch_memory import NOISE_BYTES, epoch_peaks
from harness.bench.timing import STAGES, time_stages
from harness.cache.build import CacheReport, check_writable
from harness.cache.manifest import Manifest, cache_kind, sims_on_disk
from harness.config import ScenarioConfig
from harness.data.existing import read_cache
from harness.data.health import scan_pipelines, scan_simulation
from harness.data.physics import check_physics
from harness.equivalence.diagnose import diagnose_epoch
from harness.equivalence.expected import Expected
from harness.equivalence.metadata import carried_metadata, read_back
from harness.equivalence.sizes import memory_variants, probe_sizes
from harness.equivalence.everyday import audit_everyday, rows_to_dicts
from harness.equivalence.training import ensemble, train_both
from harness.errors import CacheError, HarnessError
from harness.pipeline import AbstractPipeline
from harness.plan import make_plans, sequential_plan, window_keys
from harness.provenance import provenance
from harness.scale import IN_PROCESS, AbstractExecutor, stages
from harness.report.html import plot_worst_frame, write_report
from harness.report.verdict import (Check, coverage_check, equivalence_check, everyday_check, memory_check,
                                    metadata_check, physics_check, selftest_check, size_probe_check, speed_check,
                                    training_check, verdict, window_keys_check)
from harness.selftest.run import run_selftest

logger = logging.getLogger(__name__)
TIMING_SCRATCH = re.compile(r'\.timing\.[a-z0-9_]{8}\.harness-tmp')  # the timed writes' folder (tempfile.mkdtemp)
LEGACY_CACHE_HINT = "to judge a cache of your own, pass it as --legacy-cache DIR (and --native-cache DIR2)"


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


def run_compare(config: ScenarioConfig, out: Path, cache_dir: Path | None = None, *,
                legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline], progress: bool = True,
                overrides: Sequence[str] = (), repair: bool = False, legacy_cache: Path | None = None,
                native_cache: Path | None = None, executor: AbstractExecutor = IN_PROCESS, scenario: str | None = None
                ) -> dict:
    """Runs the whole comparison and writes the report into `out`; returns the summary (as in `summary.json`).

    The data flows top to bottom: scenario -> simulation (or a team's existing cache) -> both caches -> plans ->
    batches (diff, coverage, diagnosis) -> everyday paths -> timings -> training -> self-test -> checks -> report.

    Args:
        cache_dir: A folder of the harness's caches to reuse (verified; bad files are an error unless `repair`).
            Default: `out/cache`, which is completed or repaired as needed.
        legacy_cls, native_cls: The pipeline classes to judge (the reference and the candidate).
        repair: Rewrite the missing and bad files of `cache_dir` that the harness wrote.
        legacy_cache: Judge this existing cache of `legacy_cls` instead of simulating (only read): the scenario gives
            model, trainer and thresholds, the files give resolution, frames, fields and channels. Its frames are the
            source of truth.
        native_cache: With `legacy_cache`: the team's own cache of `native_cls` (only read). Default: `legacy_cache`
            migrated into `out/native-cache` (verified bitwise).
        executor: Where simulation, cache builds, migration and batch comparison run (`harness.scale`; default: in
            this process).
        scenario: As the user named it (a scenario's name or its YAML file), in the report and its flip; default
            `config.name`.

    Raises:
        CacheError: before anything is simulated or written: `cache_dir` holds files the harness did not write (in
            itself, or in the way in `legacy/` or `phiml/`), or (without `repair`) a cache there does not verify; an
            existing cache that does not read.
    """
    out = Path(out)
    durations = _Durations()
    bar = functools.partial(tqdm, disable=not progress, leave=False, file=sys.stderr)
    r = config.data.rollout_steps
    source = None
    if legacy_cache is not None:
        legacy = legacy_cls(Path(legacy_cache), r)
        with durations('read_s'):  # a cache that cannot be judged leaves no output folder behind
            simulation, source, config = read_cache(legacy, _existing_sims(legacy), config)
        prepare_output(out)
        _seed_everything(config)
        native, caches = _existing_native(legacy, native_cls, native_cache, out, r, bar, executor)
        scratch_root = out
    else:
        strict_cache = cache_dir is not None and not repair
        cache_dir = Path(cache_dir) if cache_dir else out / 'cache'
        legacy, native = legacy_cls(cache_dir / 'legacy', r), native_cls(cache_dir / 'phiml', r)
        _check_cache_root(cache_dir, (legacy, native))
        verified = {p.name: _check_cache(p, config, strict_cache) for p in (legacy, native)}
        prepare_output(out)
        _seed_everything(config)
        with durations('simulate_s'), bar(total=config.sim.n_steps, desc='simulate') as b:
            simulation = stages.simulate(executor, config, b.update)
        with durations('write_s'), bar(total=2 * len(config.all_sims), desc='write caches') as b:
            caches = {p.name: _prepare_cache(p, config, simulation, verified[p.name], b.update, executor)
                      for p in (legacy, native)}
        scratch_root = cache_dir
    cmp = config.compare
    for pipeline in (legacy, native):
        pipeline.open(config.train_sims)
    with durations('evidence_s'):  # what each cache carries and serves: metadata, and the health of its data
        read = {p.name: read_back(p, config.all_sims, config.health) for p in (legacy, native)}
        metadata = carried_metadata(simulation, config.all_sims,
                                    {p.name: functools.partial(_new, type(p), rollout_steps=r) for p in (legacy, native)},
                                    read, source=None if source is None else (source.folder, legacy.name))
        health = scan_pipelines(scan_simulation(simulation, config.health), (legacy, native),
                                {name: back.health for name, back in read.items()}, config.train_sims, simulation,
                                config.health)
    physics = check_physics(simulation, {legacy.name: legacy, native.name: native}) if config.sanity.enabled else None

    expected = Expected.of(config, simulation)
    with durations('compare_s'):
        with bar(total=sum(len(p) for p in expected.plans), desc='load + compare batches') as b:
            equivalence = stages.compare_pipelines(executor, legacy, native, expected.plans, expected.tolerances,
                                                   expected.frames, b.update)
        diagnosis = None
        if not equivalence:
            failing = equivalence.first_failure.epoch if equivalence.first_failure else 0
            diagnosis = diagnose_epoch(legacy, native, expected.plans[failing], expected.frames, expected.tolerances)
    with durations('probe_s'):  # the first epoch again at batch sizes 1 and all, and in every memory mode
        variants = {name: functools.partial(_opened, cls, native.cache_dir, r, config.train_sims)
                    for name, cls in memory_variants(native_cls, config).items()}
        sizes = probe_sizes(legacy, native, expected.plans[0], expected.frames, expected.tolerances, variants)
    with durations('everyday_s'):
        everyday_rows = [row for pipeline in (legacy, native) for row in audit_everyday(
            pipeline, functools.partial(_opened, type(pipeline), pipeline.cache_dir, r), config, simulation)]

    def network(seed: int = config.seed):
        return model.make_network(config.model, _channels(simulation), len(config.sim.resolution), seed=seed)

    with durations('timing_s'), bar(total=cmp.timing_warmup + cmp.timing_repeats, desc='time stages') as b:
        scratch = Path(tempfile.mkdtemp(prefix='.timing.', suffix='.harness-tmp', dir=scratch_root))  # the caches' disk
        timings = time_stages(legacy, native, simulation, expected.plans[0], config.train_sims, network(),
                              config.trainer.learning_rate, scratch, repeats=cmp.timing_repeats,
                              warmup=cmp.timing_warmup, thresholds=dataclasses.asdict(cmp.min_speedup),
                              confidence=cmp.confidence, extra_s=cmp.timing_extra_s, progress=b.update)
        memory = epoch_peaks(legacy, native, config.train_sims, expected.plans[0])

    with durations('train_s'):
        with bar(total=2 * sum(len(p) for p in expected.plans), desc='train') as b:
            training = train_both(legacy, native, expected.plans, network(), config.trainer.learning_rate,
                                  _validation(config, legacy_cls, native_cls, legacy.cache_dir, native.cache_dir),
                                  loss_rtol=cmp.loss_rtol, progress=b.update)
        spread = None
        if cmp.parity_seeds > 1:
            seeds = [config.seed + 1000 * k for k in range(cmp.parity_seeds)]
            with bar(total=2 * len(seeds) * sum(len(p) for p in expected.plans), desc=f'train {len(seeds)} seeds') as b:
                spread = ensemble(legacy, native, expected.keys, network,
                                  lambda s: make_plans(expected.keys, config.data.batch_size, seed=s,
                                                       epochs=config.trainer.epochs),
                                  config.trainer.learning_rate, seeds, progress=b.update)

    selftest = None
    if cmp.selftest:
        with durations('selftest_s'):
            selftest = run_selftest(config, legacy_cls, native_cls, simulation, legacy.cache_dir, native.cache_dir,
                                    expected=expected)

    checks = [
        Check('data health', health.passed, health.detail if health.passed else
              health.detail + "; fix the simulation or allow these findings in the config's `health` section"),
        metadata_check(metadata),
        window_keys_check(expected.keys, {legacy.name: legacy.window_keys(), native.name: native.window_keys()}),
        equivalence_check(equivalence, config),
        coverage_check(equivalence),
        size_probe_check(sizes),
        training_check(training),
        *(speed_check(timings, stage, training_s=timings['step'].native_s * sum(len(p) for p in expected.plans),
                      one_time_share=cmp.one_time_share) for stage in STAGES),
        memory_check(memory, cmp.max_memory_ratio, NOISE_BYTES),
        everyday_check(everyday_rows),
        *([selftest_check(selftest)] if selftest is not None else []),
        *([physics_check(physics)] if physics is not None else []),
    ]
    durations['total_s'] = durations.elapsed()
    summary = {
        'scenario': scenario or config.name,
        'source': source.to_dict() if source else {'simulated': True},
        'verdict': verdict(checks),
        'checks': [c.to_dict() for c in checks],
        'equivalence': {
            **equivalence.to_dict(),
            'tolerance': expected.tolerances.describe(),
            'diagnosis': diagnosis.to_dict() if diagnosis else None,
            'everyday': rows_to_dicts(everyday_rows),
            'selftest': selftest.to_dicts() if selftest else None,
        },
        'health': health.to_dict(),
        'metadata': metadata.to_dict(),
        'size_probe': sizes.to_dict(),
        **({'physics': physics.to_dict()} if physics is not None else {}),
        'caches': caches,
        'training': {**training.to_dict(), 'ensemble': spread.to_dict() if spread else None},
        'performance': {stage: timing.to_dict() for stage, timing in timings.items()},
        'memory': memory.to_dict(),
        'provenance': {**provenance(config), 'overrides': list(overrides), 'scale': executor.describe()},
        'durations': dict(durations),
    }
    _write_report(out, summary, equivalence)
    return summary


def _new(cls: type[AbstractPipeline], cache_dir: Path, rollout_steps: int) -> AbstractPipeline:
    return cls(cache_dir, rollout_steps)


def _opened(cls: type[AbstractPipeline], cache_dir: Path, rollout_steps: int, sims: Sequence[int]) -> AbstractPipeline:
    pipeline = cls(cache_dir, rollout_steps)
    pipeline.open(sims)
    return pipeline


def _validation(config: ScenarioConfig, legacy_cls, native_cls, legacy_dir: Path, native_dir: Path):
    """Both pipelines opened on the validation sims and the plan of a validation pass; None without validation sims."""
    if not config.val_sims:
        return None
    r = config.data.rollout_steps
    val_legacy, val_native = legacy_cls(legacy_dir, r), native_cls(native_dir, r)
    val_legacy.open(config.val_sims)
    val_native.open(config.val_sims)
    keys = window_keys(config.val_sims, config.windows_per_sim)
    return val_legacy, val_native, sequential_plan(keys, config.data.batch_size, seed=config.seed)


def _write_report(out: Path, summary: dict, equivalence) -> None:
    worst_frame = None
    if equivalence.worst is not None:
        plot_worst_frame(*equivalence.worst, out / 'worst_frame.png')
        worst_frame = 'worst_frame.png'
    elif (out / 'worst_frame.png').exists():
        (out / 'worst_frame.png').unlink()  # from an earlier, failing run
    write_report(out, summary, worst_frame=worst_frame)
    logger.info("report written to %s", out)


class _Durations(dict):
    """Seconds per step of a run: `with durations('train_s'): ...`."""

    def __init__(self):
        super().__init__()
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @contextlib.contextmanager
    def __call__(self, key: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self[key] = time.perf_counter() - started


def _existing_sims(legacy: AbstractPipeline) -> list[int]:
    folder = legacy.cache_dir
    if not folder.is_dir():
        raise CacheError(f"{folder}: the legacy cache folder {'is not a folder' if folder.exists() else 'does not exist'}")
    sims = sims_on_disk(folder, cache_kind(legacy))
    if not sims:
        raise CacheError(f"{folder}: no {legacy.file_name(0).replace('000000', 'XXXXXX')} files (expected the legacy "
                         f"cache to judge)")
    return sims


def _existing_native(legacy: AbstractPipeline, native_cls: type[AbstractPipeline], native_cache: Path | None,
                     out: Path, rollout_steps: int, bar, executor: AbstractExecutor) -> tuple[AbstractPipeline, dict]:
    """The native side of an existing cache's comparison: the team's own native cache (only read), or the legacy cache
    migrated into `out/native-cache` by the harness (verified bitwise; a rerun resumes)."""
    caches = {legacy.name: {'folder': str(legacy.cache_dir), 'read_only': True}}
    if native_cache is not None:
        native = native_cls(Path(native_cache), rollout_steps)
        caches[native.name] = {'folder': str(native.cache_dir), 'read_only': True}
        return native, caches
    target = out / 'native-cache'
    with bar(desc='migrate') as b:
        report = stages.migrate_cache(executor, legacy.cache_dir, target, b.update, legacy_cls=type(legacy),
                                      native_cls=native_cls)
    native = native_cls(target, rollout_steps)
    caches[native.name] = {'folder': str(target), 'read_only': False, 'migrated': report.summary(),
                           'converted': report.converted, 'reused': report.skipped}
    return native, caches


def _check_cache_root(root: Path, pipelines) -> None:
    """Refuses a `--cache-dir` that holds anything but the harness's caches (`legacy/`, `phiml/`): a team's flat folder
    of files must not get simulated caches written beside them and a verdict on data it never read. Removes the timed
    writes' scratch folders of killed runs from a folder that holds a cache of the harness.

    Raises:
        CacheError: naming the folder and what is in it.
    """
    if not root.exists() and not root.is_symlink():
        return
    if not root.is_dir():
        raise CacheError(f"{root}: the cache folder is not a folder")
    own = {p.cache_dir.name for p in pipelines}
    scratch = [p for p in root.iterdir() if TIMING_SCRATCH.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    others = sorted(p.name for p in root.iterdir() if p not in scratch
                    and not (p.name in own and p.is_dir() and not p.is_symlink()))
    if others:
        shown = ', '.join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else '')
        raise CacheError(f"{root}: holds {shown}, which the harness did not write; --cache-dir takes a new or empty "
                         f"folder, or one holding the harness's own caches ({'/ and '.join(sorted(own))}/, each with "
                         f"the harness's manifest.json); {LEGACY_CACHE_HINT}; nothing was changed")
    if scratch and any(_has_harness_manifest(p.cache_dir) for p in pipelines):
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
        report = check_writable(folder, pipeline, config)
    except CacheError as err:
        raise CacheError(f"{err}; {LEGACY_CACHE_HINT}") from None
    if strict and folder.is_dir() and any(folder.iterdir()):
        if not report:
            raise CacheError(f"{report.summary()}; rerun with --repair to rewrite just those files")
        return report
    return None


def _prepare_cache(pipeline, config: ScenarioConfig, simulation, verified: CacheReport | None, progress,
                   executor: AbstractExecutor) -> dict:
    """Makes `pipeline`'s cache complete and verified, or reuses the cache `verified` as it is."""
    if verified is not None:
        return {'folder': str(pipeline.cache_dir), 'rebuilt': [], 'reused': verified.sims}
    result = stages.build_cache(executor, pipeline, config, simulation, progress=progress)
    return {'folder': str(pipeline.cache_dir), 'rebuilt': result.rebuilt, 'reused': result.skipped}


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

