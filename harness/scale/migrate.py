"""`migrate_cache` on an executor: the sources are described and the files converted and verified by chunk tasks on
the workers; the client alone writes the target's `manifest.json`, after every chunk that lands.

The result equals `harness.cache.migrate.migrate_cache`'s: the same files, bitwise, and the same records.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from harness.cache import migrate as local
from harness.cache.build import remove_leftovers
from harness.cache.manifest import cache_kind
from harness.pipeline import AbstractPipeline
from harness.scale import tasks
from harness.scale.cluster import AbstractExecutor

logger = logging.getLogger(__name__)


def migrate_cache(executor: AbstractExecutor, legacy_dir: Path, npz_dir: Path,
                  progress: Callable[[int], None] | None = None, *, legacy_cls: type[AbstractPipeline],
                  native_cls: type[AbstractPipeline]) -> local.MigrationReport:
    """`harness.cache.migrate.migrate_cache` on `executor` (in this process when it is not distributed).

    Raises:
        CacheError: as `harness.cache.migrate.migrate_cache`, before anything is written for a bad source.
    """
    if not executor.distributed:
        return local.migrate_cache(legacy_dir, npz_dir, progress, legacy_cls=legacy_cls, native_cls=native_cls)
    start = time.perf_counter()
    legacy_dir, npz_dir = Path(legacy_dir), Path(npz_dir)
    legacy, native = cache_kind(legacy_cls), cache_kind(native_cls)
    source_spec, target_spec = tasks.pipeline_ref(legacy_cls), tasks.pipeline_ref(native_cls)
    sims = local._source_sims(legacy_dir, npz_dir, legacy)
    chunks = executor.chunks(sims)
    signatures, sources = {}, {}
    for _, rows in executor.run(tasks.describe_sources, [(source_spec, legacy_dir, chunk) for chunk in chunks],
                                name='describe-sources'):
        for sim, signature, source in rows:
            signatures[sim], sources[sim] = signature, source
    local.check_signatures(legacy_dir, legacy, signatures)
    manifest, leftovers = local._target_manifest(npz_dir, native)
    report = local.MigrationReport(legacy_dir, npz_dir, source=legacy.name)
    for path in leftovers:  # the folder is migrate's (its manifest says so): these are its own killed writes
        path.unlink(missing_ok=True)
        report.removed_temp_files.append(path.name)
    todo = [sim for sim in sims if (record := manifest.files.get(native.file_name(sim))) is None
            or record.source != sources[sim]]
    if todo:  # listed first: a file that lands but is killed before its record is still known to be migrate's
        manifest.pending |= {native.file_name(sim) for sim in todo}
        manifest.save(npz_dir)
    arguments = [(source_spec, target_spec, legacy_dir, npz_dir,
                  [(sim, sources[sim], manifest.files.get(native.file_name(sim))) for sim in chunk])
                 for chunk in chunks]
    for _, done in executor.run(tasks.migrate_chunk, arguments, name='migrate'):
        for sim, record in done:
            if record is None:
                report.skipped.append(sim)
                findings = manifest.files[native.file_name(sim)].health or []
            else:
                manifest.files[record.name] = record
                manifest.pending.discard(record.name)
                report.converted.append(sim)
                findings = record.health or []
            local._report_health(report, legacy_dir / legacy.file_name(sim), findings)
        if any(record is not None for _, record in done):
            manifest.save(npz_dir)
        if progress:
            progress(len(done))
    remove_leftovers(npz_dir, native)  # of writes on workers that died (their tasks ran again elsewhere)
    report.converted.sort()
    report.skipped.sort()
    report.seconds = time.perf_counter() - start
    logger.info(report.summary())
    return report
