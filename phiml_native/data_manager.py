"""The PhiML-native cache: one `phiml.math.save` file per simulation, tensors with named dims `time, x, y, vector`."""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from phiml import math
from phiml.math import Tensor

from harness.atomic import atomic_path
from harness.config import CAST_HINT
from harness.errors import CacheError
from .npz import directory_offsets, read_phiml_npz


class PhiMLDataManager:
    """Writes and reads the native cache in `cache_dir`: per sim, `sim_XXXXXX.npz` holding
    `{field_name: Tensor(time, *spatial, [vector]), 'metadata': {...}}`, readable by `phiml.math.load`."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self._folder = str(self.cache_dir)

    def get_cached_path(self, sim_index: int) -> Path:
        return self.cache_dir / _file_name(sim_index)

    @staticmethod
    def field_to_phiml_tensor(field, field_name: str) -> Tensor:
        """The values of a PhiFlow field as a float32 numpy-backed tensor with the canonical dims, in this order:
        `time` (batch), the spatial dims (spatial) and, for a vector field, `vector` (channel, item names)."""
        shape = field.values.shape
        # interned: the file's pickled specs memoize strings by identity, so equal names must be one object in every
        # process for equal data to give equal bytes
        spatial_names = tuple(sys.intern(n) for n in shape.spatial.names)
        order = ['time', *spatial_names, *shape.channel.names[:1]]
        if 'time' not in shape or shape.without(order):
            raise ValueError(f"field {field_name!r} has dims {shape.names}; expected a trajectory with only {order}")
        dims = [math.batch(time=shape.get_size('time')), math.spatial(**{n: shape.get_size(n) for n in spatial_names})]
        if shape.channel:
            dims.append(math.channel(vector=tuple(sys.intern(n) for n in shape.channel.item_names[0] or spatial_names)))
        return math.wrap(np.ascontiguousarray(field.values.numpy(order), dtype=np.float32), *dims)

    def save_cache(self, sim_index: int, data: Mapping[str, Any]) -> Path:
        """Writes `{field: Tensor, 'metadata': {...}}` atomically with `phiml.math.save`, every zip member dated
        1980-01-01 so that equal data gives equal bytes (resumed and repeated builds compare files byte for byte)."""
        path = self.get_cached_path(sim_index)
        with atomic_path(path, '.npz') as tmp:
            math.save(str(tmp), dict(data))
            _date_members_1980(tmp)
        return path

    def load_cache(self, sim_index: int, mmap: bool = False, *, allow_any_float: bool = False,
                   out: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Loads one sim's cache without unpickling code, and validates it: fields memory-mapped with `mmap`, read into
        `out[field]` where it fits (see `read_phiml_npz`), float16/float64 accepted with `allow_any_float` (migrated
        caches; training caches must be float32).

        Raises:
            CacheError: missing or unsafe file, missing metadata or field, wrong dims, types or item names.
        """
        path = os.path.join(self._folder, _file_name(sim_index))
        try:
            data = read_phiml_npz(path, mmap=mmap, out={f'root[{name}]:0': array for name, array in (out or {}).items()})
        except CacheError:
            if not os.path.isfile(path):
                raise CacheError(f"{path}: cache file missing (expected the native cache of sim {sim_index})") from None
            raise
        validate_native(path, data, allow_any_float=allow_any_float)
        return data


def _date_members_1980(path: Path) -> None:
    """Dates every member of the zip `path` 1980-01-01 00:00 in place, in its local header and its directory entry."""
    with zipfile.ZipFile(path) as archive:
        places = [(info.header_offset, b'PK\x03\x04', 10) for info in archive.infolist()] + \
                 [(entry, b'PK\x01\x02', 12) for entry in directory_offsets(archive)]
    with open(path, 'r+b') as fp:
        for offset, signature, field in places:
            fp.seek(offset)
            if fp.read(4) != signature:
                raise CacheError(f"{path}: no zip header at offset {offset}, cannot date its members")
            fp.seek(offset + field)
            fp.write(_DOS_1980)


_DOS_1980 = bytes([0, 0, 33, 0])  # 00:00:00 and 1980-01-01 as zip stores them (DOS time and date, little endian)


