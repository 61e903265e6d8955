"""Each diagnosis on a constructed pair of batch streams (legacy reference vs a hand-made native stream)."""
import numpy as np
import pytest
import torch
from phiml import math
from phiml.math import channel

from harness.equivalence.diagnose import Diagnosis, batch_digest, diagnose_streams, first_divergent
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


def _at(plan, index, kind, summary, details=()):
    """The exact diagnosis expected when batch `index` of epoch 0 is the first that differs."""
    return Diagnosis(kind, summary, epoch=plan.epoch, first_batch=index, first_keys=list(plan.batches[index]),
                     details=list(details))


def test_clean(setup):
    plan, ref, data, frames = setup
    d = diagnose_streams(ref, [data.gather(k) for k in plan.batches], plan, frames)
    assert d == Diagnosis('none', "no difference: every batch pair is equal", epoch=0, first_batch=None, first_keys=[])


def test_reorder(setup):
    plan, ref, data, frames = setup
    keys = plan.keys()
    swapped = keys[4:8] + keys[:4] + keys[8:]  # batches 0 and 1 exchanged
    stream = [data.gather(swapped[i:i + 4]) for i in range(0, len(swapped), 4)]
    d = diagnose_streams(ref, stream, plan, frames)
    assert d == _at(plan, 0, 'reorder', "same windows in a different order: 8 of 21 positions differ")


def test_different_windows(setup):
    plan, ref, data, frames = setup
    keys = plan.keys()
    changed = [WindowKey(k.sim, 0) if i == 9 else k for i, k in enumerate(keys)]
    assert keys[9] != changed[9]
    stream = [data.gather(changed[i:i + 4]) for i in range(0, len(changed), 4)]
    d = diagnose_streams(ref, stream, plan, frames)
    # one window swapped for another is not 'every window shifted' (a time offset): that was diagnosed until the
    # unmoved windows were required to be at their sim's end
    assert d == _at(plan, 2, 'different windows', "different windows: 1 missing, 0 extra",
                    [f"missing: {keys[9]}", "extra: "])


def test_windows_shifted_back_except_at_the_start_of_each_sim(setup):
    plan, ref, data, frames = setup
    stream = [data.gather([WindowKey(k.sim, max(k.t0 - 1, 0)) for k in keys]) for keys in plan.batches]
    d = diagnose_streams(ref, stream, plan, frames)
    first = plan.batches[0][0]
    assert first.t0 > 0  # the example names a window that moved
    assert d == _at(plan, 0, 'time offset', f"off-by-one in time: every window is shifted by -1 frame(s) in t0 "
                    f"(e.g. planned {first}, delivered {WindowKey(first.sim, first.t0 - 1)})")


def test_layout_transposed(setup):
    plan, ref, data, frames = setup
    stream = _map([data.gather(k) for k in plan.batches], lambda key, t: _rewrap(
        np.swapaxes(t.numpy(t.shape.names), t.shape.names.index('x'), t.shape.names.index('y')), t.shape))
    d = diagnose_streams(ref, stream, plan, frames)
    assert d == _at(plan, 0, 'layout', "layout error: the values match after x<->y transposed in 'initial_state'")


def test_layout_vector_swapped(setup):
    plan, ref, data, frames = setup
    stream = _map([data.gather(k) for k in plan.batches], lambda key, t: _rewrap(
        np.flip(t.numpy(t.shape.names), t.shape.names.index('vector')), t.shape))
    d = diagnose_streams(ref, stream, plan, frames)
    assert d == _at(plan, 0, 'layout', "layout error: the values match after vector components reversed (x, y) in "
                    "'initial_state'")


def test_time_offset_targets(setup):
    plan, ref, data, frames = setup
    stream = []
    for keys in plan.batches:
        shifted = data.gather([WindowKey(k.sim, min(k.t0 + 1, data.windows_per_sim - 1)) for k in keys])
        stream.append({'initial_state': data.gather(keys)['initial_state'], 'targets': shifted['targets']})
    d = diagnose_streams(ref, stream, plan, frames)
    assert d == _at(plan, 0, 'time offset', "off-by-one in time: targets start 2 frame(s) after the initial state "
                    "(expected 1)")


