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
migration resumes and removes the temporary files of writes killed in NPZ_DIR. The source folder is only read.

NPZ_DIR must be new, empty, or a folder an earlier migration wrote: a file there that migrate's manifest does not
record (a team's own `sim_000000.npz` or `manifest.json`, a native cache built from a simulation, anything else)
is refused with its name and nothing is changed.

The data health scan of `harness.health` runs on every converted file (NaN/Inf, constant or repeated frames,
|value| beyond `HealthConfig.max_abs_value`): each finding is logged as one warning line and recorded with the
file in the manifest; the conversion stays faithful (values are never changed).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from phiml import math
from phiml.math import Tensor, batch, channel, spatial

from .atomic import temp_name_of
from .cli import OneLineParser, guarded, setup_logging
from .config import HealthConfig
from .diff import Tolerance, compare_arrays
from .errors import CacheError
from .health import scan_tensors
from .manifest import (KINDS, MANIFEST_NAME, SPATIAL, Manifest, dtype_name, record_file, sha256_file, sims_on_disk)

logger = logging.getLogger(__name__)
LAYOUT_KEYS = ('spatial_dims', 'field_channels')
NUMPY_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
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
    """
    source_dir: Path
    target_dir: Path
    converted: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    removed_temp_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        findings = (f"; {len(self.health)} data health findings (logged, and recorded in the manifest)"
                    if self.health else '; data health scan: no findings')
        return (f"migrated {len(self.converted) + len(self.skipped)} legacy cache files from {self.source_dir} to "
                f"{self.target_dir} ({len(self.converted)} converted and verified bitwise, {len(self.skipped)} already "
                f"done) in {self.seconds:.2f} s{findings}; manifest: {Manifest.path(self.target_dir)}")


def migrate_cache(legacy_dir: Path, npz_dir: Path, progress: Callable[[int], None] | None = None,
                  health: HealthConfig = HealthConfig()) -> MigrationReport:
    """Converts every `sim_XXXXXX.pt` of `legacy_dir` into `npz_dir`, verifies each, records each in the manifest.

    All sources are read and checked first (layout, dtypes, one resolution and one set of fields), so a bad source
    stops the migration before anything is written.

    Args:
        legacy_dir: Folder of the legacy cache; never written to.
        npz_dir: Folder of the native cache; created if needed. New, empty or written by an earlier migration.
        progress: Called with 1 per file done.
        health: Thresholds of the data health scan of each converted file (findings are reported, not refused).

    Raises:
        CacheError: naming the file: missing or empty source folder, a source that does not load or is not
            `[C, T, *spatial]`, sims of different shapes, a converted file that does not match its source, a file in
            `npz_dir` that migrate did not write (nothing is changed then).
        OSError: `npz_dir` cannot be written (naming the folder).
    """
    start = time.perf_counter()
    legacy_dir, npz_dir = Path(legacy_dir), Path(npz_dir)
    legacy, native = KINDS['legacy'], KINDS['phiml']
    sims = _source_sims(legacy_dir, npz_dir)
    manifest, leftovers = _target_manifest(npz_dir)
    signatures = {sim: _source_signature(legacy_dir, sim) for sim in sims}
    first = sims[0]
    for sim in sims:
        if signatures[sim] != signatures[first]:
            raise CacheError(f"{legacy_dir / legacy.file_name(sim)}: fields/shape/dtype {signatures[sim]} differ from "
                             f"{legacy.file_name(first)} {signatures[first]}; one cache must hold sims of one "
                             f"resolution and one set of fields")
    report = MigrationReport(legacy_dir, npz_dir)
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
            _report_health(report, legacy_dir / legacy.file_name(sim), record.health or [])
            if progress:
                progress(1)
        else:
            todo.append(sim)
    if todo:  # listed first: a file that lands but is killed before its record is still known to be migrate's
        manifest.pending |= {native.file_name(sim) for sim in todo}
        manifest.save(npz_dir)
    for sim in todo:
        findings = _convert(legacy_dir, npz_dir, sim, health)
        record = record_file(native, npz_dir, sim, source=sources[sim], allow_any_float=True)
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


def _report_health(report: MigrationReport, source_path: Path, findings: list[dict[str, Any]]) -> None:
    for finding in findings:
        logger.warning("%s: data health: sim %d frame %d %r: %s (%s)", source_path, finding['sim'], finding['frame'],
                       finding['field'], finding['check'], finding['detail'])
        report.health.append(finding)


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
    if _harness_manifest(legacy_dir):  # a cache built by the harness: its sources must verify first
        from .cache import verify_cache
        verify_cache(legacy_dir, 'legacy', sims=sims).raise_if_failed()
    return sims


def _harness_manifest(folder: Path) -> bool:
    """Whether `folder` has a manifest the harness wrote (a team's own `manifest.json` is just one of its files)."""
    try:
        return Manifest.load(folder) is not None
    except CacheError:
        return False


def _source_signature(legacy_dir: Path, sim: int) -> tuple:
    data = KINDS['legacy'].load(legacy_dir, sim, allow_any_float=True)
    return tuple((name, tuple(t.shape), str(t.dtype)) for name, t in sorted(data['tensor_data'].items()))


def _target_manifest(npz_dir: Path) -> tuple[Manifest, list[Path]]:
    """NPZ_DIR's manifest (a new one for a new or empty folder) and the leftovers of migrate's killed writes there.

    Raises:
        CacheError: NPZ_DIR holds a manifest that is not the harness's, not a migration's, or a file the manifest
            does not record: migrate writes only where it wrote before.
    """
    if not npz_dir.exists():
        return Manifest('phiml'), []
    try:
        manifest = Manifest.load(npz_dir)
    except CacheError as err:
        raise CacheError(f"{err}; refusing to write into {npz_dir}, {NOT_MIGRATES}") from None
    if manifest is not None and manifest.pipeline != 'phiml':
        raise CacheError(f"{Manifest.path(npz_dir)}: NPZ_DIR holds a {manifest.pipeline!r} cache, refusing to write the "
                         f"native cache into it; {NOT_MIGRATES}")
    built = sorted(name for name, record in (manifest.files if manifest else {}).items() if record.source is None)
    if built:
        raise CacheError(f"{Manifest.path(npz_dir)}: records a native cache the harness built from a simulation "
                         f"({built[0]} has no source), not a migration; {NOT_MIGRATES}")
    leftovers, foreign = [], []
    for path in sorted(npz_dir.iterdir()):
        final = temp_name_of(path)
        ours_by_name = path.is_file() and not path.is_symlink() and final is not None \
            and (final == MANIFEST_NAME or KINDS['phiml'].sim_of(final) is not None)
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
    return manifest or Manifest('phiml'), leftovers


def _target_intact(path: Path, record) -> bool:
    return path.is_file() and path.stat().st_size == record.size and sha256_file(path) == record.sha256


def _convert(legacy_dir: Path, npz_dir: Path, sim: int, health: HealthConfig) -> list[dict[str, Any]]:
    """Converts, writes and verifies one sim; a converted file that does not match its source is removed.

    Returns:
        The findings of the data health scan of the converted fields (`harness.health`), as plain dicts.
    """
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
    scan = scan_tensors({name: math.expand(t, batch(sim=1)) for name, t in tensors.items()}, health, [sim])
    return [{'sim': r.sim, 'frame': r.frame, 'field': r.field, 'check': r.check, 'detail': r.detail} for r in scan.rows]


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


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog='python -m harness.migrate',
                           description="Convert a legacy .pt cache into the native .npz cache without re-simulating; "
                                       "every file is verified bitwise against its source, LEGACY_DIR is only read, "
                                       "and a rerun resumes.")
    parser.add_argument('legacy_dir', type=Path, metavar='LEGACY_DIR', help="folder of sim_XXXXXX.pt files")
    parser.add_argument('npz_dir', type=Path, metavar='NPZ_DIR', help="folder for sim_XXXXXX.npz files and manifest.json")
    parser.add_argument('--no-progress', action='store_true', help="no progress bar")
    parser.add_argument('-v', '--verbose', action='store_true', help="log what is done")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the migration; returns 0, or 2 with one line on stderr for bad input."""
    return guarded(_main, 'python -m harness.migrate', argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as done:  # usage error (one line already on stderr) or --help
        return int(done.code or 0)
    setup_logging(args.verbose)
    from tqdm import tqdm
    with tqdm(unit='file', desc='migrate', disable=True if args.no_progress else None, file=sys.stderr, leave=False) as bar:
        report = migrate_cache(args.legacy_dir, args.npz_dir, bar.update)
    print(report.summary())
    return 0


if __name__ == '__main__':
    sys.exit(main())
