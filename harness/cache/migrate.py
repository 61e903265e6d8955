"""Migration of one pipeline's cache into another's without re-simulating: a legacy `.pt` cache into the native
`.npz` cache (`python -m harness.migrate LEGACY_DIR NPZ_DIR`), or between any two pipelines.

Every source file is read by the source pipeline's own reader as canonical PhiML tensors (`read_fields`: dims `time`,
x[, y[, z]], [`vector`]; values and dtype as stored) and written by the target pipeline (`write_fields`). The
source's metadata is carried over unchanged except for the legacy layout keys `spatial_dims` and `field_channels`
(the dims carry them); `fields` is added if absent, so a migrated file equals what the native pipeline writes from the
same simulation. The dtype is kept (float16, float32 or float64); training needs float32.

Each written file is read back with the target's reader and compared with its source: every field bitwise, with its
dims, dim types, item names and dtype, and the metadata with its types, before it is recorded in the target's
`manifest.json` together with the size and SHA-256 of its source. A rerun skips the files whose record and bytes still
match, so an interrupted
migration resumes and removes the temporary files of writes killed in the target. The source folder is only read.

The target must be new, empty, or a folder an earlier migration wrote: a file there that migrate's manifest does not
record (a team's own `sim_000000.npz` or `manifest.json`, a native cache built from a simulation, anything else)
is refused with its name and nothing is changed.

The data health scan of `harness.data.health` runs on every converted file (NaN/Inf, constant or repeated frames,
|value| beyond `HealthConfig.max_abs_value`): each finding is logged as one warning line and recorded with the file
in the manifest; the conversion stays faithful (values are never changed).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from phiml import math
from phiml.math import Tensor, batch

from harness.atomic import temp_name_of
from harness.cache.manifest import (MANIFEST_NAME, Manifest, cache_kind, dtype_name, record_file, sha256_file,
                                    sims_on_disk)
from harness.config import HealthConfig
from harness.data.health import scan_tensors
from harness.equivalence.diff import Tolerance, compare_tensors
from harness.errors import CacheError
from harness.pipeline import AbstractPipeline

logger = logging.getLogger(__name__)
LAYOUT_KEYS = ('spatial_dims', 'field_channels')
NOT_MIGRATES = "NPZ_DIR must be a new or empty folder, or one that an earlier migrate wrote; nothing was changed"


@dataclass
class MigrationReport:
    """What `migrate_cache` did.

    Attributes:
        source_dir: The legacy folder (only read).
        target_dir: The native folder.
        converted: Sims converted and verified in this run.
        skipped: Sims whose converted file already verified against its record and source.
        health: Findings of the data health scan, `{'sim', 'frame', 'field', 'check', 'detail'}` each, of every
            migrated file (converted now or before).
        removed_temp_files: Leftovers of killed writes removed from the target.
        seconds: Wall time.
        source: The `name` of the source pipeline.
    """
    source_dir: Path
    target_dir: Path
    converted: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    removed_temp_files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    source: str = 'legacy'

    def summary(self) -> str:
        findings = (f"; {len(self.health)} data health findings (logged, and recorded in the manifest)"
                    if self.health else '; data health scan: no findings')
        return (f"migrated {len(self.converted) + len(self.skipped)} {self.source} cache files from {self.source_dir} to "
                f"{self.target_dir} ({len(self.converted)} converted and verified bitwise, {len(self.skipped)} already "
                f"done) in {self.seconds:.2f} s{findings}; manifest: {Manifest.path(self.target_dir)}")


def migrate_cache(legacy_dir: Path, npz_dir: Path, progress: Callable[[int], None] | None = None, *,
                  legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline],
                  health: HealthConfig = HealthConfig()) -> MigrationReport:
    """Converts every cache file of `legacy_dir` into `npz_dir`, verifies each, records each in the manifest.

    All sources are read and checked first (layout, dtypes, one resolution and one set of fields), so a bad source
    stops the migration before anything is written.

    Args:
        legacy_dir: Folder of the source cache; never written to.
        npz_dir: Folder of the target cache; created if needed. New, empty or written by an earlier migration.
        progress: Called with 1 per file done.
        legacy_cls: The source pipeline (reads `legacy_dir`).
        native_cls: The target pipeline (writes `npz_dir`).
        health: Thresholds of the data health scan of each converted file (findings are reported, not refused).

    Raises:
        CacheError: naming the file: missing or empty source folder, a source that does not load or is not
            `[C, T, *spatial]`, sims of different shapes, a converted file that does not match its source, a file in
            `npz_dir` that migrate did not write (nothing is changed then).
        OSError: `npz_dir` cannot be written (naming the folder).
    """
    start = time.perf_counter()
    legacy_dir, npz_dir = Path(legacy_dir), Path(npz_dir)
    source_pipe, target_pipe = legacy_cls(legacy_dir, 1), native_cls(npz_dir, 1)
    legacy, native = cache_kind(legacy_cls), cache_kind(native_cls)
    sims = _source_sims(legacy_dir, npz_dir, legacy)
    manifest, leftovers = _target_manifest(npz_dir, native)
    check_signatures(legacy_dir, legacy, {sim: _signature(source_pipe.read_fields(sim)[0]) for sim in sims})
    report = MigrationReport(legacy_dir, npz_dir, source=legacy.name)
    for path in leftovers:  # the folder is migrate's (its manifest says so): these are its own killed writes
        path.unlink(missing_ok=True)
        report.removed_temp_files.append(path.name)
    if leftovers:
        logger.info("%s: removed %d leftover temporary files of killed writes", npz_dir, len(leftovers))
    sources, todo = {}, []
    for sim in sims:
        source_path = legacy_dir / legacy.file_name(sim)
        sources[sim] = {'name': source_path.name, 'size': source_path.stat().st_size, 'sha256': sha256_file(source_path)}
        record = manifest.files.get(native.file_name(sim))
        if record is not None and record.source == sources[sim] and _target_intact(npz_dir / record.name, record):
            report.skipped.append(sim)
            _report_health(report, source_path, record.health or [])
            if progress:
                progress(1)
        else:
            todo.append(sim)
    if todo:  # listed first: a file that lands but is killed before its record is still known to be migrate's
        manifest.pending |= {native.file_name(sim) for sim in todo}
        manifest.save(npz_dir)
    for sim in todo:
        findings = convert(source_pipe, target_pipe, sim, health)
        record = record_file(native, npz_dir, sim, source=sources[sim])
        manifest.files[record.name] = dataclasses.replace(record, health=findings)
        manifest.pending.discard(record.name)
        manifest.save(npz_dir)
        report.converted.append(sim)
        _report_health(report, legacy_dir / legacy.file_name(sim), findings)
        if progress:
            progress(1)
    report.converted.sort()
    report.seconds = time.perf_counter() - start
    logger.info(report.summary())
    return report


def _source_sims(legacy_dir: Path, npz_dir: Path, legacy) -> list[int]:
    if not legacy_dir.is_dir():
        raise CacheError(f"{legacy_dir}: legacy cache folder {'is not a folder' if legacy_dir.exists() else 'does not exist'}")
    if npz_dir.exists() and npz_dir.resolve() == legacy_dir.resolve():
        raise CacheError(f"{npz_dir}: the native cache needs a folder of its own (NPZ_DIR is LEGACY_DIR; both would "
                         f"keep their manifest.json there)")
    if npz_dir.exists() and not npz_dir.is_dir():
        raise CacheError(f"{npz_dir}: exists and is not a folder (expected the folder of the native cache)")
    sims = sims_on_disk(legacy_dir, legacy)
    if not sims:
        raise CacheError(f"{legacy_dir}: empty cache folder (no {legacy.file_name(0).replace('000000', 'XXXXXX')} files "
                         f"to migrate)")
    if _harness_manifest(legacy_dir):  # a cache built by the harness: its sources must verify first
        from harness.cache.build import verify_cache
        verify_cache(legacy_dir, legacy, sims=sims).raise_if_failed()
    return sims


def _report_health(report: MigrationReport, source_path: Path, findings: list[dict[str, Any]]) -> None:
    for finding in findings:
        logger.warning("%s: data health: sim %d frame %d %r: %s (%s)", source_path, finding['sim'], finding['frame'],
                       finding['field'], finding['check'], finding['detail'])
        report.health.append(finding)


def _harness_manifest(folder: Path) -> bool:
    """Whether `folder` has a manifest the harness wrote (a team's own `manifest.json` is just one of its files)."""
    try:
        return Manifest.load(folder) is not None
    except CacheError:
        return False


def check_signatures(legacy_dir: Path, legacy, signatures: Mapping[int, str]) -> None:
    """Refuses sources of different shapes (`signatures`: sim -> `_signature` of its fields), naming the first.

    Raises:
        CacheError: naming the file whose fields differ from the first sim's.
    """
    first = min(signatures)
    for sim in sorted(signatures):
        if signatures[sim] != signatures[first]:
            raise CacheError(f"{legacy_dir / legacy.file_name(sim)}: fields {signatures[sim]} differ from "
                             f"{legacy.file_name(first)}: {signatures[first]}; one cache must hold sims of one "
                             f"resolution and one set of fields")


def _signature(fields: Mapping[str, Tensor]) -> str:
    """`velocity (time=9, x=16, y=16, vector=2) float32; ...`: what must be equal for every sim of one cache."""
    return '; '.join(f"{name} ({', '.join(f'{n}={k}' for n, k in zip(t.shape.names, t.shape.sizes))}) "
                     f"{dtype_name(t.dtype)}" for name, t in sorted(fields.items()))


def _target_manifest(npz_dir: Path, native) -> tuple[Manifest, list[Path]]:
    """The target's manifest (a new one for a new or empty folder) and the leftovers of migrate's killed writes there.

    Raises:
        CacheError: the target holds a manifest that is not the harness's, not a migration's, or a file the manifest
            does not record: migrate writes only where it wrote before.
    """
    if not npz_dir.exists():
        return Manifest(native.name), []
    try:
        manifest = Manifest.load(npz_dir)
    except CacheError as err:
        raise CacheError(f"{err}; refusing to write into {npz_dir}, {NOT_MIGRATES}") from None
    if manifest is not None and manifest.pipeline != native.name:
        raise CacheError(f"{Manifest.path(npz_dir)}: NPZ_DIR holds a {manifest.pipeline!r} cache, refusing to write the "
                         f"{native.name!r} cache into it; {NOT_MIGRATES}")
    built = sorted(name for name, record in (manifest.files if manifest else {}).items() if record.source is None)
    if built:
        raise CacheError(f"{Manifest.path(npz_dir)}: records a native cache the harness built from a simulation "
                         f"({built[0]} has no source), not a migration; {NOT_MIGRATES}")
    leftovers, foreign = [], []
    for path in sorted(npz_dir.iterdir()):
        final = temp_name_of(path)
        ours_by_name = path.is_file() and not path.is_symlink() and final is not None \
            and (final == MANIFEST_NAME or native.sim_of(final) is not None)
        if manifest is not None and (path.name == MANIFEST_NAME or manifest.owns(path.name)):
            continue
        if ours_by_name:  # a killed write's leftover: migrate's to remove only where its manifest is
            if manifest is not None:
                leftovers.append(path)
            continue
        foreign.append(path.name)
    if foreign:
        more = f" (and {len(foreign) - 1} more: {', '.join(foreign[1:4])})" if len(foreign) > 1 else ''
        raise CacheError(f"{npz_dir / foreign[0]}: not written by harness.migrate (not recorded in "
                         f"{Manifest.path(npz_dir)}){more}; {NOT_MIGRATES}")
    return manifest or Manifest(native.name), leftovers


def _target_intact(path: Path, record) -> bool:
    return path.is_file() and path.stat().st_size == record.size and sha256_file(path) == record.sha256


def native_metadata(source_path: Path, meta: dict, fields: list[str]) -> dict[str, Any]:
    """The legacy metadata without its layout keys, with `fields` (the sorted field names).

    Raises:
        CacheError: the legacy metadata lists other `fields` than the file holds.
    """
    result = {k: v for k, v in meta.items() if k not in LAYOUT_KEYS}
    if sorted(result.setdefault('fields', fields)) != fields:
        raise CacheError(f"{source_path}: metadata fields {result['fields']} differ from the stored fields {fields}")
    return result


def convert(source: AbstractPipeline, target: AbstractPipeline, sim: int,
            health: HealthConfig = HealthConfig()) -> list[dict[str, Any]]:
    """Converts, writes and verifies one sim; a written file that does not match its source is removed.

    Returns:
        The findings of the data health scan of the converted fields (`harness.data.health`), as plain dicts.
    """
    fields, meta = source.read_fields(sim)
    source_path = source.cache_file(sim)
    metadata = native_metadata(source_path, meta, sorted(fields))
    try:
        path = target.write_fields(sim, fields, metadata)
    except CacheError as err:
        raise CacheError(f"{source_path}: cannot be written to the {target.name!r} cache: {err}") from None
    try:
        loaded, loaded_metadata = target.read_fields(sim)
        # a legacy target adds its layout hints to what it stores (as a legacy source's are dropped above)
        loaded_metadata = {k: v for k, v in loaded_metadata.items() if k not in LAYOUT_KEYS or k in metadata}
        verify_converted(path, fields, loaded, loaded_metadata, metadata)
    except CacheError:
        path.unlink(missing_ok=True)
        raise
    scan = scan_tensors({name: math.expand(t, batch(sim=1)) for name, t in fields.items()}, health, [sim])
    return [{'sim': r.sim, 'frame': r.frame, 'field': r.field, 'check': r.check, 'detail': r.detail} for r in scan.rows]


def verify_converted(path: Path, source: Mapping[str, Tensor], loaded: Mapping[str, Tensor], loaded_metadata: dict,
                     metadata: dict) -> None:
    """Compares a written file, as read back, with its source: every field bitwise with its dims, dim types, item
    names and dtype, and the metadata with its types.

    Raises:
        CacheError: naming `path` and the first difference.
    """
    if sorted(loaded) != sorted(source):
        raise CacheError(f"{path}: read back with fields {sorted(loaded)}, the source has {sorted(source)}")
    for name, original in sorted(source.items()):
        back = loaded[name]
        diff = compare_tensors(original, back, Tolerance('identical'), name)
        if not diff or back.dtype != original.dtype:
            reason = diff.describe() if not diff else f"dtype {dtype_name(back.dtype)}, source {dtype_name(original.dtype)}"
            raise CacheError(f"{path}: does not match its source {reason} (legacy = source, native = converted)")
    if _canonical(loaded_metadata) != _canonical(metadata):
        raise CacheError(f"{path}: metadata read back {loaded_metadata} differs from the source's {metadata}")


def _canonical(value: Any) -> str:
    """Metadata as text: NaN equals NaN, 1 differs from 1.0 and True, lists equal tuples."""
    return json.dumps(value, sort_keys=True, default=repr)