def test_time_offset_windows(setup):
    plan, ref, data, frames = setup
    stream = [data.gather([WindowKey(k.sim, min(k.t0 + 1, data.windows_per_sim - 1)) for k in keys])
              for keys in plan.batches]
    d = diagnose_streams(ref, stream, plan, frames)
    first = plan.batches[0][0]
    assert first.t0 < data.windows_per_sim - 1  # the example names a window that moved
    assert d == _at(plan, 0, 'time offset', f"off-by-one in time: every window is shifted by +1 frame(s) in t0 "
                    f"(e.g. planned {first}, delivered {WindowKey(first.sim, first.t0 + 1)})")


def test_numerical_drift(setup):
    plan, ref, data, frames = setup
    stream = [data.gather(k) for k in plan.batches]
    stream[3] = _map([stream[3]], lambda key, t: _rewrap((t.numpy(t.shape.names) * (1 + 3e-7)).astype(np.float32), t.shape))[0]
    d = diagnose_streams(ref, stream, plan, frames)
    assert (d.kind, d.summary, d.epoch, d.first_batch, d.first_keys) == (
        'numerical drift', "same windows with numerical drift: max relative error 4.09e-07 (would pass with rtol >= "
        "4.09e-07)", 0, 3, list(plan.batches[3]))
    assert [line.split(';')[0] for line in d.details] == [
        'initial_state: 2048 of 2048 elements differ (100.0%)', 'targets: 4096 of 4096 elements differ (100.0%)']


def test_value_transform(setup):
    plan, ref, data, frames = setup
    stream = _map([data.gather(k) for k in plan.batches], lambda key, t: _rewrap(t.numpy(t.shape.names) * 2 - 1, t.shape))
    d = diagnose_streams(ref, stream, plan, frames)
    assert d == _at(plan, 0, 'value transform', "native = 2 * legacy + -1 (data scaled or normalised differently, "
                    "e.g. normalised twice)")


def test_structure_rollout_and_dtype_and_items(setup):
    plan, ref, data, frames = setup
    base = [data.gather(k) for k in plan.batches]
    short = _map(base, lambda key, t: t.time[:-1] if key == 'targets' else t)
    note = 'targets: 1 target frames instead of 2 (rollout short by 1)'
    assert diagnose_streams(ref, short, plan, frames) == _at(plan, 0, 'structure', f"structure differs: {note}", [note])
    wide = _map(base, lambda key, t: _rewrap(t.numpy(t.shape.names).astype(np.float64), t.shape))
    notes = [f"{k}: dtype float64 instead of float32 (values equal after casting)" for k in ('initial_state', 'targets')]
    assert diagnose_streams(ref, wide, plan, frames) == _at(plan, 0, 'structure', f"structure differs: {notes[0]}", notes)
    relabelled = _map(base, lambda key, t: math.rename_dims(t, 'vector', channel(vector='y,x')))
    notes = [f"{k}: vector item names ('y', 'x') instead of ('x', 'y')" for k in ('initial_state', 'targets')]
    assert diagnose_streams(ref, relabelled, plan, frames) == _at(plan, 0, 'structure', f"structure differs: {notes[0]}",
                                                                  notes)


def test_batch_count(setup):
    plan, ref, data, frames = setup
    stream = [data.gather(k) for k in plan.batches[:-1]]
    d = diagnose_streams(ref, stream, plan, frames)
    last = len(plan.batches) - 1
    assert len(plan.batches[last]) == 1
    assert d == _at(plan, last, 'batch count', "native delivered 5 of 6 batches: the last, partial batch is dropped "
                    "(sizes [1])", [f"missing windows: {plan.batches[last][0]}"])


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
