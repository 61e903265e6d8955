"""The migration plan's factory of the native dataset: `create_phiml`."""
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
                        memory_budget=data.memory_budget, prefetch=data.prefetch, cast_float32=data.cast_float32)

