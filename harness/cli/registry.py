"""The pipelines the commands judge by default: the one place in the harness that names `legacy` and `phiml_native`."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.config import ScenarioConfig
from harness.pipeline import AbstractPipeline, load_pipeline

DEFAULTS = {'legacy': 'legacy:LegacyPipeline', 'native': 'phiml_native:NativePipeline'}


def default_pipelines() -> tuple[type[AbstractPipeline], type[AbstractPipeline]]:
    """The built-in legacy and native pipeline classes."""
    return load_pipeline(DEFAULTS['legacy'], 'legacy'), load_pipeline(DEFAULTS['native'], 'native')


def pipeline_class(kind: str) -> type[AbstractPipeline]:
    """The built-in pipeline class that `data.pipeline` (`'legacy'` or `'phiml'`) names."""
    return load_pipeline(DEFAULTS['native' if kind == 'phiml' else 'legacy'], f"data.pipeline={kind}")


def create_dataset(config: ScenarioConfig, sim_indices: Sequence[int], cache_dir: Path, *, use_phiml_data: bool,
                   seed: int = 0, epoch: int = 0):
    """The training data source behind the migration plan's `use_phiml_data` switch: the native `PhiMLDataset`
    (`create_phiml`), or the legacy shuffled `DataLoader`."""
    if use_phiml_data:
        from phiml_native import create_phiml
        return create_phiml(config, sim_indices, cache_dir)
    from legacy import LegacyPipeline
    pipeline = LegacyPipeline(cache_dir, config.data.rollout_steps)
    pipeline.open(sim_indices)
    return pipeline.data_loader(config.data.batch_size, seed=seed, epoch=epoch)
