"""Session fixtures: a tiny scenario simulated once, and both pipelines' caches written from it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.cache.manifest import cache_kind
from harness.config import load_config
from harness.data.simulate import simulate
from legacy import LegacyPipeline
from phiml_native import NativePipeline

TINY = ('sim.resolution=[16,16]', 'sim.n_steps=8', 'data.n_sims=3', 'data.n_val_sims=1', 'data.rollout_steps=2',
        'data.batch_size=4', 'model.levels=1', 'model.filters=4', 'trainer.epochs=1')
PIPELINES = {'legacy': LegacyPipeline, 'phiml': NativePipeline}
PIPELINE_IDS = ['legacy', 'phiml']
KINDS = {name: cache_kind(cls) for name, cls in PIPELINES.items()}  # the cache kind of each built-in pipeline


@pytest.fixture(scope='session', autouse=True)
def _fixed_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope='session')
def tiny_config():
    return load_config('burgers', TINY)


@pytest.fixture(scope='session')
def tiny_sim(tiny_config):
    return simulate(tiny_config)


SMOKE_TINY = ('sim.resolution=[8,8]', 'sim.n_steps=6', 'data.rollout_steps=2')


@pytest.fixture(scope='session')
def smoke_sim():
    """A tiny smoke scenario (density + velocity, 8x8 cells, 7 frames, 3 + 1 sims), simulated once."""
    from harness.config import quick_overrides
    return simulate(load_config('smoke', [*quick_overrides('smoke'), *SMOKE_TINY]))


@pytest.fixture(scope='session')
def cache_dirs(tiny_sim, tmp_path_factory) -> dict[str, Path]:
    """Both caches of the tiny scenario, written once per session. Do not modify; copy first."""
    root = tmp_path_factory.mktemp('caches')
    dirs = {}
    for name, cls in PIPELINES.items():
        pipeline = cls(root / name, tiny_sim.config.data.rollout_steps)
        for sim in tiny_sim.config.all_sims:
            pipeline.write_cache(sim, tiny_sim.sim_fields(sim), tiny_sim.metadata(sim))
        dirs[name] = root / name
    return dirs


def open_pipeline(name: str, cache_dirs, config, sims=None):
    pipeline = PIPELINES[name](cache_dirs[name], config.data.rollout_steps)
    pipeline.open(config.train_sims if sims is None else sims)
    return pipeline


@pytest.fixture(params=PIPELINE_IDS)
def pipeline(request, cache_dirs, tiny_config):
    """Each pipeline, opened on the tiny scenario's training sims."""
    return open_pipeline(request.param, cache_dirs, tiny_config)


@pytest.fixture(scope='session')
def both_pipelines(cache_dirs, tiny_config):
    return {name: open_pipeline(name, cache_dirs, tiny_config) for name in PIPELINE_IDS}
