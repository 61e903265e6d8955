"""The legacy `.pt` cache: one file per simulation, `{'tensor_data': {field: Tensor[C, T, *spatial]}, 'metadata': {...}}`."""
from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from harness.atomic import atomic_path
from harness.errors import CacheError

logger = logging.getLogger(__name__)
REQUIRED_METADATA = ('sim_index', 'n_frames', 'spatial_dims', 'field_channels')


class DataManager:
    """Writes and reads the legacy torch cache.

    Layout: `tensor[c, t, i, j] == values[vector=c, time=t, x=i, y=j]` (H is x, W is y); scalar fields have C = 1.

    Args:
        cache_dir: Folder of the `sim_XXXXXX.pt` files.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)

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
            torch.save({'tensor_data': dict(tensor_data), 'metadata': dict(metadata)}, f)
        return path

    def load_cache(self, sim_index: int, *, allow_any_float: bool = False) -> dict[str, Any]:
        """Loads and validates one sim's cache with `weights_only=True` (no code from the file is run).

        Args:
            sim_index: Which sim.
            allow_any_float: Accept every floating dtype (for migration); training caches must be float32.

        Raises:
            CacheError: missing, unreadable or unsafe file, missing metadata, or a tensor that is not `[C, T, *spatial]`.
        """
        path = self.get_cached_path(sim_index)
        if not path.is_file():
            raise CacheError(f"{path}: cache file missing (expected the legacy cache of sim {sim_index})")
        if not zipfile.is_zipfile(path):
            raise CacheError(f"{path}: not a readable torch file (expected the zip archive that torch.save writes; "
                             f"{path.stat().st_size} bytes, empty or truncated?)")
        try:
            data = torch.load(path, weights_only=True, map_location='cpu')
        except pickle.UnpicklingError as err:
            reason = next((line.strip() for line in str(err).splitlines() if 'Unsupported global' in line), 'unsafe pickle')
            raise CacheError(f"{path}: refused to load, the file holds objects other than tensors and plain containers "
                             f"({reason[:200]})") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
            raise CacheError(f"{path}: not a readable torch file ({str(err).splitlines()[0][:200]})") from None
        validate_legacy(path, data, allow_any_float=allow_any_float)
        return data


def validate_legacy(path: Path, data: Any, *, allow_any_float: bool = False) -> None:
    """Checks one loaded `.pt` payload against the legacy layout.

    Args:
        path: Named in errors.
        data: The loaded payload.
        allow_any_float: Accept every floating dtype, not only float32.

    Raises:
        CacheError: naming `path`, what was found and what was expected.
    """
    if not isinstance(data, dict) or 'tensor_data' not in data or 'metadata' not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CacheError(f"{path}: expected a dict with keys 'tensor_data' and 'metadata', found {found}")
    meta, tensors = data['metadata'], data['tensor_data']
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise CacheError(f"{path}: metadata lacks {missing} (expected keys {list(REQUIRED_METADATA)})")
    expected_fields = sorted(meta['field_channels'])
    if not isinstance(tensors, dict) or sorted(tensors) != expected_fields:
        raise CacheError(f"{path}: tensor_data holds fields {sorted(tensors) if isinstance(tensors, dict) else tensors!r}, "
                         f"expected {expected_fields}")
    n_spatial = len(meta['spatial_dims'])
    for name, t in tensors.items():
        channels = max(1, len(meta['field_channels'][name]))
        if not isinstance(t, torch.Tensor) or t.ndim != 2 + n_spatial:
            found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CacheError(f"{path}: field {name!r} has shape {found}, expected [C, T, {', '.join(meta['spatial_dims'])}] "
                             f"({2 + n_spatial} dims)")
        if t.shape[0] != channels or t.shape[1] != meta['n_frames']:
            raise CacheError(f"{path}: field {name!r} has shape {tuple(t.shape)}, expected C={channels} channels first "
                             f"and T={meta['n_frames']} frames second ([C, T, {', '.join(meta['spatial_dims'])}])")
        if not (t.is_floating_point() if allow_any_float else t.dtype == torch.float32):
            raise CacheError(f"{path}: field {name!r} has dtype {t.dtype}, expected "
                             f"{'a floating dtype' if allow_any_float else 'torch.float32'}")
