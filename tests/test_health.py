import json

import numpy as np
import pytest
from phiml import math
from phiml.math import batch, channel, spatial

from harness.config import HealthConfig, load_config
from harness.errors import ConfigError
from harness.data.health import (HealthFinding, scan_dataset, scan_read, scan_served, scan_simulation, scan_tensors,
                                 with_pipeline_data)
from phiml_native import PhiMLDataManager, PhiMLDataset
from conftest import TINY
from harness.pipeline import WindowKey


@pytest.fixture(scope='module')
def values(tiny_sim):
    """The tiny scenario's velocity as an array (sim, time, x, y, vector); copy before changing it."""
    return tiny_sim.fields['velocity'].values.numpy('sim,time,x,y,vector')


def _scan(values, health=HealthConfig(), sims=None):
    tensor = math.wrap(values, batch('sim,time'), spatial('x,y'), channel(vector='x,y'))
    return scan_tensors({'velocity': tensor}, health, sims)


def test_simulation_is_healthy(tiny_sim, tiny_config):
    report = scan_simulation(tiny_sim, tiny_config.health)
    assert report and report.rows == [] and report.counts == dict.fromkeys(report.counts, 0)
    assert (report.sims, report.n_frames, report.fields) == ([0, 1, 2, 3], 9, ['velocity'])
    assert report.detail == ("healthy: 4 sims x 9 frames of 'velocity'; no NaN/Inf, constant or repeated frames, "
                             "no |value| > 100")


def test_each_check_reported_per_sim_and_frame(values):
    bad = values.copy()
    bad[1, 3, 2, 5, 0] = np.nan
    bad[1, 3, 0, 0, 1] = -np.inf
    bad[2, 5] = bad[2, 4]
    bad[0, 6] = 0.25
    bad[3, 2, 7, 1, 1] = -1e3
    report = _scan(bad)
    assert not report and len(report.failures) == 4
    assert report.rows == [
        HealthFinding(0, 6, 'velocity', 'constant', 'every cell holds (0.25, 0.25)', False),
        HealthFinding(1, 3, 'velocity', 'nonfinite', '1 NaN, 1 Inf of 512 values', False),
        HealthFinding(2, 5, 'velocity', 'repeated', 'bitwise equal to frame 4', False),
        HealthFinding(3, 2, 'velocity', 'out-of-bounds',
                      '|value| 1000 at x=7, y=1, vector=y exceeds `health.max_abs_value` (=100)', False),
    ]
    assert report.counts == {'nonfinite': 1, 'out-of-bounds': 1, 'constant': 1, 'repeated': 1}
    assert [r.frame for r in report.by_sim()[1]] == [3]
    assert report.detail == (
        "unhealthy: 4 sims x 9 frames of 'velocity'; "
        "nonfinite in 1 frame(s), not allowed (first: sim 1 frame 3 'velocity': nonfinite (1 NaN, 1 Inf of 512 values)); "
        "out-of-bounds in 1 frame(s), not allowed (first: sim 3 frame 2 'velocity': out-of-bounds (|value| 1000 at x=7, "
        "y=1, vector=y exceeds `health.max_abs_value` (=100))); "
        "constant in 1 frame(s), not allowed (first: sim 0 frame 6 'velocity': constant (every cell holds (0.25, 0.25))); "
        "repeated in 1 frame(s), not allowed (first: sim 2 frame 5 'velocity': repeated (bitwise equal to frame 4))")


def test_allowances_let_findings_through(values):
    bad = values.copy()
    bad[0, 1, 0, 0, 0] = np.nan
    bad[1, 2] = 0.0
    bad[2, 7] = bad[2, 6]
    lenient = HealthConfig(allow_nonfinite=True, allow_constant=True, allow_repeated=True)
    report = _scan(bad, lenient)
    assert report and report.rows == [
        HealthFinding(0, 1, 'velocity', 'nonfinite', '1 NaN, 0 Inf of 512 values', True),
        HealthFinding(1, 2, 'velocity', 'constant', 'every cell holds (0, 0)', True),
        HealthFinding(2, 7, 'velocity', 'repeated', 'bitwise equal to frame 6', True)]
    assert report.detail == (
        "healthy (findings allowed by config): 4 sims x 9 frames of 'velocity'; "
        "nonfinite in 1 frame(s), allowed by config (first: sim 0 frame 1 'velocity': nonfinite (1 NaN, 0 Inf of 512 "
        "values)); constant in 1 frame(s), allowed by config (first: sim 1 frame 2 'velocity': constant (every cell "
        "holds (0, 0))); repeated in 1 frame(s), allowed by config (first: sim 2 frame 7 'velocity': repeated (bitwise "
        "equal to frame 6))")
    for strict, refused in ((HealthConfig(allow_constant=True, allow_repeated=True), 'nonfinite'),
                            (HealthConfig(allow_nonfinite=True, allow_repeated=True), 'constant'),
                            (HealthConfig(allow_nonfinite=True, allow_constant=True), 'repeated')):
        strict_report = _scan(bad, strict)
        assert not strict_report and [(f.check, f.allowed) for f in strict_report.failures] == [(refused, False)]


