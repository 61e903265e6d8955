"""The everyday entry points of both pipelines: the migration plan's names and signatures."""
import weakref

import numpy as np
import pytest

from harness import model
from harness.errors import CacheError
from harness.pipeline import drain
from harness.plan import make_plan
from legacy import LegacyPipeline, SyntheticTrainer
from harness.cli.registry import create_dataset
from phiml_native import NativePipeline, PhiMLDataManager, PhiMLDataset, PhiMLSyntheticTrainer, create_phiml


def _net(config):
    net = model.make_network(config.model, 2, 2, seed=1)
    return net, model.make_optimizer(net, config.trainer.learning_rate)


def test_native_trainer_trains(cache_dirs, tiny_config):
    dataset = create_phiml(tiny_config, tiny_config.train_sims, cache_dirs['phiml'])
    assert isinstance(dataset, PhiMLDataset) and len(dataset) == 21
    net, opt = _net(tiny_config)
    losses = PhiMLSyntheticTrainer(net, opt, batch_size=4, seed=0).train(dataset, num_epochs=2)
    assert len(losses) == 2 * 6 and all(np.isfinite(losses))


def test_legacy_trainer_trains(cache_dirs, tiny_config):
    loader = create_dataset(tiny_config, tiny_config.train_sims, cache_dirs['legacy'], use_phiml_data=False, seed=0)
    pipeline = LegacyPipeline(cache_dirs['legacy'], tiny_config.data.rollout_steps)
    pipeline.open(tiny_config.train_sims)
    net, opt = _net(tiny_config)
    trainer = SyntheticTrainer(net, opt, pipeline.field_order, pipeline.field_channels, pipeline.spatial_dims)
    losses = trainer.train(loader, num_epochs=2)
    assert len(losses) == 2 * 6 and all(np.isfinite(losses))


def test_iterate_batches(cache_dirs, tiny_config):
    dataset = PhiMLDataset(PhiMLDataManager(cache_dirs['phiml']), [0, 2], rollout_steps=2)
    batches = list(dataset.iterate_batches(5, shuffle=False))
    assert [b['initial_state'].shape.get_size('batch') for b in batches] == [5, 5, 4]
    first = dataset.data_manager.load_cache(0)['velocity']
    assert np.array_equal(batches[0]['initial_state'].numpy('batch,x,y,vector')[1], first.time[1].numpy('x,y,vector'))
    with pytest.raises(ValueError, match='`batch_size` \\(=0\\)'):
        next(dataset.iterate_batches(0))


def test_native_batch_is_torch_backed(cache_dirs, tiny_config):
    dataset = create_phiml(tiny_config, [0], cache_dirs['phiml'])
    batch = next(dataset.iterate_batches(2, seed=0))
    assert type(batch['targets'].native('batch,time,x,y,vector')).__module__.startswith('torch')


def test_dataset_without_sims_or_full_windows_refused(cache_dirs):
    manager = PhiMLDataManager(cache_dirs['phiml'])
    with pytest.raises(CacheError) as info:
        PhiMLDataset(manager, [], rollout_steps=2)
    assert str(info.value) == f"{cache_dirs['phiml']}: no sims to open (expected at least one sim index)"
    with pytest.raises(CacheError) as info:
        PhiMLDataset(manager, [1], rollout_steps=9)
    assert str(info.value) == (f"{manager.get_cached_path(1)}: 9 frames per sim, but `rollout_steps` (=9) needs more "
                               f"than that")


def test_native_pipeline_and_trainer_refuse_use_before_they_can_serve(cache_dirs, tiny_config):
    pipeline = NativePipeline(cache_dirs['phiml'], tiny_config.data.rollout_steps)
    with pytest.raises(RuntimeError, match=r"^NativePipeline.open\(sims\) must be called before loading batches$"):
        pipeline.window_keys()
    pipeline.open([0])
    net, opt = _net(tiny_config)
    with pytest.raises(ValueError, match=r"^`batch_size` \(=None\) must be >= 1 to train on a dataset$"):
        PhiMLSyntheticTrainer(net, opt).train(pipeline.dataset, num_epochs=1)


def test_native_writer_refuses_a_field_that_is_no_trajectory(tiny_sim):
    frame = tiny_sim.sim_fields(0)['velocity'].time[0]
    with pytest.raises(ValueError) as info:
        PhiMLDataManager.field_to_phiml_tensor(frame, 'velocity')
    assert str(info.value) == ("field 'velocity' has dims ('x', 'y', 'vector'); expected a trajectory with only "
                               "['time', 'x', 'y', 'vector']")


def test_unknown_window_refused(cache_dirs, tiny_config):
    from harness.pipeline import WindowKey
    dataset = create_phiml(tiny_config, [0], cache_dirs['phiml'])
    with pytest.raises(KeyError, match='sim 2 is not among'):
        dataset.gather([WindowKey(2, 0)])
    with pytest.raises(KeyError, match='t0 out of range'):
        dataset.gather([WindowKey(0, 7)])


def _watched(batches, alive: list):
    """Yields `batches`, noting before building each one how many earlier batches are still referenced anywhere."""
    refs = []
    for batch in batches:
        alive.append(sum(ref() is not None for ref in refs))
        refs.append(weakref.ref(batch['initial_state'].native(batch['initial_state'].shape.names)))
        yield batch
        del batch


def test_native_trainer_lets_each_batch_go_before_the_next(cache_dirs, tiny_config):
    dataset = create_phiml(tiny_config, tiny_config.train_sims, cache_dirs['phiml'])
    net, opt = _net(tiny_config)
    alive = []
    losses = PhiMLSyntheticTrainer(net, opt).train_batches(_watched(dataset.iterate_batches(4, seed=0), alive))
    assert len(losses) == len(alive) == 6 and alive == [0] * 6  # a data set holds one batch at a time, not two


def test_drain_and_batches_keep_no_batch(cache_dirs, tiny_config):
    pipeline = NativePipeline(cache_dirs['phiml'], tiny_config.data.rollout_steps)
    pipeline.open(tiny_config.train_sims)
    plan = make_plan(pipeline.window_keys(), 4, seed=0, epoch=0)
    alive = []
    original = pipeline.load_batches
    pipeline.load_batches = lambda p: _watched(original(p), alive)
    drain(pipeline.batches(plan))
    assert alive == [0] * len(plan)
    alive.clear()
    for batch in pipeline.batches(plan):  # noqa: B007  (what a for loop holds, for contrast)
        pass
    assert alive == [0] + [1] * (len(plan) - 1)
