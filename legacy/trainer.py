"""The legacy trainer: converts every torch batch with `torch_to_phiml`, then trains the PhiML model."""
from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

import torch

from harness import model
from .convert import convert_batch

logger = logging.getLogger(__name__)


class SyntheticTrainer:
    """Trains `network` on batches of a legacy `DataLoader`.

    Args:
        network: The shared PhiML (torch) network.
        optimizer: Its optimizer.
        field_order: Field names in the order of the dataset's tensors.
        field_channels: Field name -> `vector` item names (`[]` for scalar fields).
        spatial_dims: Names of the spatial dims.
    """

    def __init__(self, network, optimizer, field_order: Sequence[str], field_channels: Mapping[str, Sequence[str]],
                 spatial_dims: Sequence[str]):
        self.network = network
        self.optimizer = optimizer
        self.field_order = list(field_order)
        self.field_channels = dict(field_channels)
        self.spatial_dims = tuple(spatial_dims)

    def convert_batch(self, raw: Sequence[torch.Tensor]) -> dict:
        """A DataLoader batch `(initial_f0, targets_f0, initial_f1, ...)` as the PhiML batch of the data contract."""
        return convert_batch(raw, self.field_order, self.field_channels, self.spatial_dims)

    def train_batch(self, raw: Sequence[torch.Tensor]) -> float:
        return model.train_step(self.network, self.optimizer, self.convert_batch(raw))

    def train(self, data_source: Iterable, num_epochs: int = 1) -> list[float]:
        """Trains for `num_epochs` passes over `data_source` (a DataLoader; a sampler with `set_epoch` is told each
        epoch); returns the loss of every step."""
        set_epoch = getattr(getattr(data_source, 'sampler', None), 'set_epoch', None)
        losses = []
        for epoch in range(num_epochs):
            if set_epoch is not None:
                set_epoch(epoch)
            epoch_losses = [self.train_batch(raw) for raw in data_source]
            logger.debug("legacy epoch %d: mean loss %.6g", epoch, sum(epoch_losses) / max(1, len(epoch_losses)))
            losses += epoch_losses
        return losses
