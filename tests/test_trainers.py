"""The everyday entry points of both pipelines: the migration plan's names and signatures."""
import numpy as np
import pytest

from harness import model
from legacy import LegacyPipeline, SyntheticTrainer
from phiml_native import PhiMLDataManager, PhiMLDataset, PhiMLSyntheticTrainer, create_dataset, create_phiml


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


def test_unknown_window_refused(cache_dirs, tiny_config):
    from harness.pipeline import WindowKey
    dataset = create_phiml(tiny_config, [0], cache_dirs['phiml'])
    with pytest.raises(KeyError, match='sim 2 is not among'):
        dataset.gather([WindowKey(2, 0)])
    with pytest.raises(KeyError, match='t0 out of range'):
        dataset.gather([WindowKey(0, 7)])
