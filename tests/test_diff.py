"""Strict, name-aware diff: structure first, statistics against hand-computed values, the three tiers, NaN."""
import numpy as np
import pytest
from phiml import math
from phiml.math import batch, channel, spatial

from harness.equivalence.diff import TensorDiff, Tolerance, ToleranceMap, compare_arrays, compare_batches, compare_tensors, resolve_tolerance
from harness.config import FieldTolerance


def _t(values, *dims):
    return math.wrap(np.asarray(values, np.float32), *dims)


def test_statistics_hand_computed():
    d = compare_arrays(np.array([1, 2, 3, 4], np.float32), np.array([1, 2, 3.5, 4], np.float32), ['x'])
    assert not d and not d.identical and d.n_elements == 4 and d.n_mismatched == 1
    assert d.mismatch_fraction == 0.25
    assert d.max_abs == 0.5 and d.mean_abs == 0.125 and d.median_abs == 0.0
    assert d.p99_abs == pytest.approx(0.485)  # linear interpolation between 0 and 0.5 at 0.99 * 3
    assert d.max_rel == pytest.approx(0.5 / 3.5)
    assert d.worst == {'x': 2} and d.worst_values == (3.0, 3.5)
    assert d.min_atol == 0.5 and d.min_rtol == pytest.approx(0.5 / 3.5)


def test_min_tolerance_would_pass():
    x, y = np.array([1, 2, 3, 4], np.float32), np.array([1, 2, 3.5, 4], np.float32)
    d = compare_arrays(x, y, ['x'])
    assert compare_arrays(x, y, ['x'], Tolerance('close', atol=d.min_atol))
    assert not compare_arrays(x, y, ['x'], Tolerance('close', atol=d.min_atol * 0.99))


def test_worst_element_named_with_window_and_items():
    a = _t(np.zeros((2, 3, 2)), batch('batch'), spatial('x'), channel(vector='x,y'))
    values = np.zeros((2, 3, 2), np.float32)
    values[1, 2, 1] = 7
    b = _t(values, batch('batch'), spatial('x'), channel(vector='x,y'))
    d = compare_tensors(a, b, name='targets', keys=['(sim=0, t0=1)', '(sim=5, t0=17)'])
    assert d.worst == {'batch': 1, 'window': '(sim=5, t0=17)', 'x': 2, 'vector': 'y'}
    assert 'batch=1, window=(sim=5, t0=17), x=2, vector=y' in d.describe()


def test_missing_dim_is_not_broadcast():
    a = _t(np.ones((2, 3)), batch('batch'), spatial('x'))
    b = _t(np.ones(3), spatial('x'))
    math.assert_close(a, b)  # the trap: PhiML broadcasts the missing dim and passes
    d = compare_tensors(a, b)
    assert not d and d.structure_errors == ["native lacks dim(s) ['batch']"]


@pytest.mark.parametrize('b_dims, words', [
    ((batch('batch'), spatial('y')), ["native lacks dim(s) ['x']", "native has extra dim(s) ['y']"]),
    ((batch('batch'), batch('x')), ["dim 'x' is batch in native, spatial in legacy"]),
    ((spatial('x'), batch('batch')), ["dim order ('x', 'batch') differs from legacy ('batch', 'x')"]),
], ids=['renamed', 'retyped', 'reordered'])
def test_structure_errors(b_dims, words):
    a = _t(np.ones((2, 2)), batch('batch'), spatial('x'))
    d = compare_tensors(a, _t(np.ones((2, 2)), *b_dims))
    assert not d and d.structure_errors == words


def test_item_names_and_dtype():
    a = _t(np.ones((3, 2)), spatial('x'), channel(vector='x,y'))
    assert "item names ('y', 'x') in native" in compare_tensors(a, math.rename_dims(a, 'vector', channel(vector='y,x'))).describe()
    b = math.wrap(np.ones((3, 2), np.float64), spatial('x'), channel(vector='x,y'))
    assert 'dtype float64 in native, float32 in legacy' in compare_tensors(a, b).describe()


def test_tiers_and_nan():
    x = np.array([1.0, np.nan, 3.0], np.float32)
    assert compare_arrays(x, x.copy(), ['x'])  # identical: same bits
    assert compare_arrays(x, x.copy(), ['x'], Tolerance('equal'))
    y = np.array([1.0, 2.0, 3.0], np.float32)
    for tier in ('identical', 'equal', 'close'):
        d = compare_arrays(x, y, ['x'], Tolerance(tier, rtol=1, atol=1))
        assert not d and d.n_mismatched == 1 and d.max_abs == np.inf, tier
    near = np.array([1.0, np.nan, 3.0 + 2e-7], np.float32)
    assert not compare_arrays(x, near, ['x'], Tolerance('equal'))
    assert compare_arrays(x, near, ['x'], Tolerance('close', rtol=1e-6))
    negzero = compare_arrays(np.array([0.0], np.float32), np.array([-0.0], np.float32), ['x'])
    assert not negzero  # bitwise tier tells -0.0 from 0.0
    assert compare_arrays(np.array([0.0], np.float32), np.array([-0.0], np.float32), ['x'], Tolerance('equal'))


def test_dtype_aware_defaults_and_field_overrides():
    assert resolve_tolerance('close', 0, 0, 'float32') == Tolerance('close', 1.3e-6, 1e-5)
    assert resolve_tolerance('close', None, None, 'float64') == Tolerance('close', 1e-7, 1e-7)
    assert resolve_tolerance('close', 1e-3, 0, 'float32') == Tolerance('close', 1e-3, 0)
    tolerances = ToleranceMap('identical', fields={'density': FieldTolerance(tier='close', rtol=1e-4)},
                              field_names=['density', 'velocity'])
    assert tolerances('targets/density') == Tolerance('close', 1e-4, 0)
    assert tolerances('targets/velocity') == Tolerance('identical')
    single = ToleranceMap('identical', fields={'velocity': FieldTolerance(tier='equal')}, field_names=['velocity'])
    assert single('targets') == Tolerance('equal')
    with pytest.raises(ValueError, match='`tier`'):
        Tolerance('approximately')


def test_compare_batches_by_name():
    t = _t(np.ones((2, 3)), batch('batch'), spatial('x'))
    diffs = compare_batches({'initial_state': t, 'targets': t}, {'initial_state': t})
    by_name = {d.name: d for d in diffs}
    assert by_name['initial_state'] and not by_name['targets']
    assert by_name['targets'].structure_errors == ["native batch has no 'targets'"]
    multi = compare_batches({'targets': {'velocity': t, 'density': t}}, {'targets': {'velocity': t, 'density': t * 2}})
    assert [(d.name, bool(d)) for d in multi] == [('targets/density', False), ('targets/velocity', True)]
    assert isinstance(multi[0], TensorDiff)


def test_float64_not_rounded_to_float32():
    a = math.wrap(np.array([1.0, 2.0]), spatial('x'))
    b = math.wrap(np.array([1.0, 2.0 + 1e-12]), spatial('x'))
    d = compare_tensors(a, b)
    assert not d and d.max_abs == pytest.approx(1e-12, rel=1e-3)
