"""The legacy dataset: every sliding window materialised into one `torch.utils.data.TensorDataset`."""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler, TensorDataset

from harness.pipeline import WindowKey


def build_window_dataset(tensor_data: Mapping[int, Mapping[str, torch.Tensor]], rollout_steps: int
                         ) -> tuple[TensorDataset, list[WindowKey], list[str]]:
    """Cuts each sim's `[C, T, *spatial]` tensors into windows and stacks them.

    Args:
        tensor_data: sim index -> field name -> `[C, T, *spatial]`.
        rollout_steps: Target frames per window.

    Returns:
        dataset: Tensors in the order of `field_order`, two per field: initial states `[N, C, *spatial]` and targets
            `[N, R, C, *spatial]`.
        keys: The window key of each dataset index.
        field_order: Field names, sorted.
    """
    field_order = sorted(next(iter(tensor_data.values())))
    keys: list[WindowKey] = []
    initial = {name: [] for name in field_order}
    targets = {name: [] for name in field_order}
    for sim in sorted(tensor_data):
        n_frames = tensor_data[sim][field_order[0]].shape[1]
        for t0 in range(n_frames - rollout_steps):
            keys.append(WindowKey(sim, t0))
            for name in field_order:
                data = tensor_data[sim][name]
                initial[name].append(data[:, t0])
                targets[name].append(data[:, t0 + 1:t0 + 1 + rollout_steps].transpose(0, 1))
    tensors: list[torch.Tensor] = []
    for name in field_order:
        tensors += [torch.stack(initial[name]), torch.stack(targets[name])]
    return TensorDataset(*tensors), keys, field_order


def plan_indices(plan_batches: Sequence[Sequence[WindowKey]], index_of: Mapping[WindowKey, int]) -> list[list[int]]:
    """Dataset indices of each batch of a plan, for a `DataLoader(batch_sampler=...)`."""
    try:
        return [[index_of[key] for key in batch] for batch in plan_batches]
    except KeyError as err:
        raise KeyError(f"window {err.args[0]} is not in the opened legacy dataset") from None


class EpochShuffle(Sampler[int]):
    """A shuffled order of `n` dataset indices drawn from `(seed, epoch)` alone; the trainer calls `set_epoch` before each
    epoch (as with torch's `DistributedSampler`).

    `DataLoader(shuffle=True, generator=g)` would draw its order from `g`, which also gives the worker processes their
    base seed once per iterator: with `persistent_workers=True` later epochs draw one number less and are served in
    another order than with `num_workers=0`.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0):
        self.n, self.seed, self.epoch = n, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n
