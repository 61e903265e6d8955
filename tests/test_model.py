"""The shared model: seeded initial weights, independent clones, and the rollout loss for one or several fields."""
import numpy as np
import torch
from phiml import math
from phiml.math import batch, channel, spatial

from harness import model
from harness.config import ModelConfig


def _state(seed, *dims):
    shape = math.concat_shapes(*dims)
    return math.wrap(torch.from_numpy(np.random.default_rng(seed).random(shape.sizes, np.float32)), shape)


def test_weights_from_seed_only():
    config = ModelConfig('conv_net', levels=1, filters=4)
    torch.manual_seed(0)
    a = model.make_network(config, 2, 2, seed=3)
    torch.manual_seed(99)  # the global RNG does not matter ...
    b = model.make_network(config, 2, 2, seed=3)
    c = model.make_network(config, 2, 2, seed=4)  # ... the seed does
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    clone = model.clone_network(a)
    assert all(p is not q and torch.equal(p, q) for p, q in zip(a.parameters(), clone.parameters()))


def test_rollout_loss_single_field():
    net = model.make_network(ModelConfig('u_net', levels=1, filters=4), 2, 2, seed=0)
    dims = (batch(batch=3), spatial(x=8, y=8), channel(vector='x,y'))
    initial = _state(0, *dims)
    targets = _state(1, batch(batch=3), batch(time=2), *dims[1:])
    prediction = model.predict(net, initial)
    assert set(prediction.shape.names) == {'batch', 'x', 'y', 'vector'} and prediction.shape.get_item_names('vector') == ('x', 'y')
    loss = model.rollout_loss(net, initial, targets)
    assert loss.shape.rank == 0 and np.isfinite(loss.native().item())
    # by hand: mean over both steps of the per-cell mean squared error, mean over the batch
    first = model.predict(net, initial)
    second = model.predict(net, first)
    expected = np.mean([((first - targets.time[0]) ** 2).numpy('batch,x,y,vector').mean(axis=(1, 2, 3)),
                        ((second - targets.time[1]) ** 2).numpy('batch,x,y,vector').mean(axis=(1, 2, 3))], axis=0).mean()
    assert np.isclose(loss.native().item(), expected, rtol=1e-5)


def test_rollout_loss_several_fields():
    net = model.make_network(ModelConfig('conv_net', levels=1, filters=4), 3, 2, seed=0)
    space = spatial(x=8, y=8)
    initial = {'velocity': _state(0, batch(batch=2), space, channel(vector='x,y')), 'density': _state(1, batch(batch=2), space)}
    targets = {'velocity': _state(2, batch(batch=2), batch(time=2), space, channel(vector='x,y')),
               'density': _state(3, batch(batch=2), batch(time=2), space)}
    prediction = model.predict(net, initial)
    assert set(prediction) == {'velocity', 'density'}
    assert prediction['density'].shape.names == ('batch', 'x', 'y')
    assert prediction['velocity'].shape.get_item_names('vector') == ('x', 'y')
    optimizer = model.make_optimizer(net, 1e-3)
    losses = [model.train_step(net, optimizer, {'initial_state': initial, 'targets': targets}) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
