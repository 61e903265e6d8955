"""Window extraction, the same for both pipelines (parametrized)."""
import numpy as np

from harness.equivalence.identify import FrameIndex
from harness.pipeline import BatchPlan, WindowKey
from conftest import PIPELINE_IDS


def _frames(tiny_sim, sim):
    return tiny_sim.sim_fields(sim)['velocity'].values.numpy(['time', 'x', 'y', 'vector'])


def _one(pipeline, key):
    plan = BatchPlan(seed=0, epoch=0, batches=((key,),))
    return next(pipeline.batches(plan))


def test_window_count(pipeline, tiny_config):
    keys = pipeline.window_keys()
    per_sim = tiny_config.sim.n_frames - tiny_config.data.rollout_steps
    assert len(keys) == len(tiny_config.train_sims) * per_sim == 3 * 7
    assert keys == [WindowKey(s, t) for s in tiny_config.train_sims for t in range(per_sim)]


def test_first_and_last_window(pipeline, tiny_sim, tiny_config):
    r = tiny_config.data.rollout_steps
    for key in (WindowKey(0, 0), WindowKey(2, tiny_config.windows_per_sim - 1)):
        batch = _one(pipeline, key)
        frames = _frames(tiny_sim, key.sim)
        initial = batch['initial_state'].numpy(['batch', 'x', 'y', 'vector'])[0]
        targets = batch['targets'].numpy(['batch', 'time', 'x', 'y', 'vector'])[0]
        assert np.array_equal(initial, frames[key.t0])
        assert np.array_equal(targets, frames[key.t0 + 1:key.t0 + 1 + r])
        assert targets.shape[0] == r


def test_targets_are_the_next_frames(pipeline, tiny_sim):
    batch = _one(pipeline, WindowKey(1, 3))
    frames = _frames(tiny_sim, 1)
    targets = batch['targets'].numpy(['batch', 'time', 'x', 'y', 'vector'])[0]
    assert np.array_equal(targets[0], frames[4]) and np.array_equal(targets[1], frames[5])
    assert not np.array_equal(targets[0], frames[3])


def test_batch_contract(pipeline, tiny_config):
    plan = BatchPlan(seed=0, epoch=0, batches=((WindowKey(0, 0), WindowKey(1, 2), WindowKey(2, 6)),))
    batch = next(pipeline.batches(plan))
    assert set(batch) == {'initial_state', 'targets'}
    assert batch['initial_state'].shape.names == ('batch', 'x', 'y', 'vector')
    assert batch['targets'].shape.names == ('batch', 'time', 'x', 'y', 'vector')
    assert batch['targets'].shape.get_size('time') == tiny_config.data.rollout_steps
    assert batch['initial_state'].shape.get_item_names('vector') == ('x', 'y')
    assert batch['targets'].shape.batch.names == ('batch', 'time')
    assert str(batch['targets'].dtype) == 'float32'


def _everyday_keys(pipeline, tiny_sim, tiny_config, seed, epochs=1):
    frames = FrameIndex(tiny_sim, tiny_config.train_sims)
    return [[frames.identify(batch) for batch in batches]
            for batches in pipeline.everyday_epochs(4, seed=seed, epochs=epochs)]


def test_everyday_epochs_cover_each_window(pipeline, tiny_sim, tiny_config):
    epochs = _everyday_keys(pipeline, tiny_sim, tiny_config, seed=3, epochs=2)
    for batches in epochs:
        assert sorted(k for b in batches for k in b) == pipeline.window_keys()
        assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 1]
    assert epochs[0] != epochs[1]
    assert _everyday_keys(pipeline, tiny_sim, tiny_config, seed=3) == epochs[:1]
    assert _everyday_keys(pipeline, tiny_sim, tiny_config, seed=4) != epochs[:1]
