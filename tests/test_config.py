import dataclasses

import pytest

from harness.config import available_scenarios, load_config
from harness.errors import ConfigError


def test_burgers_defaults():
    config = load_config('burgers')
    assert config.sim.resolution == [32, 32]
    assert config.sim.n_frames == config.sim.n_steps + 1
    assert config.windows_per_sim == config.sim.n_frames - config.data.rollout_steps
    assert config.train_sims == list(range(config.data.n_sims))
    assert config.val_sims == list(range(config.data.n_sims, config.data.n_sims + config.data.n_val_sims))
    assert 'burgers' in available_scenarios()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_config('burgers').seed = 1


def test_overrides_applied():
    config = load_config('burgers', ['trainer.epochs=5', 'data.n_sims=3', 'sim.resolution=[64]'])
    assert (config.trainer.epochs, config.data.n_sims, config.sim.resolution) == (5, 3, [64])
    assert config.sim.spatial_dims == ('x',)


@pytest.mark.parametrize('override, words', [
    ('data.rollout_steps=41', '`data.rollout_steps` (=41)'),
    ('data.batch_size=0', '`data.batch_size` (=0)'),
    ('sim.resolution=[2,2]', '`sim.resolution` (=[2, 2])'),
    ('data.n_sims=0', '`data.n_sims` (=0)'),
    ('sim.resolution=[8,8,8,8]', '1, 2 or 3 entries'),
    ('model.kind=mlp', '`model.kind`'),
    ('data.unknown=1', 'data.unknown'),
    ('data.batch_size=abc', 'data.batch_size'),
    ('seed=1.5', 'seed'),
    ('novalue', 'key=value'),
    ('compare.one_time_share=-0.1', '`compare.one_time_share` (=-0.1) must be >= 0'),
])
def test_bad_values_named(override, words):
    with pytest.raises(ConfigError) as info:
        load_config('burgers', [override])
    assert words in str(info.value)


def test_unknown_scenario():
    with pytest.raises(ConfigError, match="unknown scenario 'nope'.*burgers"):
        load_config('nope')


def test_a_yaml_file_of_ones_own_is_a_scenario(tmp_path, monkeypatch):
    """A team's own copy of a scenario, named by its path (relative to the working folder or absolute)."""
    from harness.config import CONFIG_DIR
    (tmp_path / 'ours.yaml').write_text((CONFIG_DIR / 'burgers.yaml').read_text().replace('seed: 42', 'seed: 7'))
    monkeypatch.chdir(tmp_path)
    assert load_config('ours.yaml').seed == 7 and load_config(str(tmp_path / 'ours.yaml'), ['seed=8']).seed == 8
    with pytest.raises(ConfigError) as info:
        load_config('theirs.yml')
    assert str(info.value) == ("config file 'theirs.yml' not found (expected a YAML file, or a scenario name: one of "
                               "['burgers', 'burgers1d', 'burgers3d', 'smoke'])")


@pytest.mark.parametrize('override, key, value', [
    ('sim.dt=inf', 'sim.dt', 'inf'),
    ('sim.viscosity=nan', 'sim.viscosity', 'nan'),
    ('sim.domain_size=.inf', 'sim.domain_size', 'inf'),
    ('sim.noise_scale=inf', 'sim.noise_scale', 'inf'),
    ('trainer.learning_rate=inf', 'trainer.learning_rate', 'inf'),
    ('compare.rtol=nan', 'compare.rtol', 'nan'),
    ('compare.atol=inf', 'compare.atol', 'inf'),
    ('compare.loss_rtol=inf', 'compare.loss_rtol', 'inf'),
    ('compare.min_speedup=nan', 'compare.min_speedup.write', 'nan'),  # a number sets every stage: the first is named
    ('compare.min_speedup.step=-inf', 'compare.min_speedup.step', '-inf'),
    ('compare.confidence=nan', 'compare.confidence', 'nan'),
    ('compare.max_memory_ratio=nan', 'compare.max_memory_ratio', 'nan'),
    ('compare.fields.velocity.atol=nan', 'compare.fields.velocity.atol', 'nan'),
    ('compare.fields.velocity.rtol=inf', 'compare.fields.velocity.rtol', 'inf'),
    ('health.max_abs_value=nan', 'health.max_abs_value', 'nan'),
])
def test_non_finite_floats_refused(override, key, value):
    with pytest.raises(ConfigError) as info:
        load_config('burgers', [override])
    assert str(info.value) == f"`{key}` (={value}) must be a finite number"


def test_infinite_health_bound_disables_it():
    """The one documented infinity: `health.max_abs_value: .inf` means no bound (NaN and -inf are still refused)."""
    assert load_config('burgers', ['health.max_abs_value=.inf']).health.max_abs_value == float('inf')
