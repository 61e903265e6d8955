"""Each diagnosis on a constructed pair of batch streams (legacy reference vs a hand-made native stream)."""
import numpy as np
import pytest
import torch
from phiml import math
from phiml.math import channel

from harness.equivalence.diagnose import Diagnosis, batch_digest, diagnose_streams, first_divergent
from harness.equivalence.diff import Tolerance
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


def test_wrong_simulation_is_not_a_reorder(setup):
    """Every window served from the next sim at its planned t0: the same windows in all (a reorder by the multiset),
    but each one's content names the sim it came from."""
    plan, ref, data, frames = setup
    rotated = [data.gather([WindowKey((k.sim + 1) % 3, k.t0) for k in keys]) for keys in plan.batches]
    first = plan.batches[0][0]
    d = diagnose_streams(ref, rotated, plan, frames)
    assert d == _at(plan, 0, 'wrong simulation', f"windows served from the wrong simulation: 21 of 21 windows are "
                    f"another sim's frames at the planned t0 (e.g. planned {first}, served "
                    f"{WindowKey((first.sim + 1) % 3, first.t0)}); sims served: sim 1 in place of sim 0, sim 2 in place "
                    f"of sim 1, sim 0 in place of sim 2")


def test_one_window_of_the_wrong_simulation(setup):
    plan, ref, data, frames = setup
    keys = plan.keys()
    wrong = WindowKey((keys[13].sim + 2) % 3, keys[13].t0)
    changed = [wrong if i == 13 else k for i, k in enumerate(keys)]
    stream = [data.gather(changed[i:i + 4]) for i in range(0, len(changed), 4)]
    d = diagnose_streams(ref, stream, plan, frames)
    assert d == _at(plan, 3, 'wrong simulation', f"windows served from the wrong simulation: 1 of 21 windows are "
                    f"another sim's frames at the planned t0 (e.g. planned {keys[13]}, served {wrong}); sims served: "
                    f"sim {wrong.sim} in place of sim {keys[13].sim}")


def test_nonfinite_values_named_with_field_and_window(setup):
    plan, ref, data, frames = setup
    stream = [data.gather(k) for k in plan.batches]

    def poison(key, t):
        values = t.numpy(t.shape.names).copy()
        if key == 'targets':
            values[1, 1, 3, 4, 1] = np.nan
            values[2, 0, 0, 0, 0] = np.inf
        return _rewrap(values, t.shape)
    stream[2] = _map([stream[2]], poison)[0]
    d = diagnose_streams(ref, stream, plan, frames)
    window = plan.batches[2][1]
    legacy = float(ref[2]['targets'].numpy(ref[2]['targets'].shape.names)[1, 1, 3, 4, 1])
    detail = (f"targets: 1 NaN, 1 Inf in 2 window(s), first in window {window} at time=1, x=3, y=4, vector=y "
              f"(legacy {legacy:.6g})")
    assert d == _at(plan, 2, 'non-finite values', f"the native pipeline serves non-finite values the legacy data does "
                    f"not have: {detail}", [detail])


def test_coverage_compares_each_served_window_with_its_planned_key(setup, both_pipelines):
    """Windows of the next sim at the planned t0: each window still arrives exactly once, but not where planned."""
    from harness.equivalence.batches import audit_coverage, compare_pipelines
    plan, ref, data, frames = setup
    legacy = both_pipelines['legacy']
    result = compare_pipelines(legacy, both_pipelines['phiml'], [plan], Tolerance(), frames)
    assert [c.passed for c in result.coverage] == [True, True]
    keys = plan.keys()
    rotated = [WindowKey((k.sim + 1) % 3, k.t0) for k in keys]
    coverage = audit_coverage('phiml', 0, keys, rotated, keys)
    assert not coverage and (coverage.missing, coverage.duplicated, coverage.unexpected) == ([], [], [])
    assert coverage.misplaced == list(zip(keys, rotated))
    assert coverage.describe() == (f"phiml epoch 0: delivered 21 of 21 windows; 21 served in place of another planned "
                                   f"window (e.g. planned {keys[0]}, served {rotated[0]}, planned {keys[1]}, served "
                                   f"{rotated[1]}, planned {keys[2]}, served {rotated[2]})")
    assert audit_coverage('phiml', 0, keys, rotated)  # without the planned order only the multiset is audited


def test_identify_prefers_the_planned_window(tiny_sim, tiny_config, both_pipelines):
    """Where two sims hold the same frames, the element is its planned window; otherwise the first sim that has them."""
    import copy
    values = tiny_sim.fields['velocity'].values
    twin = copy.copy(tiny_sim)
    twin.fields = {'velocity': tiny_sim.fields['velocity'].with_values(
        math.concat([values.sim[:1], values.sim[:1], values.sim[2:]], 'sim'))}  # sim 1 a copy of sim 0
    frames = FrameIndex(twin, tiny_config.train_sims)
    batch = both_pipelines['phiml'].dataset.gather([WindowKey(0, 2), WindowKey(2, 5)])
    assert frames.identify(batch) == [WindowKey(0, 2), WindowKey(2, 5)]
    assert frames.identify(batch, [WindowKey(1, 2), WindowKey(1, 5)]) == [WindowKey(1, 2), WindowKey(2, 5)]


def test_a_window_of_a_validation_sim_names_it(setup, cache_dirs, tiny_sim, tiny_config):
    """The last training sim's windows served from the next sim, a validation sim (an off-by-one without wrapping)."""
    from conftest import open_pipeline
    plan, ref, _, _ = setup
    every = open_pipeline('phiml', cache_dirs, tiny_config, sims=tiny_config.all_sims).dataset
    frames = FrameIndex(tiny_sim, tiny_config.all_sims)
    stream = [every.gather([WindowKey(3, k.t0) if k.sim == 2 else k for k in keys]) for keys in plan.batches]
    first = next((i, k) for i, keys in enumerate(plan.batches) for k in keys if k.sim == 2)
    d = diagnose_streams(ref, stream, plan, frames)
    assert (d.kind, d.first_batch) == ('wrong simulation', first[0])
    assert d.summary == (f"windows served from the wrong simulation: 7 of 21 windows are another sim's frames at the "
                         f"planned t0 (e.g. planned {first[1]}, served {WindowKey(3, first[1].t0)}); sims served: sim 3 "
                         f"in place of sim 2")
