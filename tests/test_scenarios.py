"""The scenarios beyond 2-D Burgers: 1-D and 3-D Burgers and the two-field smoke plume, each through both pipelines,
the diff, the diagnosis and the self-test; `--quick` adapted to each."""
import pytest

from conftest import SMOKE_TINY
from harness.config import available_scenarios, load_config, quick_overrides
from harness.data.simulate import simulate
from harness.errors import ConfigError
from harness.plan import make_plan
from harness.selftest.run import run_selftest
from legacy import LegacyPipeline
from phiml_native import NativePipeline

GENERIC = ['sim.n_steps=10', 'data.n_sims=3', 'data.n_val_sims=1', 'data.rollout_steps=2', 'data.batch_size=4',
           'model.levels=1', 'model.filters=4', 'trainer.epochs=2', 'compare.timing_repeats=5',
           'compare.min_speedup.write=0', 'compare.min_speedup.read=0']
VECTOR_BUGS = {'x and y transposed', 'vector components swapped', 'vector item names swapped'}


def test_every_scenario_is_shipped():
    assert available_scenarios() == ['burgers', 'burgers1d', 'burgers3d', 'smoke']


@pytest.mark.parametrize('scenario, quick', [
    ('burgers', ['sim.resolution=[16,16]', *GENERIC]),
    ('burgers1d', ['sim.resolution=[16]', *GENERIC]),
    ('burgers3d', ['sim.resolution=[16,16,16]', *GENERIC, 'sim.resolution=[8,8,8]']),
    ('smoke', ['sim.resolution=[16,16]', *GENERIC]),
])
def test_quick_fits_each_scenario(scenario, quick):
    assert quick_overrides(scenario) == quick
    config = load_config(scenario, quick)
    assert config.sim.resolution == {'burgers3d': [8, 8, 8], 'burgers1d': [16]}.get(scenario, [16, 16])
    assert config.data.pipeline == 'legacy'  # the shipped default until a team flips it


def test_1d_advection_is_rusanov():
    assert load_config('burgers1d').sim.burgers_advection == 'rusanov'
    assert load_config('burgers').sim.burgers_advection == 'semi_lagrangian'
    with pytest.raises(ConfigError, match=r"`sim.advection` \(='semi_lagrangian'\) needs 2 or 3 spatial dims: torch's "
                                          r"grid_sample has no 1-D mode"):
        load_config('burgers1d', ['sim.advection=semi_lagrangian'])
    with pytest.raises(ConfigError, match=r"must have 2 entries \(x, y\) for physics='smoke'"):
        load_config('smoke', ['sim.resolution=[16,16,16]'])


@pytest.fixture(scope='module', params=['burgers1d', 'burgers3d', 'smoke'])
def scenario_caches(request, tmp_path_factory):
    """A tiny run of each scenario and both pipelines' caches of it."""
    if request.param == 'smoke':
        simulation = request.getfixturevalue('smoke_sim')
    else:
        small = ['sim.resolution=[8,8,8]'] if request.param == 'burgers3d' else []
        simulation = simulate(load_config(request.param, [*quick_overrides(request.param), *small, *SMOKE_TINY[1:]]))
    root = tmp_path_factory.mktemp(request.param)
    config = simulation.config
    for cls in (LegacyPipeline, NativePipeline):
        pipeline = cls(root / cls.name, config.data.rollout_steps)
        for sim in config.train_sims:
            pipeline.write_cache(sim, simulation.sim_fields(sim), simulation.metadata(sim))
    return request.param, simulation, root


def test_both_pipelines_serve_the_contract(scenario_caches):
    scenario, simulation, root = scenario_caches
    config = simulation.config
    batches = {}
    for cls in (LegacyPipeline, NativePipeline):
        pipeline = cls(root / cls.name, config.data.rollout_steps)
        pipeline.open(config.train_sims)
        batches[cls.name] = next(pipeline.batches(make_plan(pipeline.window_keys(), 4, seed=0, epoch=0)))
    spatial = {'burgers1d': ('x',), 'burgers3d': ('x', 'y', 'z'), 'smoke': ('x', 'y')}[scenario]
    for batch in batches.values():
        fields = batch['initial_state'] if isinstance(batch['initial_state'], dict) else {'velocity': batch['initial_state']}
        assert sorted(fields) == (['density', 'velocity'] if scenario == 'smoke' else ['velocity'])
        assert fields['velocity'].shape.names == ('batch', *spatial, 'vector')
        assert fields['velocity'].shape.get_item_names('vector') == spatial
        if scenario == 'smoke':
            assert fields['density'].shape.names == ('batch', 'x', 'y')  # a scalar field: no vector dim
            assert batch['targets']['density'].shape.names == ('batch', 'time', 'x', 'y')


