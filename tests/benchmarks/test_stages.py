"""Per-stage benchmarks of both pipelines, grouped by stage so they stand side by side in pytest-benchmark's table:
cache write, cold cache read, one epoch of batches (with the native dataset's mapped mode, and the migration plan's
naive loader as a reference entry), conversion to the network's torch tensors, one train step. `extra_info` carries bytes and counts.

`python -m harness.bench burgers` measures the same stages with interleaving, baselines and the bandwidth floor.
"""
import shutil

import pytest

from harness import model
from harness.bench.bandwidth import epoch_bytes
from harness.plan import make_plan
from harness.bench.stages import frame_bytes as batch_frame_bytes, network_inputs
from legacy import LegacyPipeline
from phiml_native import NativePipeline
from benchmarks.naive import NaiveWindowLoader
from phiml_native.npz import clear_caches

PIPELINES = [LegacyPipeline, NativePipeline]
IDS = ['legacy', 'phiml']


def _write_all(pipeline, sim):
    for i in range(sim.n_sims):
        pipeline.write_cache(i, sim.sim_fields(i), sim.metadata(i))


def _cache_bytes(pipeline, sims):
    return sum(pipeline.manager.get_cached_path(s).stat().st_size for s in sims)


@pytest.fixture(scope='module')
def opened(bench_sim, tmp_path_factory):
    """Both pipelines written and opened on all sims, the epoch's plan, its raw batches and a network per pipeline."""
    config = bench_sim.config
    root = tmp_path_factory.mktemp('bench')
    sims = list(range(bench_sim.n_sims))
    pipelines = {}
    for cls in PIPELINES:
        pipeline = cls(root / cls.name, config.data.rollout_steps)
        _write_all(pipeline, bench_sim)
        pipeline.open(sims)
        pipelines[cls.name] = pipeline
    mapped = NativePipeline(root / 'phiml', config.data.rollout_steps, memory='map')
    mapped.open(sims)
    plan = make_plan(pipelines['phiml'].window_keys(), config.data.batch_size, seed=config.seed, epoch=0)
    raw = {name: list(p.load_batches(plan)) for name, p in pipelines.items()}
    network = model.make_network(config.model, 2, 2, seed=config.seed)
    frame_bytes = batch_frame_bytes(pipelines['phiml'].to_phiml(raw['phiml'][0]))
    return {'pipelines': pipelines, 'mapped': mapped, 'sims': sims, 'plan': plan, 'raw': raw, 'network': network, 'config': config,
            'epoch_bytes': epoch_bytes(plan.n_windows, frame_bytes, config.data.rollout_steps)}


@pytest.mark.parametrize('cls', PIPELINES, ids=IDS)
def test_cache_write(benchmark, cls, bench_sim, tmp_path):
    benchmark.group = 'cache write (all sims)'
    pipeline = cls(tmp_path / cls.name, bench_sim.config.data.rollout_steps)
    benchmark.pedantic(_write_all, args=(pipeline, bench_sim), setup=lambda: shutil.rmtree(pipeline.cache_dir, True),
                       rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(bytes=_cache_bytes(pipeline, range(bench_sim.n_sims)), sims=bench_sim.n_sims)


@pytest.mark.parametrize('name', IDS)
def test_cache_read(benchmark, name, opened):
    benchmark.group = 'cache read (cold open of all sims)'
    pipeline, sims = opened['pipelines'][name], opened['sims']

    def fresh():
        clear_caches()  # the native reader's layout caches: a new process starts without them
        return (type(pipeline)(pipeline.cache_dir, pipeline.rollout_steps), sims), {}

    benchmark.pedantic(lambda p, s: p.open(s), setup=fresh, rounds=7, warmup_rounds=1)
    benchmark.extra_info.update(bytes=_cache_bytes(pipeline, sims), sims=len(sims))


@pytest.mark.parametrize('name', [*IDS, 'phiml-mapped', 'naive'])
def test_epoch_of_batches(benchmark, name, opened):
    benchmark.group = 'one epoch of batches'
    plan = opened['plan']
    if name == 'naive':  # the migration plan's sketch: one file read per sample, samples stacked one by one
        native = opened['pipelines']['phiml']
        source = NaiveWindowLoader(native.manager, native.rollout_steps).iterate_plan
    elif name == 'phiml-mapped':  # the native dataset with the cache files memory-mapped
        source = opened['mapped'].load_batches
    else:
        source = opened['pipelines'][name].load_batches

    def epoch():
        return sum(1 for _ in source(plan))

    rounds = 3 if name == 'naive' else 10
    assert benchmark.pedantic(epoch, rounds=rounds, warmup_rounds=1) == len(plan)
    benchmark.extra_info.update(windows=plan.n_windows, batches=len(plan), bytes=opened['epoch_bytes'])


@pytest.mark.parametrize('name', IDS)
def test_conversion(benchmark, name, opened):
    benchmark.group = 'conversion to the network tensors (one epoch)'
    pipeline, raw = opened['pipelines'][name], opened['raw'][name]

    def convert():
        return [network_inputs(pipeline.to_phiml(r)) for r in raw]

    benchmark.pedantic(convert, rounds=10, warmup_rounds=1)
    benchmark.extra_info.update(batches=len(raw), bytes=opened['epoch_bytes'])


@pytest.mark.parametrize('name', IDS)
def test_train_step(benchmark, name, opened):
    benchmark.group = 'train step'
    pipeline = opened['pipelines'][name]
    batch = pipeline.to_phiml(opened['raw'][name][0])
    net = model.clone_network(opened['network'])
    optimizer = model.make_optimizer(net, opened['config'].trainer.learning_rate)
    loss = benchmark.pedantic(model.train_step, args=(net, optimizer, batch), rounds=3, warmup_rounds=1)
    assert loss == loss  # not NaN
    benchmark.extra_info.update(batch_size=batch['initial_state'].shape.get_size('batch'),
                                rollout_steps=batch['targets'].shape.get_size('time'),
                                bytes=sum(t.native(t.shape.names).nbytes for t in batch.values()))
