"""Migration of a legacy `.pt` cache into the native `.npz` cache, without re-simulating.

    python -m harness.migrate LEGACY_DIR NPZ_DIR

Every legacy file `sim_XXXXXX.pt` (`{'tensor_data': {field: [C, T, *spatial]}, 'metadata': {...}}`) becomes
`sim_XXXXXX.npz` holding `{field: Tensor(time, *spatial, [vector]), 'metadata': {...}}`, written with
`PhiMLDataManager.save_cache` (atomic, readable by `phiml.math.load`). Channel item names come from the legacy
metadata's `field_channels`; `spatial_dims` and `field_channels` are dropped from the metadata (the dims carry them),
`fields` is added if absent, so a migrated file equals what the native pipeline writes from the same simulation.
The dtype is kept (float16, float32 or float64); training needs float32.

Each converted file is read back with the native reader and compared with its source by `harness.diff` (bitwise,
dims, dim types, item names, dtype, metadata) before it is recorded in `NPZ_DIR/manifest.json` together with the
size and SHA-256 of its source. A rerun skips the files whose record and bytes still match, so an interrupted
migration resumes. The source folder is only read.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from phiml import math
from phiml.math import Tensor, batch, channel, spatial

from harness.equivalence.diff import Tolerance, compare_arrays
from harness.errors import CacheError
from harness.cache.manifest import (KINDS, SPATIAL, Manifest, dtype_name, record_file, sha256_file, sims_on_disk)

logger = logging.getLogger(__name__)
LAYOUT_KEYS = ('spatial_dims', 'field_channels')
NUMPY_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


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


def migrate_cache(legacy_dir: Path, npz_dir: Path, progress: Callable[[int], None] | None = None) -> MigrationReport:
    """Converts every `sim_XXXXXX.pt` of `legacy_dir` into `npz_dir`, verifies each, records each in the manifest.

    All sources are read and checked first (layout, dtypes, one resolution and one set of fields), so a bad source
    stops the migration before anything is written.

    Args:
        legacy_dir: Folder of the legacy cache; never written to.
        npz_dir: Folder of the native cache; created if needed.
        progress: Called with 1 per file done.

    Raises:
        CacheError: naming the file: missing or empty source folder, a source that does not load or is not
            `[C, T, *spatial]`, sims of different shapes, a converted file that does not match its source.
        OSError: `npz_dir` cannot be written.
    """
    start = time.perf_counter()
    legacy_dir, npz_dir = Path(legacy_dir), Path(npz_dir)
    legacy, native = KINDS['legacy'], KINDS['phiml']
    sims = _source_sims(legacy_dir, npz_dir)
    signatures = {sim: _source_signature(legacy_dir, sim) for sim in sims}
    first = sims[0]
    for sim in sims:
        if signatures[sim] != signatures[first]:
            raise CacheError(f"{legacy_dir / legacy.file_name(sim)}: fields/shape/dtype {signatures[sim]} differ from "
                             f"{legacy.file_name(first)} {signatures[first]}; one cache must hold sims of one "
                             f"resolution and one set of fields")
    manifest = _target_manifest(npz_dir)
    report = MigrationReport(legacy_dir, npz_dir)
    for sim in sims:
        source_path = legacy_dir / legacy.file_name(sim)
        source = {'name': source_path.name, 'size': source_path.stat().st_size, 'sha256': sha256_file(source_path)}
        record = manifest.files.get(native.file_name(sim))
        if record is not None and record.source == source and _target_intact(npz_dir / record.name, record):
            report.skipped.append(sim)
        else:
            _convert(legacy_dir, npz_dir, sim)
            manifest.files[native.file_name(sim)] = record_file(native, npz_dir, sim, source=source, allow_any_float=True)
            manifest.save(npz_dir)
            report.converted.append(sim)
        if progress:
            progress(1)
    report.seconds = time.perf_counter() - start
    logger.info(report.summary())
    return report


def _source_sims(legacy_dir: Path, npz_dir: Path) -> list[int]:
    if not legacy_dir.is_dir():
        raise CacheError(f"{legacy_dir}: legacy cache folder {'is not a folder' if legacy_dir.exists() else 'does not exist'}")
    if npz_dir.exists() and npz_dir.resolve() == legacy_dir.resolve():
        raise CacheError(f"{npz_dir}: the native cache needs a folder of its own (NPZ_DIR is LEGACY_DIR; both would "
                         f"keep their manifest.json there)")
    if npz_dir.exists() and not npz_dir.is_dir():
        raise CacheError(f"{npz_dir}: exists and is not a folder (expected the folder of the native cache)")
    sims = sims_on_disk(legacy_dir, KINDS['legacy'])
    if not sims:
        raise CacheError(f"{legacy_dir}: empty cache folder (no sim_XXXXXX.pt files to migrate)")
    if Manifest.path(legacy_dir).is_file():  # a cache built by the harness: its sources must verify first
        from harness.cache.build import verify_cache
        verify_cache(legacy_dir, 'legacy', sims=sims).raise_if_failed()
    return sims


def _source_signature(legacy_dir: Path, sim: int) -> tuple:
    data = KINDS['legacy'].load(legacy_dir, sim, allow_any_float=True)
    return tuple((name, tuple(t.shape), str(t.dtype)) for name, t in sorted(data['tensor_data'].items()))


def _target_manifest(npz_dir: Path) -> Manifest:
    try:
        manifest = Manifest.load(npz_dir)
    except CacheError as err:
        logger.warning("%s; starting a new one, every file is converted again", err)
        return Manifest('phiml')
    if manifest is not None and manifest.pipeline != 'phiml':
        raise CacheError(f"{Manifest.path(npz_dir)}: NPZ_DIR holds a {manifest.pipeline!r} cache, refusing to write the "
                         f"native cache into it")
    return manifest or Manifest('phiml')


def _target_intact(path: Path, record) -> bool:
    return path.is_file() and path.stat().st_size == record.size and sha256_file(path) == record.sha256


def _convert(legacy_dir: Path, npz_dir: Path, sim: int) -> Path:
    """Converts, writes and verifies one sim; a converted file that does not match its source is removed."""
    source_path = legacy_dir / KINDS['legacy'].file_name(sim)
    data = KINDS['legacy'].load(legacy_dir, sim, allow_any_float=True)
    meta = data['metadata']
    tensors = {name: to_native(source_path, name, t, meta['spatial_dims'], meta['field_channels'][name])
               for name, t in data['tensor_data'].items()}
    metadata = native_metadata(source_path, meta, sorted(tensors))
    manager = KINDS['phiml'].manager(npz_dir)
    path = manager.save_cache(sim, {**tensors, 'metadata': metadata})
    try:
        verify_converted(path, data, manager.load_cache(sim, allow_any_float=True), metadata)
    except CacheError:
        path.unlink(missing_ok=True)
        raise
    return path


def to_native(source_path: Path, name: str, tensor: torch.Tensor, spatial_dims: Sequence[str],
              channels: Sequence[str]) -> Tensor:
    """One legacy field `[C, T, *spatial]` as the native `Tensor(time, *spatial, [vector])`, values and dtype kept.

    Raises:
        CacheError: a dtype numpy cannot hold, spatial dims other than x[, y[, z]], or channels that are neither
            one scalar channel nor one per spatial dim.
    """
    spatial_dims = tuple(spatial_dims)
    if tensor.dtype not in NUMPY_FLOATS:
        raise CacheError(f"{source_path}: field {name!r} has dtype {tensor.dtype}, expected float16, float32 or float64")
    if spatial_dims != SPATIAL[:len(spatial_dims)]:
        raise CacheError(f"{source_path}: metadata spatial_dims {list(spatial_dims)}, expected {list(SPATIAL[:len(spatial_dims)])}")
    if channels and tuple(channels) != spatial_dims:
        raise CacheError(f"{source_path}: field {name!r} has channels {list(channels)}; the native cache holds vector "
                         f"fields with one channel per spatial dim {list(spatial_dims)} or scalar fields (C=1, no names)")
    values = tensor.detach().cpu().numpy()
    sizes = dict(zip(spatial_dims, values.shape[2:]))
    dims = [batch(time=values.shape[1]), spatial(**sizes)]
    if channels:
        return math.wrap(np.ascontiguousarray(np.moveaxis(values, 0, -1)), *dims, channel(vector=tuple(channels)))
    return math.wrap(np.ascontiguousarray(values[0]), *dims)


def native_metadata(source_path: Path, meta: dict, fields: list[str]) -> dict[str, Any]:
    """The legacy metadata without its layout keys, with `fields` (the sorted field names).

    Raises:
        CacheError: the legacy metadata lists other `fields` than the file holds.
    """
    result = {k: v for k, v in meta.items() if k not in LAYOUT_KEYS}
    if sorted(result.setdefault('fields', fields)) != fields:
        raise CacheError(f"{source_path}: metadata fields {result['fields']} differ from the stored fields {fields}")
    return result


def verify_converted(path: Path, source: dict, loaded: dict, metadata: dict) -> None:
    """Compares a converted file, as read back, with its legacy source: every field bitwise, dims, item names, dtype.

    Raises:
        CacheError: naming `path` and the first difference.
    """
    spatial_dims = tuple(source['metadata']['spatial_dims'])
    for name, original in source['tensor_data'].items():
        channels = tuple(source['metadata']['field_channels'][name])
        tensor = loaded[name]
        expected = ('time', *spatial_dims) + (('vector',) if channels else ())
        if tensor.shape.names != expected or tensor.shape.batch.names != ('time',) \
                or tensor.shape.spatial.names != spatial_dims or tuple(tensor.shape.channel.names) != expected[len(spatial_dims) + 1:]:
            raise CacheError(f"{path}: field {name!r} read back with dims {tensor.shape}, expected {expected} "
                             f"(time batch, spatial, vector channel)")
        if channels and tensor.shape.get_item_names('vector') != channels:
            raise CacheError(f"{path}: field {name!r} read back with item names {tensor.shape.get_item_names('vector')}, "
                             f"source channels {list(channels)}")
        source_np = original.numpy()
        with math.precision(tensor.dtype.bits):  # numpy(order) casts to the default precision otherwise
            back = tensor.numpy(['vector', 'time', *spatial_dims]) if channels else tensor.numpy(['time', *spatial_dims])[None]
        diff = compare_arrays(source_np, back, ('channel', 'time', *spatial_dims), Tolerance('identical'), name)
        if not diff or back.dtype != source_np.dtype:
            reason = diff.describe() if not diff else f"dtype {dtype_name(tensor.dtype)}, source {original.dtype}"
            raise CacheError(f"{path}: does not match its source {reason} (legacy = source, native = converted)")
    if _canonical(loaded['metadata']) != _canonical(metadata):
        raise CacheError(f"{path}: metadata read back {loaded['metadata']} differs from the source's {metadata}")


def _canonical(value: Any) -> str:
    """Metadata as text: NaN equals NaN, 1 differs from 1.0 and True, lists equal tuples."""
    return json.dumps(value, sort_keys=True, default=repr)