def _file_name(sim_index: int) -> str:
    return f"sim_{sim_index:06d}.npz"


def validate_native(path: Path, data: Any, *, allow_any_float: bool = False) -> None:
    """Checks one loaded cache against the data contract (float32 fields, or any float with `allow_any_float`).

    Raises:
        CacheError: naming `path`, what was found and what was expected.
    """
    if not isinstance(data, dict) or 'metadata' not in data:
        raise CacheError(f"{path}: expected a dict with 'metadata' and one tensor per field, "
                         f"found {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    meta = data['metadata']
    if not isinstance(meta, dict):
        raise CacheError(f"{path}: metadata is a {type(meta).__name__}, expected a dict")
    listed = meta.get('fields')
    names = field_names(data) if listed is None else listed if isinstance(listed, (list, tuple)) else [None]
    if not names:
        raise CacheError(f"{path}: no fields (expected at least one tensor beside 'metadata', or metadata 'fields' "
                         f"listing them; found {sorted(data)})")
    for name in names:
        if not isinstance(name, str):
            raise CacheError(f"{path}: metadata 'fields' (={listed!r}) must list the names of the fields (or be left "
                             f"out: then every tensor beside 'metadata' is a field)")
        if name not in data:
            raise CacheError(f"{path}: field {name!r} listed in metadata is missing (found {sorted(k for k in data if k != 'metadata')})")
        t = data[name]
        if not isinstance(t, Tensor):
            raise CacheError(f"{path}: field {name!r} is a {type(t).__name__}, expected a PhiML tensor")
        problem = _shape_problem(t.shape, t.dtype, allow_any_float)
        if problem is None and 'n_frames' in meta and t.shape.get_size('time') != meta['n_frames']:
            problem = f"has {t.shape.get_size('time')} frames, metadata says n_frames={meta['n_frames']}"
        if problem:
            taken = '' if listed is not None else " (taken for a field: the metadata has no key 'fields' to list the fields)"
            raise CacheError(f"{path}: field {name!r}{taken} {problem}")


def field_names(data: Mapping[str, Any]) -> list[str]:
    """The fields of a cache file, sorted: those its metadata lists under `'fields'` (the harness's writer adds the
    key), else every tensor beside `'metadata'` (the migration plan's format `{'velocity': Tensor, 'metadata': {...}}`)."""
    listed = data['metadata'].get('fields')
    return sorted(listed if listed is not None else (k for k, v in data.items() if k != 'metadata' and isinstance(v, Tensor)))


def _shape_problem(shape, dtype, allow_any_float: bool) -> str | None:
    """What is wrong with a field of this shape and dtype, in words; None if nothing (from the shape's names, dim types,
    sizes and item names)."""
    names, kinds, sizes = shape.names, tuple(shape.dim_types), shape.sizes
    vector = kinds[-1:] == ('channel',)
    spatial_names = names[1:len(names) - vector]
    if names[:1] != ('time',) or not spatial_names or (vector and names[-1] != 'vector') or \
            kinds != ('batch',) + ('spatial',) * len(spatial_names) + ('channel',) * vector:
        found = ', '.join(f"{d.name} ({getattr(d.dim_type, '__name__', d.dim_type)})" for d in shape)
        return f"has dims ({found}), expected time (batch), spatial dims x[, y[, z]], [vector (channel)] in that order"
    if spatial_names != ('x', 'y', 'z')[:len(spatial_names)]:
        return f"has spatial dims {spatial_names}, expected {('x', 'y', 'z')[:len(spatial_names)]}"
    items = tuple(shape.item_names[-1] or ()) if vector else ()
    if vector and sizes[-1] == len(spatial_names) and items != spatial_names:
        return f"has vector item names {items or None}, expected {spatial_names} (one component per spatial dim)"
    if vector and len(set(items)) != sizes[-1]:
        return f"has vector item names {items or None}, expected {sizes[-1]} distinct names"
    if not (dtype.kind == float if allow_any_float else dtype == math.DType(float, 32)):
        return f"has dtype {dtype}, expected " + ('a float dtype' if allow_any_float else f"float32 for training ({CAST_HINT})")
    return None