def test_bound_is_configurable(values):
    peak = float(np.abs(values).max())
    assert not _scan(values, HealthConfig(max_abs_value=peak * 0.99))
    assert _scan(values, HealthConfig(max_abs_value=peak))
    assert _scan(values * 1e6, HealthConfig(max_abs_value=float('inf')))


def test_a_repeated_zero_sign_is_not_equal(values):
    """Repetition is bitwise: -0.0 after 0.0 is a change."""
    frames = values[:1, :2, :4, :4].copy()
    frames[0, 1] = frames[0, 0]
    assert [r.check for r in _scan(frames).rows] == ['repeated']
    frames[0, 0, 0, 0, 0], frames[0, 1, 0, 0, 0] = 0.0, -0.0
    assert _scan(frames).rows == []


def test_scalar_and_1d_fields():
    scalar = math.wrap(np.zeros((2, 3, 8), np.float32) + np.arange(8), batch('sim,time'), spatial('x'))
    report = scan_tensors({'density': scalar}, HealthConfig(), sims=[5, 6])
    assert [(r.sim, r.frame, r.check) for r in report.rows] == [(5, 1, 'repeated'), (5, 2, 'repeated'),
                                                                (6, 1, 'repeated'), (6, 2, 'repeated')]
    flat = math.wrap(np.ones((1, 2, 8), np.float32), batch('sim,time'), spatial('x'))
    assert scan_tensors({'p': flat}, HealthConfig()).rows == [
        HealthFinding(0, 0, 'p', 'constant', 'every cell holds 1', False),
        HealthFinding(0, 1, 'p', 'constant', 'every cell holds 1', False),
        HealthFinding(0, 1, 'p', 'repeated', 'bitwise equal to frame 0', False)]


def test_float64_values_are_not_rounded():
    """phiml's numpy(order) casts to float32 unless the precision is set; 1e-12 apart must stay apart."""
    frames = np.ones((1, 2, 4), np.float64) + np.arange(4) * 1e-3
    frames[0, 1] += 1e-12
    assert _checks(math.wrap(frames, batch('sim,time'), spatial('x'))) == []


def _checks(tensor):
    return [r.check for r in scan_tensors({'f': tensor}, HealthConfig()).rows]


def test_scan_dataset_uses_cache_sim_indices(cache_dirs, tiny_config):
    dataset = PhiMLDataset(PhiMLDataManager(cache_dirs['phiml']), [3, 1], tiny_config.data.rollout_steps)
    report = scan_dataset(dataset, tiny_config.health)
    assert report and report.sims == [3, 1] and report.n_frames == 9


def test_bad_input():
    tensor = math.wrap(np.zeros((2, 4)), batch('time'), spatial('x'))
    with pytest.raises(ValueError, match=r"field 'f' has dims \('time', 'x'\), expected `sim` and `time`"):
        scan_tensors({'f': tensor}, HealthConfig())
    good = math.wrap(np.zeros((2, 3, 4)), batch('sim,time'), spatial('x'))
    with pytest.raises(ValueError, match='`sims` has 1 entries'):
        scan_tensors({'f': good}, HealthConfig(), sims=[0])
    with pytest.raises(ConfigError, match=r'`health.max_abs_value` \(=0.0\) must be > 0'):
        load_config('burgers', [*TINY, 'health.max_abs_value=0'])
    with pytest.raises(ConfigError, match='health.allow_constant'):
        load_config('burgers', [*TINY, 'health.allow_constant=maybe'])


def test_to_dict_is_json(values):
    bad = values.copy()
    bad[0, 0, 0, 0, 0] = np.nan
    data = json.loads(json.dumps(_scan(bad).to_dict()))
    assert data['passed'] is False and data['counts']['nonfinite'] == 1
    assert data['rows'][0] == {'sim': 0, 'frame': 0, 'field': 'velocity', 'check': 'nonfinite',
                               'detail': '1 NaN, 0 Inf of 512 values', 'allowed': False, 'source': 'simulation'}
    assert data['config'] == {'max_abs_value': 100.0, 'allow_nonfinite': False, 'allow_constant': False,
                              'allow_repeated': False}


