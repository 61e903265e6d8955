"""Each diagnosis on a constructed pair of batch streams (legacy reference vs a hand-made native stream)."""
import numpy as np
import pytest
import torch
from phiml import math
from phiml.math import channel

from harness.equivalence.diagnose import batch_digest, diagnose_streams, first_divergent
from harness.equivalence.identify import FrameIndex
from harness.pipeline import WindowKey
from harness.plan import make_plan


@pytest.fixture(scope='module')
def setup(both_pipelines, tiny_sim, tiny_config):
    legacy, native = both_pipelines['legacy'], both_pipelines['phiml']
    plan = make_plan(legacy.window_keys(), 4, seed=5, epoch=0)
    reference = list(legacy.batches(plan))
    return plan, reference, native.dataset, FrameIndex(tiny_sim, tiny_config.train_sims)


def _map(stream, f):
    return [{k: f(k, v) for k, v in b.items()} for b in stream]


def _rewrap(array, shape):
    return math.wrap(torch.from_numpy(np.ascontiguousarray(array)), shape)


def test_clean(setup):
    plan, ref, data, frames = setup
    d = diagnose_streams(ref, [data.gather(k) for k in plan.batches], plan, frames)
    assert d.kind == 'none' and d.first_batch is None


def test_reorder(setup):
    plan, ref, data, frames = setup
    keys = plan.keys()
    swapped = keys[4:8] + keys[:4] + keys[8:]  # batches 0 and 1 exchanged
    stream = [data.gather(swapped[i:i + 4]) for i in range(0, len(swapped), 4)]
    d = diagnose_streams(ref, stream, plan, frames)
    assert d.kind == 'reorder' and d.first_batch == 0 and '8 of 21 positions differ' in d.summary


def test_different_windows(setup):
    plan, ref, data, frames = setup
    keys = plan.keys()
    changed = [WindowKey(k.sim, 0) if i == 9 else k for i, k in enumerate(keys)]
    assert keys[9] != changed[9]
    stream = [data.gather(changed[i:i + 4]) for i in range(0, len(changed), 4)]
    d = diagnose_streams(ref, stream, plan, frames)
    assert d.kind in ('different windows', 'time offset')
    assert d.first_batch == 2 and d.first_keys == list(plan.batches[2])
    if d.kind == 'different windows':
        assert f"missing: {keys[9]}" in d.details[0]


def test_layout_transposed(setup):
    plan, ref, data, frames = setup
    stream = _map([data.gather(k) for k in plan.batches], lambda key, t: _rewrap(
        np.swapaxes(t.numpy(t.shape.names), t.shape.names.index('x'), t.shape.names.index('y')), t.shape))
    d = diagnose_streams(ref, stream, plan, frames)
    assert d.kind == 'layout' and 'x<->y transposed' in d.summary and d.first_batch == 0


def test_layout_vector_swapped(setup):
    plan, ref, data, frames = setup
    stream = _map([data.gather(k) for k in plan.batches], lambda key, t: _rewrap(
        np.flip(t.numpy(t.shape.names), t.shape.names.index('vector')), t.shape))
    d = diagnose_streams(ref, stream, plan, frames)
    assert d.kind == 'layout' and 'vector components reversed' in d.summary


def test_time_offset_targets(setup):
    plan, ref, data, frames = setup
    stream = []
    for keys in plan.batches:
        shifted = data.gather([WindowKey(k.sim, min(k.t0 + 1, data.windows_per_sim - 1)) for k in keys])
        stream.append({'initial_state': data.gather(keys)['initial_state'], 'targets': shifted['targets']})
    d = diagnose_streams(ref, stream, plan, frames)
    assert d.kind == 'time offset' and 'targets start 2 frame(s) after' in d.summary


def test_time_offset_windows(setup):
    plan, ref, data, frames = setup
    stream = [data.gather([WindowKey(k.sim, min(k.t0 + 1, data.windows_per_sim - 1)) for k in keys])
              for keys in plan.batches]
    d = diagnose_streams(ref, stream, plan, frames)
    assert d.kind == 'time offset' and 'shifted by +1 frame' in d.summary


def test_numerical_drift(setup):
    plan, ref, data, frames = setup
    stream = [data.gather(k) for k in plan.batches]
    stream[3] = _map([stream[3]], lambda key, t: _rewrap((t.numpy(t.shape.names) * (1 + 3e-7)).astype(np.float32), t.shape))[0]
    d = diagnose_streams(ref, stream, plan, frames)
    assert d.kind == 'numerical drift' and d.first_batch == 3


def test_value_transform(setup):
    plan, ref, data, frames = setup
    stream = _map([data.gather(k) for k in plan.batches], lambda key, t: _rewrap(t.numpy(t.shape.names) * 2 - 1, t.shape))
    d = diagnose_streams(ref, stream, plan, frames)
    assert d.kind == 'value transform' and 'native = 2 * legacy + -1' in d.summary


def test_structure_rollout_and_dtype_and_items(setup):
    plan, ref, data, frames = setup
    base = [data.gather(k) for k in plan.batches]
    short = _map(base, lambda key, t: t.time[:-1] if key == 'targets' else t)
    assert 'targets: 1 target frames instead of 2 (rollout short by 1)' in diagnose_streams(ref, short, plan, frames).summary
    wide = _map(base, lambda key, t: _rewrap(t.numpy(t.shape.names).astype(np.float64), t.shape))
    d = diagnose_streams(ref, wide, plan, frames)
    assert d.kind == 'structure' and 'dtype float64 instead of float32 (values equal after casting)' in d.summary
    relabelled = _map(base, lambda key, t: math.rename_dims(t, 'vector', channel(vector='y,x')))
    assert "vector item names ('y', 'x') instead of ('x', 'y')" in diagnose_streams(ref, relabelled, plan, frames).summary


def test_batch_count(setup):
    plan, ref, data, frames = setup
    stream = [data.gather(k) for k in plan.batches[:-1]]
    d = diagnose_streams(ref, stream, plan, frames)
    assert d.kind == 'batch count' and 'the last, partial batch is dropped (sizes [1])' in d.summary
    assert d.first_batch == len(plan.batches) - 1


def test_first_divergent_bisect(setup):
    plan, ref, data, frames = setup
    stream = [data.gather(k) for k in plan.batches]
    assert first_divergent(ref, stream) is None
    for broken in (0, 3, len(stream) - 1):
        altered = list(stream)
        altered[broken] = _map([stream[broken]], lambda key, t: t * 2)[0]
        assert first_divergent(ref, altered) == broken
    assert first_divergent(ref, stream[:-2]) == len(stream) - 2
    assert batch_digest(ref[0]) == batch_digest(stream[0])
