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
match, so an interrupted migration resumes. The source folder is only read.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from phiml.math import Tensor

from harness.cache.manifest import Manifest, cache_kind, dtype_name, record_file, sha256_file, sims_on_disk
from harness.equivalence.diff import Tolerance, compare_tensors
from harness.errors import CacheError
from harness.pipeline import AbstractPipeline

logger = logging.getLogger(__name__)
LAYOUT_KEYS = ('spatial_dims', 'field_channels')


@dataclass
class MigrationReport:
    """What `migrate_cache` did.

    Attributes:
        source_dir: The legacy folder (only read).
        target_dir: The native folder.
        converted: Sims converted and verified in this run.
        skipped: Sims whose converted file already verified against its record and source.
        seconds: Wall time.
    """
    source_dir: Path
    target_dir: Path
    converted: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"migrated {len(self.converted) + len(self.skipped)} legacy cache files from {self.source_dir} to "
                f"{self.target_dir} ({len(self.converted)} converted and verified bitwise, {len(self.skipped)} already "
                f"done) in {self.seconds:.2f} s; manifest: {Manifest.path(self.target_dir)}")


def migrate_cache(legacy_dir: Path, npz_dir: Path, progress: Callable[[int], None] | None = None, *,
                  legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline]) -> MigrationReport:
    """Converts every cache file of `legacy_dir` into `npz_dir`, verifies each, records each in the manifest.

    All sources are read and checked first (layout, dtypes, one resolution and one set of fields), so a bad source
    stops the migration before anything is written.

    Args:
        legacy_dir: Folder of the source cache; never written to.
        npz_dir: Folder of the target cache; created if needed.
        progress: Called with 1 per file done.
        legacy_cls: The source pipeline (reads `legacy_dir`).
        native_cls: The target pipeline (writes `npz_dir`).

    Raises:
        CacheError: naming the file: missing or empty source folder, a source that does not load or is not
            `[C, T, *spatial]`, sims of different shapes, a converted file that does not match its source.
        OSError: `npz_dir` cannot be written.
    """
    start = time.perf_counter()
    legacy_dir, npz_dir = Path(legacy_dir), Path(npz_dir)
    source_pipe, target_pipe = legacy_cls(legacy_dir, 1), native_cls(npz_dir, 1)
    legacy, native = cache_kind(legacy_cls), cache_kind(native_cls)
    sims = _source_sims(legacy_dir, npz_dir, legacy)
    check_signatures(legacy_dir, legacy, {sim: _signature(source_pipe.read_fields(sim)[0]) for sim in sims})
    manifest = _target_manifest(npz_dir, native.name)
    report = MigrationReport(legacy_dir, npz_dir)
    for sim in sims:
        source_path = legacy_dir / legacy.file_name(sim)
        source = {'name': source_path.name, 'size': source_path.stat().st_size, 'sha256': sha256_file(source_path)}
        record = manifest.files.get(native.file_name(sim))
        if record is not None and record.source == source and _target_intact(npz_dir / record.name, record):
            report.skipped.append(sim)
        else:
            convert(source_pipe, target_pipe, sim)
            manifest.files[native.file_name(sim)] = record_file(native, npz_dir, sim, source=source)
            manifest.save(npz_dir)
            report.converted.append(sim)
        if progress:
            progress(1)
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
    if Manifest.path(legacy_dir).is_file():  # a cache built by the harness: its sources must verify first
        from harness.cache.build import verify_cache
        verify_cache(legacy_dir, legacy, sims=sims).raise_if_failed()
    return sims


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


def _target_manifest(npz_dir: Path, pipeline: str) -> Manifest:
    try:
        manifest = Manifest.load(npz_dir)
    except CacheError as err:
        logger.warning("%s; starting a new one, every file is converted again", err)
        return Manifest(pipeline)
    if manifest is not None and manifest.pipeline != pipeline:
        raise CacheError(f"{Manifest.path(npz_dir)}: NPZ_DIR holds a {manifest.pipeline!r} cache, refusing to write the "
                         f"{pipeline!r} cache into it")
    return manifest or Manifest(pipeline)


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


def convert(source: AbstractPipeline, target: AbstractPipeline, sim: int) -> Path:
    """Converts, writes and verifies one sim; a written file that does not match its source is removed."""
    fields, meta = source.read_fields(sim)
    source_path = source.cache_file(sim)
    metadata = native_metadata(source_path, meta, sorted(fields))
    try:
        path = target.write_fields(sim, fields, metadata)
    except CacheError as err:
        raise CacheError(f"{source_path}: cannot be written to the {target.name!r} cache: {err}") from None
    try:
        verify_converted(path, fields, *target.read_fields(sim), metadata)
    except CacheError:
        path.unlink(missing_ok=True)
        raise
    return path


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
