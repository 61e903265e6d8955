"""The native trainer: PhiML batches go straight into `phiml.nn.update_weights`, with no conversion layer."""
from __future__ import annotations

import logging
from typing import Iterable

from harness import model
from .dataset import PhiMLDataset

logger = logging.getLogger(__name__)


class PhiMLSyntheticTrainer:
    """Trains the shared network on a `PhiMLDataset`.

    Args:
        network: The shared PhiML (torch) network.
        optimizer: Its optimizer.
        batch_size: Windows per batch of `train` (not needed by `train_batches`, which takes ready batches).
        seed: Seed of the dataset's shuffling in `train` (epoch `e` uses `(seed, e)`).
    """

    def __init__(self, network, optimizer, batch_size: int | None = None, *, seed: int = 0):
        self.network = network
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.seed = seed

    def train(self, dataset: PhiMLDataset, num_epochs: int) -> list[float]:
        """Trains for `num_epochs` shuffled epochs; returns the loss of every step."""
        if self.batch_size is None or self.batch_size < 1:
            raise ValueError(f"`batch_size` (={self.batch_size}) must be >= 1 to train on a dataset")
        losses = []
        for epoch in range(num_epochs):
            epoch_losses = self.train_batches(dataset.iterate_batches(self.batch_size, True, seed=self.seed, epoch=epoch))
            logger.debug("native epoch %d: mean loss %.6g", epoch, sum(epoch_losses) / max(1, len(epoch_losses)))
            losses += epoch_losses
        return losses

    def train_batches(self, batches: Iterable[dict]) -> list[float]:
        """One step per batch; each batch is let go before the next is built (`map` keeps no reference to it, where a
        `for` loop's variable would), so a data set holds one batch at a time, not two."""
        return list(map(self._train_batch, batches))

    def _train_batch(self, batch: dict) -> float:
        return model.train_step(self.network, self.optimizer, batch)
