"""The legacy conversion layer between torch batches and PhiML tensors."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from phiml import math
from phiml.math import Tensor, batch, channel, spatial

from harness.errors import CacheError


def torch_to_phiml(tensor: torch.Tensor, spatial_dims: Sequence[str], channels: Sequence[str], has_time: bool) -> Tensor:
    """Wraps a legacy batch tensor as a PhiML tensor with canonical dim order (batch, [time], *spatial, [vector]).

    Args:
        tensor: `[B, C, *spatial]`, or `[B, R, C, *spatial]` when `has_time`.
        spatial_dims: Names of the spatial dims, e.g. `('x', 'y')`.
        channels: Item names of `vector`; empty for a scalar field (C = 1 is dropped).
        has_time: Whether dim 1 is the rollout time.
    """
    lead = 2 if has_time else 1
    n_spatial = len(spatial_dims)
    order = list(range(lead)) + list(range(lead + 1, lead + 1 + n_spatial)) + [lead]
    native = tensor.permute(*order)
    dims = [batch('batch')] + ([batch('time')] if has_time else []) + [spatial(*spatial_dims)]
    if channels:
        return math.wrap(native, *dims, channel(vector=','.join(channels)))
    return math.wrap(native[..., 0], *dims)


def phiml_to_torch(tensor: Tensor, has_time: bool) -> torch.Tensor:
    """The inverse of `torch_to_phiml`: `[B, ([R,] C, *spatial)]` with C = 1 for scalar fields."""
    lead = ['batch', 'time'] if has_time else ['batch']
    spatial_names = tensor.shape.spatial.names
    if tensor.shape.channel:
        return tensor.native([*lead, 'vector', *spatial_names])
    return tensor.native([*lead, *spatial_names]).unsqueeze(len(lead))


def convert_batch(raw: Sequence[torch.Tensor], field_order: Sequence[str], field_channels: Mapping[str, Sequence[str]],
                  spatial_dims: Sequence[str]) -> dict:
    """A DataLoader batch `(initial_f0, targets_f0, initial_f1, ...)` as the PhiML batch of the data contract."""
    initial, targets = {}, {}
    for i, name in enumerate(field_order):
        channels = field_channels[name]
        initial[name] = torch_to_phiml(raw[2 * i], spatial_dims, channels, has_time=False)
        targets[name] = torch_to_phiml(raw[2 * i + 1], spatial_dims, channels, has_time=True)
    if len(field_order) == 1:
        name = field_order[0]
        return {'initial_state': initial[name], 'targets': targets[name]}
    return {'initial_state': initial, 'targets': targets}


NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def to_canonical(path, name: str, tensor: torch.Tensor, spatial_dims: Sequence[str], channels: Sequence[str]) -> Tensor:
    """One stored field `[C, T, *spatial]` as the canonical `Tensor(time, *spatial, [vector])`, values and dtype kept
    (numpy-backed).

    Raises:
        CacheError: a dtype numpy cannot hold (bfloat16), naming `path` and the field.
    """
    if tensor.dtype not in NUMPY_FLOATS:
        raise CacheError(f"{path}: field {name!r} has dtype {tensor.dtype}, expected float16, float32 or float64")
    values = tensor.detach().cpu().numpy()
    dims = [batch(time=values.shape[1]), spatial(**dict(zip(spatial_dims, values.shape[2:])))]
    if channels:
        return math.wrap(np.ascontiguousarray(np.moveaxis(values, 0, -1)), *dims, channel(vector=tuple(channels)))
    return math.wrap(np.ascontiguousarray(values[0]), *dims)


def from_canonical(values: Tensor) -> tuple[torch.Tensor, list[str]]:
    """A canonical `Tensor(time, *spatial, [vector])` as the stored `[C, T, *spatial]` torch tensor (dtype kept) and its
    channel names (`[]` for a scalar field)."""
    spatial_names = values.shape.spatial.names
    if values.shape.channel:
        with math.precision(values.dtype.bits):
            native = values.numpy(['vector', 'time', *spatial_names])
        return torch.from_numpy(np.ascontiguousarray(native)), list(values.shape.get_item_names('vector'))
    with math.precision(values.dtype.bits):
        native = values.numpy(['time', *spatial_names])[None]
    return torch.from_numpy(np.ascontiguousarray(native)), []
