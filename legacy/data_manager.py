"""The legacy `.pt` cache: one file per simulation, `{'tensor_data': {field: Tensor[C, T, *spatial]}, 'metadata': {...}}`."""
from __future__ import annotations

import logging
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from harness.atomic import atomic_path
from harness.config import CAST_HINT
from harness.errors import CacheError

logger = logging.getLogger(__name__)
HINT_METADATA = ('n_frames', 'spatial_dims', 'field_channels')  # written by our writer; read only to confirm
# numpy values as `torch.load(weights_only=True)` may build them: scalars (np.float32(0.01), np.int64(3), np.bool_(True))
# and arrays of numbers, bools or strings (np.array([64, 64])), each reconstruction as numpy 2 and numpy 1 spell it,
# `np.ndarray`, `np.dtype` and the dtype classes of bools, numbers and str (not object: object arrays stay refused)
_SCALAR, _ARRAY = np.float64(0).__reduce__()[0], np.zeros(0).__reduce__()[0]
NUMPY_VALUES = [_SCALAR, (_SCALAR, 'numpy.core.multiarray.scalar'), _ARRAY, (_ARRAY, 'numpy.core.multiarray._reconstruct'),
                np.ndarray, np.dtype, *dict.fromkeys(type(np.dtype(code)) for code in '?bhilqBHILQefdFDU')]


def _map_leaves(value: Any, leaf) -> Any:
    """`value` with `leaf` applied to everything in its dicts (keys too), lists and tuples that is none of those."""
    if type(value) is dict:
        return {_map_leaves(k, leaf): _map_leaves(v, leaf) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_map_leaves(v, leaf) for v in value)
    return leaf(value)


def _interned(value: Any) -> Any:
    """`value` with every `str` in its dicts, lists and tuples interned: pickle memoizes by identity, so equal
    metadata built from equal but distinct string objects (e.g. in another process) would give other bytes."""
    return _map_leaves(value, lambda x: sys.intern(x) if type(x) is str else x)


