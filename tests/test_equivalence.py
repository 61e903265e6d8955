"""Same plan => identical batches from both pipelines: values, dims, dim types, item names, dtype."""
import numpy as np
import torch

from harness import model
from harness.plan import make_plans


def _assert_same(a, b):
    assert a.shape.names == b.shape.names
    assert [d.dim_type for d in a.shape] == [d.dim_type for d in b.shape]
    assert a.shape.item_names == b.shape.item_names
    assert a.shape.sizes == b.shape.sizes
    assert a.dtype == b.dtype
    order = a.shape.names
    assert np.array_equal(a.numpy(order), b.numpy(order))


def test_same_plan_identical_batches(both_pipelines, tiny_config):
    legacy, native = both_pipelines['legacy'], both_pipelines['phiml']
    assert legacy.window_keys() == native.window_keys()
    plans = make_plans(legacy.window_keys(), tiny_config.data.batch_size, seed=tiny_config.seed, epochs=2)
    count = 0
    for plan in plans:
        for a, b in zip(legacy.batches(plan), native.batches(plan), strict=True):
            for key in ('initial_state', 'targets'):
                _assert_same(a[key], b[key])
            count += 1
    assert count == 2 * 6


def test_same_seed_identical_losses(both_pipelines, tiny_config):
    legacy, native = both_pipelines['legacy'], both_pipelines['phiml']
    plans = make_plans(legacy.window_keys(), tiny_config.data.batch_size, seed=tiny_config.seed, epochs=1)
    net = model.make_network(tiny_config.model, 2, 2, seed=tiny_config.seed)
    losses = {}
    for pipeline in (legacy, native):
        copy = model.clone_network(net)
        losses[pipeline.name] = pipeline.train(plans, copy, model.make_optimizer(copy, tiny_config.trainer.learning_rate))
    assert len(losses['legacy']) == 6
    assert losses['legacy'] == losses['phiml']  # bitwise
    assert losses['legacy'][-1] != losses['legacy'][0]  # the weights did change
    # the source network was not trained
    fresh = model.make_network(tiny_config.model, 2, 2, seed=tiny_config.seed)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), fresh.parameters()))