def test_selftest_passes_in_every_scenario(scenario_caches):
    scenario, simulation, root = scenario_caches
    result = run_selftest(simulation.config, LegacyPipeline, NativePipeline, simulation, root / 'legacy', root / 'phiml')
    assert result, result.table()
    assert set(result.skipped) == (VECTOR_BUGS if scenario == 'burgers1d' else set())
    assert len(result.rows) + len(result.skipped) == 22  # the clean pipeline and all 21 bugs
    rows = {r.bug: r for r in result.rows}
    if scenario != 'burgers1d':
        assert rows['vector components swapped'].kind == 'layout'
        assert 'vector components reversed' in rows['vector components swapped'].diagnosis
    assert rows['data normalised twice'].kind == 'value transform'


def test_the_flip_is_one_line_that_makes_phiml_the_default(tmp_path):
    import subprocess
    from harness.config import CONFIG_DIR, load_config_file
    from harness.report.flip import default_flip
    flip = default_flip('smoke')
    lines = (CONFIG_DIR / 'smoke.yaml').read_text().splitlines()
    assert flip['file'] == 'harness/configs/smoke.yaml' and flip['current'] == 'legacy'
    assert lines[flip['line'] - 1] == flip['before'] and flip['before'].startswith('  pipeline: legacy ')
    copy = tmp_path / 'harness' / 'configs' / 'smoke.yaml'
    copy.parent.mkdir(parents=True)
    copy.write_text((CONFIG_DIR / 'smoke.yaml').read_text())
    subprocess.run(flip['command'], shell=True, cwd=tmp_path, check=True)
    changed = copy.read_text().splitlines()
    assert [i for i, (a, b) in enumerate(zip(lines, changed)) if a != b] == [flip['line'] - 1]
    assert changed[flip['line'] - 1] == flip['after'] and len(changed) == len(lines)
    assert load_config_file(copy).data.pipeline == 'phiml'
    assert default_flip('nosuch') is None


def test_the_flip_names_the_installed_config_when_run_from_another_folder(tmp_path, monkeypatch):
    """Installed as a wheel, the configs lie in site-packages: the flip names that file, not a path that does not
    exist below the user's working folder."""
    import subprocess
    from harness import config
    from harness.report.flip import default_flip
    installed = tmp_path / 'site packages' / 'harness' / 'configs'
    installed.mkdir(parents=True)
    (installed / 'smoke.yaml').write_text((config.CONFIG_DIR / 'smoke.yaml').read_text())
    elsewhere = tmp_path / 'work'
    elsewhere.mkdir()
    monkeypatch.setattr(config, 'CONFIG_DIR', installed)
    monkeypatch.chdir(elsewhere)
    flip = default_flip('smoke')
    assert flip['file'] == str(installed.resolve() / 'smoke.yaml')
    subprocess.run(flip['command'], shell=True, cwd=elsewhere, check=True)
    assert (installed / 'smoke.yaml').read_text().splitlines()[flip['line'] - 1] == flip['after']
    assert list(elsewhere.iterdir()) == []


def test_the_flip_of_a_config_of_ones_own_changes_that_file(tmp_path, monkeypatch):
    """A team's own copy of a scenario (outside site-packages on a wheel install): the flip names and changes it."""
    import subprocess
    from harness.config import CONFIG_DIR, load_config
    from harness.report.flip import default_flip
    ours = tmp_path / 'team configs' / 'burgers.yaml'
    ours.parent.mkdir()
    ours.write_text((CONFIG_DIR / 'burgers.yaml').read_text())
    shipped = (CONFIG_DIR / 'burgers.yaml').read_text()
    monkeypatch.chdir(tmp_path)
    flip = default_flip('team configs/burgers.yaml')
    assert flip['file'] == 'team configs/burgers.yaml' and flip['current'] == 'legacy'
    subprocess.run(flip['command'], shell=True, cwd=tmp_path, check=True)
    assert load_config('team configs/burgers.yaml').data.pipeline == 'phiml'
    assert (CONFIG_DIR / 'burgers.yaml').read_text() == shipped and default_flip('nosuch.yaml') is None