class _NaNServed:
    """A pipeline serving one NaN in the initial state of window (sim=1, t0=3), reaching `inner` only by its interface."""

    def __init__(self, inner):
        self.inner, self.rollout_steps, self.name = inner, inner.rollout_steps, inner.name

    def describe_file(self, sim):
        return self.inner.describe_file(sim)

    def window_keys(self):
        return self.inner.window_keys()

    def batches(self, plan):
        for keys, batch in zip(plan.batches, self.inner.batches(plan)):
            if WindowKey(1, 3) in keys:
                values = batch['initial_state'].numpy(batch['initial_state'].shape.names).copy()
                values[keys.index(WindowKey(1, 3)), 2, 5, 0] = np.nan
                batch = {**batch, 'initial_state': math.wrap(values, batch['initial_state'].shape)}
            yield batch


def test_what_pipelines_read_and_serve_is_scanned(both_pipelines, tiny_sim, tiny_config):
    """A NaN only in what a pipeline serves is named as the pipeline's, with sim and frame, and never allowed."""
    sims, health = tiny_config.train_sims, HealthConfig(allow_nonfinite=True)
    frames = {name: f.values.shape.without('sim') for name, f in tiny_sim.fields.items()}
    native = both_pipelines['phiml']
    read = scan_read((native.read_fields(sim)[0] for sim in sims), sims, health)
    assert read and read.rows == [] and (read.sims, read.n_frames) == (sims, 9)
    clean = with_pipeline_data(scan_simulation(tiny_sim, health),
                               {'legacy serves': scan_served(both_pipelines['legacy'], sims, frames, health),
                                'phiml reads': read, 'phiml serves': scan_served(native, sims, frames, health)})
    assert clean and clean.rows == [] and clean.sources == ['legacy serves', 'phiml reads', 'phiml serves']
    assert clean.detail == ("healthy: 4 sims x 9 frames of 'velocity' and what the pipelines read and serve (legacy "
                            "serves, phiml reads, phiml serves); no NaN/Inf, constant or repeated frames, no |value| > 100")
    served = scan_served(_NaNServed(native), sims, frames, health)
    assert served.rows == [HealthFinding(1, 3, 'velocity', 'nonfinite', '1 NaN, 0 Inf of 512 values', True)]
    report = with_pipeline_data(scan_simulation(tiny_sim, health), {'phiml serves': served})
    assert not report and report.failures == [
        HealthFinding(1, 3, 'velocity', 'nonfinite', '1 NaN, 0 Inf of 512 values', False, 'phiml serves')]
    assert report.detail == (
        "unhealthy: 4 sims x 9 frames of 'velocity' and what the pipelines read and serve (phiml serves); phiml serves "
        "nonfinite the simulation does not have, in 1 frame(s) (first: sim 1 frame 3 'velocity': 1 NaN, 0 Inf of 512 "
        "values): the pipeline's doing")


def test_a_finding_the_simulation_has_is_not_the_pipelines(values):
    bad = values.copy()
    bad[2, 4, 0, 0, 0] = np.inf
    simulated, served = _scan(bad, HealthConfig(allow_nonfinite=True)), _scan(bad, HealthConfig(allow_nonfinite=True))
    report = with_pipeline_data(simulated, {'phiml serves': served})
    assert report and report.rows == simulated.rows and report.rows[0].source == 'simulation'


def test_a_nan_in_what_a_pipeline_reads_is_its_own(tmp_path, tiny_sim, tiny_config, cache_dirs):
    """A cache file holding a NaN the simulation does not have (written by stock phiml.math.save), read one sim at a
    time."""
    from phiml_native import NativePipeline
    source = NativePipeline(cache_dirs['phiml'], 2)
    fields = {sim: source.read_fields(sim)[0] for sim in (0, 1)}
    values = fields[1]['velocity'].numpy('time,x,y,vector').copy()
    values[2, 4, 4, 1] = np.nan
    math.save(str(tmp_path / 'sim_000001.npz'), {'velocity': math.wrap(values, fields[1]['velocity'].shape),
                                                  'metadata': {'fields': ['velocity']}})
    math.save(str(tmp_path / 'sim_000000.npz'), {'velocity': fields[0]['velocity'], 'metadata': {'fields': ['velocity']}})
    damaged = NativePipeline(tmp_path, 2)
    read = scan_read((damaged.read_fields(sim)[0] for sim in (0, 1)), [0, 1], HealthConfig())
    assert read.rows == [HealthFinding(1, 2, 'velocity', 'nonfinite', '1 NaN, 0 Inf of 512 values', False)]
    report = with_pipeline_data(scan_simulation(tiny_sim, tiny_config.health), {'phiml reads': read})
    assert [(r.sim, r.frame, r.source) for r in report.failures] == [(1, 2, 'phiml reads')]
