"""The legacy conversion layer between torch batches and PhiML tensors."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from phiml import math
from phiml.math import Tensor, batch, channel, spatial


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
