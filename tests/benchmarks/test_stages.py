"""Per-stage benchmarks of both pipelines, grouped by stage so they stand side by side in pytest-benchmark's table."""
import shutil

import pytest

from harness.plan import make_plan
from legacy import LegacyPipeline
from phiml_native import NativePipeline

PIPELINES = [LegacyPipeline, NativePipeline]
IDS = ['legacy', 'phiml']


def _write_all(pipeline, sim):
    for i in range(sim.n_sims):
        pipeline.write_cache(i, sim.sim_fields(i), sim.metadata(i))


def _cache_bytes(pipeline):
    return sum(p.stat().st_size for p in pipeline.cache_dir.iterdir())


@pytest.mark.parametrize('cls', PIPELINES, ids=IDS)
def test_cache_write(benchmark, cls, bench_sim, tmp_path):
    benchmark.group = 'cache write'
    pipeline = cls(tmp_path / cls.name, bench_sim.config.data.rollout_steps)
    benchmark.pedantic(_write_all, args=(pipeline, bench_sim), setup=lambda: shutil.rmtree(pipeline.cache_dir, True),
                       rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(bytes=_cache_bytes(pipeline), sims=bench_sim.n_sims)


@pytest.mark.parametrize('cls', PIPELINES, ids=IDS)
def test_cache_read(benchmark, cls, bench_sim, tmp_path):
    benchmark.group = 'cache read (open all sims)'
    pipeline = cls(tmp_path / cls.name, bench_sim.config.data.rollout_steps)
    _write_all(pipeline, bench_sim)
    sims = list(range(bench_sim.n_sims))
    benchmark.pedantic(pipeline.open, args=(sims,), rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(bytes=_cache_bytes(pipeline), sims=len(sims))


@pytest.mark.parametrize('cls', PIPELINES, ids=IDS)
def test_epoch_of_batches(benchmark, cls, bench_sim, tmp_path):
    benchmark.group = 'one epoch of batches'
    config = bench_sim.config
    pipeline = cls(tmp_path / cls.name, config.data.rollout_steps)
    _write_all(pipeline, bench_sim)
    pipeline.open(list(range(bench_sim.n_sims)))
    plan = make_plan(pipeline.window_keys(), config.data.batch_size, seed=config.seed, epoch=0)

    def epoch():
        return sum(1 for _ in pipeline.load_batches(plan))

    assert benchmark.pedantic(epoch, rounds=10, warmup_rounds=1) == len(plan)
    benchmark.extra_info.update(windows=plan.n_windows, batches=len(plan))