class DataManager:
    """Writes and reads the legacy torch cache.

    Layout: `tensor[c, t, i, j] == values[vector=c, time=t, x=i, y=j]` (H is x, W is y); scalar fields have C = 1.

    Args:
        cache_dir: Folder of the `sim_XXXXXX.pt` files.
        channels: Field name -> channel names, for fields whose channels the shape cannot name (see `validate_legacy`).
        cast_float32: `load` for training accepts float16 and float64 tensors and casts them to float32.
    """

    def __init__(self, cache_dir: Path, channels: Mapping[str, Sequence[str]] | None = None, *,
                 cast_float32: bool = False):
        self.cache_dir = Path(cache_dir)
        self.channels = {name: tuple(names) for name, names in (channels or {}).items()}
        self.cast_float32 = cast_float32

    def get_cached_path(self, sim_index: int) -> Path:
        return self.cache_dir / f"sim_{sim_index:06d}.pt"

    @staticmethod
    def field_to_tensor(field) -> tuple[torch.Tensor, list[str]]:
        """A PhiFlow field with dims (time, *spatial, [vector]) as a torch tensor `[C, T, *spatial]` and its channel names.

        Returns:
            tensor: float32, contiguous.
            channels: The `vector` item names, `[]` for a scalar field.
        """
        values = field.values
        spatial = values.shape.spatial.names
        if values.shape.channel:
            channels = list(values.shape.channel.item_names[0])
            native = values.native(['vector', 'time', *spatial])
        else:
            channels = []
            native = values.native(['time', *spatial])[None]
        return native.to(torch.float32).contiguous().clone(), channels

    def save_cache(self, sim_index: int, tensor_data: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
        """Writes one sim's cache atomically; equal data gives equal bytes."""
        path = self.get_cached_path(sim_index)
        # Saving to a file object: torch.save(path) names the archive after the file, here a random temporary name.
        with atomic_path(path, '.pt') as tmp, open(tmp, 'wb') as f:
            torch.save(_interned({'tensor_data': dict(tensor_data), 'metadata': dict(metadata)}), f)
        return path

    def load_cache(self, sim_index: int, *, allow_any_float: bool = False) -> dict[str, Any]:
        """Loads and validates one sim's cache (see `load`); returns the payload as stored."""
        return self.load(sim_index, allow_any_float=allow_any_float)[0]

    def load(self, sim_index: int, *, allow_any_float: bool = False) -> tuple[dict[str, Any], LegacyLayout]:
        """Loads and validates one sim's cache with `weights_only=True` (no code from the file is run); torch tensors
        and numpy scalars and arrays (`NUMPY_VALUES`) in its metadata are read as the Python values they hold
        (`.tolist()`: a number as `phiml.math.load` returns a stored scalar, an array as nested lists), any other
        object but tensors and plain containers is refused.

        Args:
            sim_index: Which sim.
            allow_any_float: Accept every floating dtype and keep it (for migration); for training, a cache must be
                float32, or is cast to it with `cast_float32`.

        Raises:
            CacheError: missing, unreadable or unsafe file, or a tensor that is not `[C, T, *spatial]`.

        Returns:
            The payload as stored, and the layout read from its shapes.
        """
        path = self.get_cached_path(sim_index)
        if not path.is_file():
            raise CacheError(f"{path}: cache file missing (expected the legacy cache of sim {sim_index})")
        if not _torch_file(path):
            raise CacheError(f"{path}: not a readable torch file (expected the zip archive that torch.save writes, or "
                             f"its format before torch 1.6; {path.stat().st_size} bytes, empty or truncated?)")
        try:
            with torch.serialization.safe_globals(NUMPY_VALUES):
                data = torch.load(path, weights_only=True, map_location='cpu')
        except pickle.UnpicklingError as err:
            text = ' '.join(str(err).split())  # torch's reason: a global it would import, or a type it would build
            reason = text[text.find('WeightsUnpickler error:'):].split(' Check the documentation')[0] \
                if 'WeightsUnpickler error:' in text else 'unsafe pickle'
            raise CacheError(f"{path}: refused to load, the file holds objects other than tensors, plain containers and "
                             f"numpy values ({reason[:200]})") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
            reason = str(err).splitlines()[0][:200] if str(err).strip() else f"cut short or corrupt: {type(err).__name__}"
            raise CacheError(f"{path}: not a readable torch file ({reason})") from None
        except (LookupError, TypeError, AssertionError, struct.error) as err:  # torch's unpickler, IndexError and KeyError too
            raise CacheError(f"{path}: not a readable torch file (cut short or corrupt: {type(err).__name__}: "
                             f"{str(err)[:200]})") from None
        if isinstance(data, dict) and 'metadata' in data:
            try:
                data['metadata'] = _python_values(data['metadata'])
            except (RuntimeError, NotImplementedError) as err:  # a sparse or data-less tensor has no `.tolist()`
                raise CacheError(f"{path}: metadata holds a tensor without plain values ({str(err)[:200]}); expected "
                                 f"numbers, strings, lists, dense tensors or numpy values") from None
        layout = validate_legacy(path, data, allow_any_float=allow_any_float or self.cast_float32, channels=self.channels)
        if self.cast_float32 and not allow_any_float:
            data['tensor_data'] = {name: t.to(torch.float32) for name, t in data['tensor_data'].items()}
        return data, layout


# torch's format before 1.6 (and `_use_new_zipfile_serialization=False`) starts with a pickled magic number (LONG1)
_OLD_FORMAT = b'\x8a\x0a' + torch.serialization.MAGIC_NUMBER.to_bytes(10, 'little')


def _torch_file(path: Path) -> bool:
    """Whether `path` starts as a file `torch.save` writes: a zip archive, or the older format."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, 'rb') as f:
        head = f.read(2 + len(_OLD_FORMAT))
    return head[:1] == pickle.PROTO and head[2:] == _OLD_FORMAT


def _python_values(value: Any) -> Any:
    """`value` with every torch tensor and numpy scalar or array in its dicts, lists and tuples replaced by the Python
    value it holds."""
    return _map_leaves(value, lambda x: x.tolist() if isinstance(x, (np.generic, np.ndarray, torch.Tensor)) else x)


SPATIAL = ('x', 'y', 'z')


@dataclass(frozen=True)
class LegacyLayout:
    """What the tensors of one `.pt` file are, read from their shapes (our own metadata keys only confirm it).

    Attributes:
        n_frames: T of `[C, T, *spatial]`.
        spatial_dims: `('x',)`, `('x', 'y')` or `('x', 'y', 'z')`, from the number of spatial axes.
        resolution: Cells along each spatial dim.
        channels: Field name -> `vector` item names, `()` for a scalar field.
    """
    n_frames: int
    spatial_dims: tuple[str, ...]
    resolution: tuple[int, ...]
    channels: dict[str, tuple[str, ...]]


def validate_legacy(path: Path, data: Any, *, allow_any_float: bool = False,
                    channels: Mapping[str, Sequence[str]] | None = None) -> LegacyLayout:
    """Checks one loaded `.pt` payload against the legacy layout and reads its layout from the tensors' shapes.

    A field is `[C, T, *spatial]` with 1 to 3 spatial axes named x, y, z. Its channel names are, in this order: the
    ones given in `channels`, the file's own `field_channels` metadata, the spatial names when C equals the spatial
    rank, none (a scalar field) when C = 1; any other C must be named by the user. The metadata is free-form;
    `n_frames`, `spatial_dims` and `field_channels`, where present, must agree with the tensors.

    Args:
        path: Named in errors.
        data: The loaded payload.
        allow_any_float: Accept every floating dtype, not only float32.
        channels: Field name -> channel names, given by the user (`--channels FIELD=a,b,c`, `data.channels`).

    Raises:
        CacheError: naming `path`, what was found and what was expected.
    """
    if not isinstance(data, dict) or 'tensor_data' not in data or 'metadata' not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CacheError(f"{path}: expected a dict with keys 'tensor_data' and 'metadata', found {found}")
    meta, tensors = data['metadata'], data['tensor_data']
    if not isinstance(meta, dict):
        raise CacheError(f"{path}: metadata is a {type(meta).__name__}, expected a dict")
    hints = meta.get('field_channels') if isinstance(meta.get('field_channels'), dict) else {}
    if hints and isinstance(tensors, dict) and sorted(hints) != sorted(tensors):
        raise CacheError(f"{path}: metadata field_channels names the fields {sorted(hints)}, tensor_data holds "
                         f"{sorted(tensors)}")
    if not isinstance(tensors, dict) or not tensors or not all(isinstance(k, str) for k in tensors):
        found = sorted(tensors) if isinstance(tensors, dict) else type(tensors).__name__
        raise CacheError(f"{path}: tensor_data holds {found!r}, expected a dict of field name -> tensor [C, T, *spatial]")
    shapes = {}
    for name, t in sorted(tensors.items()):
        if not isinstance(t, torch.Tensor) or not 3 <= t.ndim <= 5:
            found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CacheError(f"{path}: field {name!r} has shape {found}, expected [C, T, x[, y[, z]]] (3 to 5 dims)")
        if not (t.is_floating_point() if allow_any_float else t.dtype == torch.float32):
            raise CacheError(f"{path}: field {name!r} has dtype {t.dtype}, expected " + (
                'a floating dtype' if allow_any_float else f"torch.float32 for training ({CAST_HINT})"))
        shapes[name] = tuple(t.shape)
    first = min(shapes)
    for name, shape in shapes.items():
        if shape[1:] != shapes[first][1:]:
            raise CacheError(f"{path}: field {name!r} has shape {shape}, field {first!r} {shapes[first]}; expected the "
                             f"same frames and resolution [_, T, *spatial] for every field")
    n_frames, resolution = shapes[first][1], shapes[first][2:]
    spatial_dims = SPATIAL[:len(resolution)]
    if 'n_frames' in meta and meta['n_frames'] != n_frames:
        raise CacheError(f"{path}: metadata n_frames={meta['n_frames']!r}, the tensors hold T={n_frames} frames")
    if 'spatial_dims' in meta and tuple(meta['spatial_dims'] or ()) != spatial_dims:
        raise CacheError(f"{path}: metadata spatial_dims={meta['spatial_dims']!r}, the tensors have "
                         f"{len(resolution)} spatial axes {list(spatial_dims)}")
    named = {name: _channel_names(path, name, shapes[name][0], spatial_dims, (channels or {}).get(name, hints.get(name)),
                                  'given' if name in (channels or {}) else 'metadata field_channels')
             for name in shapes}
    return LegacyLayout(n_frames, spatial_dims, resolution, named)


def _channel_names(path: Path, name: str, count: int, spatial_dims: tuple[str, ...], given: Sequence[str] | None,
                   source: str) -> tuple[str, ...]:
    if given is not None:
        given = tuple(given)
        if given == () and count == 1:
            return ()
        if len(given) != count or len(set(given)) != count or not all(isinstance(c, str) and c for c in given):
            raise CacheError(f"{path}: field {name!r} has C={count} channels, the {source} channel names are "
                             f"{list(given)}; expected {count} distinct names (or none for a scalar field, C=1)")
        return given
    if count == len(spatial_dims):
        return spatial_dims
    if count == 1:
        return ()
    raise CacheError(f"{path}: field {name!r} has C={count} channels: only C={len(spatial_dims)} (one per spatial dim "
                     f"{list(spatial_dims)}) or C=1 (a scalar field) are named from the shape; name them with "
                     f"--channels {name}=a,b,... or the config key data.channels.{name}")
