"""The PhiML-native pipeline behind the harness's `Pipeline` interface."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

from harness.pipeline import AbstractPipeline, Batch, BatchPlan, FieldLayout, WindowKey
from phiml.math import Tensor

from .data_manager import PhiMLDataManager, validate_native
from .dataset import PhiMLDataset
from .trainer import PhiMLSyntheticTrainer


class NativePipeline(AbstractPipeline):
    """`.npz` cache -> `PhiMLDataset` -> PhiML batches; `to_phiml` is the identity.

    Args:
        memory, memory_budget: How the dataset holds the cache (see `PhiMLDataset`).
    """
    name = 'phiml'
    file_suffix = '.npz'
    cast_float32: ClassVar[bool] = False  # open float16/float64 caches cast to float32 (see `configured`)

    def __init__(self, cache_dir: Path, rollout_steps: int, *, memory: str = 'auto', memory_budget: float = 0.5):
        super().__init__(cache_dir, rollout_steps)
        self.manager = PhiMLDataManager(self.cache_dir)
        self.memory, self.memory_budget = memory, memory_budget
        self.dataset: PhiMLDataset | None = None

    def write_cache(self, sim: int, fields: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
        data = {name: self.manager.field_to_phiml_tensor(field, name) for name, field in fields.items()}
        return self.manager.save_cache(sim, {**data, 'metadata': dict(metadata)})

    def describe_file(self, sim: int) -> tuple[dict[str, FieldLayout], dict]:
        data = self.manager.load_cache(sim, allow_any_float=True)
        fields = {}
        for name in data['metadata']['fields']:
            shape, dtype = data[name].shape, data[name].dtype
            items = shape.get_item_names('vector') if 'vector' in shape else None
            fields[name] = FieldLayout(shape.names, shape.sizes, f"{dtype.kind.__name__}{dtype.bits}", tuple(items or ()))
        return fields, dict(data['metadata'])

    def read_fields(self, sim: int) -> tuple[dict[str, Tensor], dict]:
        data = self.manager.load_cache(sim, allow_any_float=True)
        return {name: data[name] for name in data['metadata']['fields']}, dict(data['metadata'])

    def write_fields(self, sim: int, fields: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
        data = {**fields, 'metadata': dict(metadata)}
        validate_native(self.manager.get_cached_path(sim), data, allow_any_float=True)  # before anything is written
        return self.manager.save_cache(sim, data)

    @classmethod
    def forget_read_caches(cls) -> None:
        from .npz import clear_caches
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
        """With `data.memory` / `data.memory_budget`: a subclass whose datasets are loaded or mapped so; with
        `data.cast_float32`, one that opens float16/float64 caches cast to float32."""
        options = {'memory': config.data.memory, 'memory_budget': config.data.memory_budget}
        attributes = {} if options == {'memory': 'auto', 'memory_budget': 0.5} else \
            {'__init__': functools.partialmethod(cls.__init__, **options)}
        attributes.update({'cast_float32': True} if config.data.cast_float32 else {})
        if not attributes:
            return cls
        return type(cls.__name__, (cls,), {**attributes, '__module__': cls.__module__, '__qualname__': cls.__qualname__})
