"""The legacy pipeline behind the harness's `Pipeline` interface."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import torch
from phiml.math import Tensor
from torch.utils.data import DataLoader

from harness.errors import CacheError
from harness.pipeline import AbstractPipeline, Batch, BatchPlan, FieldLayout, WindowKey
from .convert import convert_batch, from_canonical, to_canonical
from .data_manager import DataManager
from .dataset import EpochShuffle, build_window_dataset, plan_indices
from .trainer import SyntheticTrainer


class LegacyPipeline(AbstractPipeline):
    """`.pt` cache -> `TensorDataset` of windows -> `DataLoader` -> `torch_to_phiml`."""
    name = 'legacy'
    file_suffix = '.pt'

    channels: ClassVar[dict[str, tuple[str, ...]]] = {}  # names of channels the shape cannot name (see `configured`)
    cast_float32: ClassVar[bool] = False  # open float16/float64 caches cast to float32 (see `configured`)

    def __init__(self, cache_dir: Path, rollout_steps: int):
        super().__init__(cache_dir, rollout_steps)
        self.manager = DataManager(self.cache_dir, self.channels, cast_float32=self.cast_float32)
        self.dataset = None
        self.keys: list[WindowKey] = []
        self.field_order: list[str] = []
        self.field_channels: dict[str, list[str]] = {}
        self.spatial_dims: tuple[str, ...] = ()

    def write_cache(self, sim: int, fields: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
        tensor_data, channels = {}, {}
        for name, field in fields.items():
            tensor_data[name], channels[name] = self.manager.field_to_tensor(field)
        spatial = next(iter(fields.values())).values.shape.spatial.names
        return self.manager.save_cache(sim, tensor_data, {**metadata, 'spatial_dims': list(spatial), 'field_channels': channels})

    @classmethod
    def configured(cls, config) -> type['LegacyPipeline']:
        """With `data.channels`: a subclass that names those fields' channels (see `validate_legacy`); with
        `data.cast_float32`, one that opens float16/float64 caches cast to float32."""
        channels = {name: tuple(names) for name, names in config.data.channels.items()}
        return cls.with_options(channels={**cls.channels, **channels},
                                cast_float32=cls.cast_float32 or config.data.cast_float32)

    def describe_file(self, sim: int) -> tuple[dict[str, FieldLayout], dict]:
        data, layout = self.manager.load(sim, allow_any_float=True)
        fields = {name: FieldLayout(('channel', 'time', *layout.spatial_dims), tuple(t.shape),
                                    str(t.dtype).removeprefix('torch.'), layout.channels[name])
                  for name, t in data['tensor_data'].items()}
        return fields, dict(data['metadata'])

    def read_fields(self, sim: int) -> tuple[dict[str, Tensor], dict]:
        data, layout = self.manager.load(sim, allow_any_float=True)
        path = self.manager.get_cached_path(sim)
        fields = {name: to_canonical(path, name, t, layout.spatial_dims, layout.channels[name])
                  for name, t in data['tensor_data'].items()}
        return fields, dict(data['metadata'])

    def write_fields(self, sim: int, fields: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
        tensor_data, channels = {}, {}
        for name, values in fields.items():
            tensor_data[name], channels[name] = from_canonical(values)
        spatial = next(iter(fields.values())).shape.spatial.names
        return self.manager.save_cache(sim, tensor_data, {**metadata, 'spatial_dims': list(spatial),
                                                          'field_channels': channels})

    def open(self, sims: Sequence[int]) -> None:
        if not sims:
            raise CacheError(f"{self.cache_dir}: no sims to open (expected at least one sim index)")
        loaded = {sim: self.manager.load(sim) for sim in sims}
        first_sim = sims[0]
        reference = _signature(*loaded[first_sim])
        for sim, (data, layout) in loaded.items():
            if _signature(data, layout) != reference:
                raise CacheError(f"{self.manager.get_cached_path(sim)}: fields/shape/channels {_signature(data, layout)} "
                                 f"differ from {self.manager.get_cached_path(first_sim).name} {reference}; one cache "
                                 f"must hold sims of one resolution and one set of fields")
        layout = loaded[first_sim][1]
        if layout.n_frames <= self.rollout_steps:
            raise CacheError(f"{self.manager.get_cached_path(first_sim)}: {layout.n_frames} frames per sim, but "
                             f"`rollout_steps` (={self.rollout_steps}) needs more than that")
        self.field_channels = {k: list(v) for k, v in layout.channels.items()}
        self.spatial_dims = layout.spatial_dims
        tensors = {sim: data['tensor_data'] for sim, (data, _) in loaded.items()}
        self.dataset, self.keys, self.field_order = build_window_dataset(tensors, self.rollout_steps)
        self._index = {key: i for i, key in enumerate(self.keys)}

    def window_keys(self) -> list[WindowKey]:
        return list(self.keys)

    def data_loader(self, batch_size: int, shuffle: bool = True, *, seed: int, epoch: int = 0, num_workers: int = 0,
                    persistent_workers: bool = False) -> DataLoader:
        """The everyday loader: shuffled by `EpochShuffle` from `(seed, epoch)` (the trainer sets the epoch)."""
        dataset = self._require_open()
        sampler = EpochShuffle(len(dataset), seed, epoch) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          persistent_workers=persistent_workers, generator=torch.Generator().manual_seed(seed))

    def everyday_epochs(self, batch_size: int, *, seed: int, epochs: int, num_workers: int = 0,
                        persistent_workers: bool = False) -> Iterator[Iterator[Batch]]:
        loader = self.data_loader(batch_size, seed=seed, num_workers=num_workers, persistent_workers=persistent_workers)
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            yield map(self.to_phiml, loader)

    def everyday_train(self, network, optimizer, batch_size: int, *, seed: int, epochs: int) -> list[float]:
        return self.trainer(network, optimizer).train(self.data_loader(batch_size, seed=seed), epochs)

    def loader_variants(self) -> list[dict]:
        return [{'num_workers': 0}, {'num_workers': 2, 'persistent_workers': False},
                {'num_workers': 2, 'persistent_workers': True}]

    def load_batches(self, plan: BatchPlan) -> Iterator[tuple]:
        loader = DataLoader(self._require_open(), batch_sampler=plan_indices(plan.batches, self._index))
        yield from loader

    def to_phiml(self, raw: Sequence[torch.Tensor]) -> Batch:
        return convert_batch(raw, self.field_order, self.field_channels, self.spatial_dims)

    def trainer(self, network, optimizer) -> SyntheticTrainer:
        return SyntheticTrainer(network, optimizer, self.field_order, self.field_channels, self.spatial_dims)

    def train(self, plans: Sequence[BatchPlan], network, optimizer) -> list[float]:
        trainer = self.trainer(network, optimizer)
        return [trainer.train_batch(raw) for plan in plans for raw in self.load_batches(plan)]

    def _require_open(self):
        if self.dataset is None:
            raise RuntimeError("LegacyPipeline.open(sims) must be called before loading batches")
        return self.dataset


def _signature(data: dict, layout) -> tuple:
    return tuple((name, tuple(t.shape), layout.channels[name]) for name, t in sorted(data['tensor_data'].items()))
