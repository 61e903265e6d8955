"""`migrate_cache` on an executor: the sources are described (and the recorded targets checked) by chunk tasks on the
workers, then the files to convert are converted, verified, scanned and described by chunk tasks; the client alone
writes the target's `manifest.json` (the names to write listed as pending first, then the records of every chunk that
lands).

The checks before anything is written are `harness.cache.migrate`'s own; the result equals its result: the same
files, bitwise, and the same records.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from harness.cache import migrate as local
from harness.cache.build import remove_leftovers
from harness.cache.manifest import cache_kind
from harness.config import HealthConfig
from harness.pipeline import AbstractPipeline
from harness.scale import tasks
from harness.scale.cluster import AbstractExecutor

logger = logging.getLogger(__name__)


def migrate_cache(executor: AbstractExecutor, legacy_dir: Path, npz_dir: Path,
                  progress: Callable[[int], None] | None = None, *, legacy_cls: type[AbstractPipeline],
                  native_cls: type[AbstractPipeline], health: HealthConfig = HealthConfig()) -> local.MigrationReport:
    """`harness.cache.migrate.migrate_cache` on `executor` (in this process when it is not distributed).

    Raises:
        CacheError: as `harness.cache.migrate.migrate_cache`, before anything is written for a bad source or target.
    """
    if not executor.distributed:
        return local.migrate_cache(legacy_dir, npz_dir, progress, legacy_cls=legacy_cls, native_cls=native_cls,
                                   health=health)
    start = time.perf_counter()
    legacy_dir, npz_dir = Path(legacy_dir), Path(npz_dir)
    legacy, native = cache_kind(legacy_cls), cache_kind(native_cls)
    source_ref, target_ref = tasks.pipeline_ref(legacy_cls), tasks.pipeline_ref(native_cls)
    sims = local._source_sims(legacy_dir, npz_dir, legacy)
    manifest, leftovers = local._target_manifest(npz_dir, native)
    chunks = executor.chunks(sims)
    described = {}
    arguments = [(source_ref, legacy_dir, npz_dir, [(sim, manifest.files.get(native.file_name(sim))) for sim in chunk])
                 for chunk in chunks]
    for _, rows in executor.run(tasks.describe_sources, arguments, name='describe-sources'):
        described.update({row[0]: row[1:] for row in rows})
    local.check_signatures(legacy_dir, legacy, {sim: signature for sim, (signature, _, _) in described.items()})
    report = local.MigrationReport(legacy_dir, npz_dir, source=legacy.name)
    for path in leftovers:  # the folder is migrate's (its manifest says so): these are its own killed writes
        path.unlink(missing_ok=True)
        report.removed_temp_files.append(path.name)
    todo = []
    for sim in sims:
        _, source, intact = described[sim]
        if intact:
            report.skipped.append(sim)
            recorded = manifest.files[native.file_name(sim)]
            local._report_health(report, legacy_dir / legacy.file_name(sim), recorded.health or [])
            if progress:
                progress(1)
        else:
            todo.append(sim)
    if todo:  # listed first: a file that lands but whose task dies before the client records it is still migrate's
        manifest.pending |= {native.file_name(sim) for sim in todo}
        manifest.save(npz_dir)
    arguments = [(source_ref, target_ref, legacy_dir, npz_dir, [(sim, described[sim][1]) for sim in chunk], health)
                 for chunk in executor.chunks(todo)] if todo else []
    for _, done in executor.run(tasks.migrate_chunk, arguments, name='migrate'):
        for sim, record in done:
            manifest.files[record.name] = record
            manifest.pending.discard(record.name)
            report.converted.append(sim)
            local._report_health(report, legacy_dir / legacy.file_name(sim), record.health or [])
        manifest.save(npz_dir)
        if progress:
            progress(len(done))
    report.removed_temp_files += remove_leftovers(npz_dir, native)  # of tasks whose worker died (run again elsewhere)
    report.converted.sort()
    report.seconds = time.perf_counter() - start
    logger.info(report.summary())
    return report
