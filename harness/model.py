"""The shared model: one network factory and one rollout loss, used by both trainers so that they train the same thing.

The network predicts the next frame from the current one; the loss is the mean over rollout steps of the L2 error of
an autoregressive rollout, averaged over the batch.
"""
from __future__ import annotations

import copy
from typing import Mapping, Union

import torch
from phiml import math, nn
from phiml.math import Tensor, channel

from harness.config import ModelConfig

FieldTensors = Union[Tensor, Mapping[str, Tensor]]


def make_network(config: ModelConfig, channels: int, spatial_rank: int, *, seed: int) -> torch.nn.Module:
    """Builds the network with weights drawn from `seed` (without touching torch's global RNG).

    Args:
        config: Architecture.
        channels: Input = output channels: the summed channel counts of all fields (1 per scalar field).
        spatial_rank: 1, 2 or 3.
        seed: Seed of the initial weights.
    """
    nn.use('torch')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.kind == 'u_net':
            net = nn.u_net(channels, channels, levels=config.levels, filters=config.filters, batch_norm=False,
                           in_spatial=spatial_rank, periodic=True)
        else:
            net = nn.conv_net(channels, channels, layers=[config.filters] * config.levels, batch_norm=False,
                              in_spatial=spatial_rank, periodic=True)
    return net


def clone_network(net: torch.nn.Module) -> torch.nn.Module:
    """An independent copy with bitwise identical weights, so both trainers start from the same point."""
    return copy.deepcopy(net)


def make_optimizer(net: torch.nn.Module, learning_rate: float):
    return nn.adam(net, learning_rate)


def predict(net: torch.nn.Module, state: FieldTensors) -> FieldTensors:
    """One step of the network: the next frame of every field."""
    if isinstance(state, Tensor):
        return math.native_call(net, state, channel_dim=state.shape.channel or 'vector')
    names = sorted(state)
    packed = [_as_channels(state[n]) for n in names]
    out = math.native_call(net, math.concat(packed, 'c'), channel_dim='c')
    result, start = {}, 0
    for name, part in zip(names, packed):
        size = part.shape.get_size('c')
        piece = out.c[start:start + size]
        start += size
        result[name] = piece.c[0] if not state[name].shape.channel else math.rename_dims(piece, 'c', state[name].shape.channel)
    return result


def _as_channels(t: Tensor) -> Tensor:
    if not t.shape.channel:
        return math.expand(t, channel(c=1))
    return math.pack_dims(t, t.shape.channel, channel('c'))


def rollout_loss(net: torch.nn.Module, initial_state: FieldTensors, targets: FieldTensors) -> Tensor:
    """Mean over rollout steps of the squared L2 error (mean over cells and components) of an autoregressive rollout,
    averaged over `batch`.

    Args:
        initial_state: (batch, *spatial, [vector]) per field.
        targets: (batch, time, *spatial, [vector]) per field; `time` has `rollout_steps` entries.

    Returns:
        Scalar loss tensor.
    """
    first = targets if isinstance(targets, Tensor) else targets[sorted(targets)[0]]
    steps = first.shape.get_size('time')
    state, total = initial_state, 0
    for step in range(steps):
        state = predict(net, state)
        target = math.slice(targets, {'time': step})
        error = _mse(state - target) if isinstance(state, Tensor) else sum(_mse(state[n] - target[n]) for n in sorted(state))
        total = total + error
    return math.mean(total / steps, 'batch')


def _mse(difference: Tensor) -> Tensor:
    return math.mean(difference ** 2, difference.shape.non_batch)


def evaluate(net: torch.nn.Module, batch: dict) -> float:
    """The rollout loss of `batch` without a weight update (validation)."""
    with torch.no_grad():
        return rollout_loss(net, batch['initial_state'], batch['targets']).native().item()


def train_step(net: torch.nn.Module, optimizer, batch: dict) -> float:
    """One `phiml.nn.update_weights` step on `batch`; returns the loss before the update."""
    loss = nn.update_weights(net, optimizer, rollout_loss, net, batch['initial_state'], batch['targets'])
    return loss.native().detach().item()
