"""The PhiML-native pipeline behind the harness's `Pipeline` interface, and its trainer: PhiML batches go straight into
`phiml.nn.update_weights`, with no conversion layer."""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

from harness import model
from harness.pipeline import AbstractPipeline, Batch, BatchPlan, WindowKey
from phiml.math import Tensor

from .data_manager import PhiMLDataManager, field_names, validate_native
from .dataset import STACK_BYTES, PhiMLDataset
from .npz import clear_caches

logger = logging.getLogger(__name__)


class NativePipeline(AbstractPipeline):
    """`.npz` cache -> `PhiMLDataset` -> PhiML batches; `to_phiml` is the identity. `memory`, `memory_budget`: how the
    dataset holds the cache (see `PhiMLDataset`)."""
    name = 'phiml'
    file_suffix = '.npz'
    memory: ClassVar[str] = 'auto'  # how datasets hold the cache, unless `__init__` is told (see `configured`)
    memory_budget: ClassVar[float] = 0.5
    cast_float32: ClassVar[bool] = False  # open float16/float64 caches cast to float32
    gather_method = f"np.take of the windows' frame rows (windows of {STACK_BYTES >> 20} MiB and more: torch.stack)"

    def __init__(self, cache_dir: Path, rollout_steps: int, *, memory: str | None = None,
                 memory_budget: float | None = None):
        super().__init__(cache_dir, rollout_steps)
        self.manager = PhiMLDataManager(self.cache_dir)
        self.memory = self.memory if memory is None else memory
        self.memory_budget = self.memory_budget if memory_budget is None else memory_budget
        self.dataset: PhiMLDataset | None = None

    def write_cache(self, sim: int, fields: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
        data = {name: self.manager.field_to_phiml_tensor(field, name) for name, field in fields.items()}
        return self.manager.save_cache(sim, {**data, 'metadata': dict(metadata)})

    def read_fields(self, sim: int) -> tuple[dict[str, Tensor], dict]:
        data = self.manager.load_cache(sim, allow_any_float=True)
        return {name: data[name] for name in field_names(data)}, dict(data['metadata'])

    def write_fields(self, sim: int, fields: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
        data = {**fields, 'metadata': dict(metadata)}
        validate_native(self.manager.get_cached_path(sim), data, allow_any_float=True)  # before anything is written
        return self.manager.save_cache(sim, data)

    @classmethod
    def forget_read_caches(cls) -> None:
        clear_caches()

    def open(self, sims: Sequence[int]) -> None:
        self.dataset = PhiMLDataset(self.manager, sims, self.rollout_steps, memory=self.memory,
                                    memory_budget=self.memory_budget, cast_float32=self.cast_float32)

    def window_keys(self) -> list[WindowKey]:
        return self._require_open().window_keys()

    def load_batches(self, plan: BatchPlan) -> Iterator[Batch]:
        return self._require_open().iterate_plan(plan)

    def to_phiml(self, raw: Batch) -> Batch:
        return raw

    def train(self, plans: Sequence[BatchPlan], network, optimizer) -> list[float]:
        trainer = PhiMLSyntheticTrainer(network, optimizer)  # batches come from the plan
        return [loss for plan in plans for loss in trainer.train_batches(self.load_batches(plan))]

    def everyday_epochs(self, batch_size: int, *, seed: int, epochs: int, prefetch: bool = False
                        ) -> Iterator[Iterator[Batch]]:
        dataset = self._require_open()
        return (dataset.iterate_batches(batch_size, True, seed=seed, epoch=e, prefetch=prefetch) for e in range(epochs))

    def everyday_train(self, network, optimizer, batch_size: int, *, seed: int, epochs: int) -> list[float]:
        return PhiMLSyntheticTrainer(network, optimizer, batch_size, seed=seed).train(self._require_open(), epochs)

    def loader_variants(self) -> list[dict]:
        return [{'prefetch': False}, {'prefetch': True}]

    def _require_open(self) -> PhiMLDataset:
        if self.dataset is None:
            raise RuntimeError("NativePipeline.open(sims) must be called before loading batches")
        return self.dataset

    @classmethod
    def configured(cls, config) -> type['NativePipeline']:
        """A subclass holding its datasets as `data.memory` / `data.memory_budget` say, opening float16/float64 caches
        cast to float32 with `data.cast_float32`; `cls` itself where these are its defaults."""
        return cls.with_options(**{key: getattr(config.data, key) for key in ('memory', 'memory_budget', 'cast_float32')})


class PhiMLSyntheticTrainer:
    """Trains the shared network (with its optimizer) on a `PhiMLDataset`: `train` draws `batch_size` windows per
    batch, shuffled by `(seed, epoch)`; `train_batches` takes ready batches."""

    def __init__(self, network, optimizer, batch_size: int | None = None, *, seed: int = 0):
        self.network, self.optimizer, self.batch_size, self.seed = network, optimizer, batch_size, seed

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
        return list(map(functools.partial(model.train_step, self.network, self.optimizer), batches))
