"""Factories of the migration plan: `create_phiml`, and `create_dataset` behind the `use_phiml_data` switch."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.config import ScenarioConfig
from .data_manager import PhiMLDataManager
from .dataset import PhiMLDataset


def create_phiml(config: ScenarioConfig, sim_indices: Sequence[int], cache_dir: Path) -> PhiMLDataset:
    """The native dataset (no DataLoader wrapper) over `sim_indices` of the cache in `cache_dir`, loaded or mapped and
    prefetching as `config.data` says."""
    data = config.data
    return PhiMLDataset(PhiMLDataManager(cache_dir), sim_indices, data.rollout_steps, memory=data.memory,
                        memory_budget=data.memory_budget, prefetch=data.prefetch)


def create_dataset(config: ScenarioConfig, sim_indices: Sequence[int], cache_dir: Path, *, use_phiml_data: bool,
                   seed: int = 0, epoch: int = 0):
    """The training data source for either pipeline: a `PhiMLDataset`, or the legacy shuffled `DataLoader`."""
    if use_phiml_data:
        return create_phiml(config, sim_indices, cache_dir)
    from legacy.pipeline import LegacyPipeline
    pipeline = LegacyPipeline(cache_dir, config.data.rollout_steps)
    pipeline.open(sim_indices)
    return pipeline.data_loader(config.data.batch_size, seed=seed, epoch=epoch)
