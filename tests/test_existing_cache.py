"""Judging a team's own migration: caches in the migration plan's format, written here by plain numpy + `torch.save`
code that shares nothing with `legacy/`, read by the legacy pipeline, migrated bitwise and judged by
`python -m harness.compare SCENARIO --legacy-cache DIR [--native-cache DIR2]` with DIR (and DIR2) left untouched."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from phiml import math
from phiml.math import batch, channel, spatial

from harness.cli import compare, migrate
from user_data import tree_state

pytestmark = pytest.mark.slow
# timings are not what these tests judge (tests/test_compare.py and the verdict's own tests do): a busy machine must
# not turn a migration that is right into a failed test
UNTIMED = ['compare.min_speedup=0', 'sanity.enabled=false']  # random fields: no physics to check
FAST = [*UNTIMED, 'compare.selftest=false', 'compare.timing_repeats=1', 'compare.timing_warmup=0']


def team_cache(folder: Path, fields: dict[str, tuple], n_sims: int = 4, dtype=np.float32, seed: int = 0,
               zip_format: bool = True) -> dict:
    """Writes `folder/sim_XXXXXX.pt` as `{'tensor_data': {name: [C, T, *spatial]}, 'metadata': {...}}` with free-form
    metadata (no key of the harness), in torch's zip format or (`zip_format=False`) the one before torch 1.6; returns
    sim -> field -> the numpy array written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for sim in range(n_sims):
        arrays = {name: (rng.standard_normal(shape) * 0.5).astype(dtype) for name, shape in fields.items()}
        meta = {'case': 'channel-flow', 'Re': 180.0, 'run': sim, 'restart': None, 'tags': ['les', 'v2'],
                'solver': {'name': 'spectral', 'order': 4}}
        torch.save({'tensor_data': {k: torch.from_numpy(v) for k, v in arrays.items()}, 'metadata': meta},
                   folder / f'sim_{sim:06d}.pt', _use_new_zipfile_serialization=zip_format)
        written[sim] = arrays
    return written


def _compare(capsys, *argv) -> tuple[int, str]:
    code = compare.main(['burgers', '--quick', '--no-progress', *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out + err


LAYOUTS = {
    '2d-non-square': ({'velocity': (2, 9, 24, 16)}, {'velocity': ['x', 'y']}, []),
    '1d': ({'velocity': (1, 9, 32)}, {'velocity': ['x']}, []),
    '3d': ({'velocity': (3, 7, 8, 8, 4)}, {'velocity': ['x', 'y', 'z']}, []),
    'scalar-and-vector': ({'density': (1, 9, 16, 16), 'velocity': (2, 9, 16, 16)},
                          {'density': [], 'velocity': ['x', 'y']}, []),
    'named-channels': ({'rgb': (3, 9, 16, 16)}, {'rgb': ['r', 'g', 'b']}, ['--channels', 'rgb=r,g,b']),
}


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_compare_judges_a_teams_cache_go_and_leaves_it_untouched(tmp_path, capsys, layout):
    fields, channels, extra = LAYOUTS[layout]
    team = tmp_path / 'team-cache'
    team_cache(team, fields)
    before = tree_state(team)
    code, output = _compare(capsys, '--legacy-cache', team, '--out', tmp_path / 'out', *extra,
                            *(UNTIMED if layout == '2d-non-square' else FAST))
    assert code == 0, output
    assert tree_state(team) == before
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    first = next(iter(fields.values()))
    assert summary['verdict'] == 'go' and all(c['passed'] for c in summary['checks'])
    assert summary['source'] == {'folder': str(team), 'sims': [0, 1, 2, 3], 'n_frames': first[1],
                                 'resolution': list(first[2:]), 'fields': channels,
                                 'dtypes': {name: 'float32' for name in fields}}
    assert summary['caches']['legacy'] == {'folder': str(team), 'read_only': True}
    assert summary['caches']['phiml']['converted'] == [0, 1, 2, 3]
    html = (tmp_path / 'out' / 'index.html').read_text()
    assert f"<tr><th>resolution</th><td>{' × '.join(map(str, first[2:]))}</td></tr>" in html
    if layout == '2d-non-square':  # the self-test ran on the team's data as well
        assert len(summary['equivalence']['selftest']) == 22 and all(r['ok'] for r in summary['equivalence']['selftest'])


def test_migration_of_a_teams_cache_is_bitwise_and_keeps_the_metadata(tmp_path, capsys):
    team, target = tmp_path / 'team', tmp_path / 'npz'
    written = team_cache(team, {'density': (1, 5, 12, 8), 'velocity': (2, 5, 12, 8)}, n_sims=2, dtype=np.float64)
    before = tree_state(team)
    assert migrate.main([str(team), str(target), '--no-progress']) == 0
    assert tree_state(team) == before
    for sim, arrays in written.items():
        stock = math.load(str(target / f'sim_{sim:06d}.npz'))  # phiml's own reader
        assert stock['metadata'] == {'case': 'channel-flow', 'Re': 180.0, 'run': sim, 'restart': None,
                                     'tags': ['les', 'v2'], 'solver': {'name': 'spectral', 'order': 4},
                                     'fields': ['density', 'velocity']}
        assert type(stock['metadata']['Re']) is float and type(stock['metadata']['run']) is int
        assert stock['velocity'].shape == batch(time=5) & spatial(x=12, y=8) & channel(vector='x,y')
        assert stock['density'].shape == batch(time=5) & spatial(x=12, y=8)
        assert stock['velocity'].dtype == math.DType(float, 64)
        with math.precision(64):  # numpy(order) casts to the default precision otherwise
            assert np.array_equal(stock['velocity'].numpy('vector,time,x,y'), arrays['velocity'])
            assert np.array_equal(stock['density'].numpy('time,x,y'), arrays['density'][0])


def test_a_float64_cache_is_refused_for_training_unless_cast_and_then_judged_on_what_is_served(tmp_path, capsys):
    """Without `data.cast_float32` the refusal names the file, the dtype and the option; with it both pipelines serve
    float32 (the migrated native cache keeps float64, bitwise) and the batches compared are those served."""
    team = tmp_path / 'team'
    written = team_cache(team, {'velocity': (2, 9, 16, 16)}, dtype=np.float64)
    before = tree_state(team)
    code, output = _compare(capsys, '--legacy-cache', team, '--out', tmp_path / 'refused', *FAST)
    assert (code, output) == (2, f"python -m harness.compare: error: {team / 'sim_000000.pt'}: field 'velocity' has "
                                 f"dtype torch.float64, expected torch.float32 for training (the option "
                                 f"data.cast_float32=true casts float16/float64 caches to float32 when opened)\n")
    code, output = _compare(capsys, '--legacy-cache', team, '--out', tmp_path / 'out', *FAST, 'data.cast_float32=true')
    assert code == 0, output
    assert tree_state(team) == before
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['verdict'] == 'go' and summary['source']['dtypes'] == {'velocity': 'float64'}
    migrated = math.load(str(tmp_path / 'out' / 'native-cache' / 'sim_000003.npz'))['velocity']
    with math.precision(64):
        assert np.array_equal(migrated.numpy('vector,time,x,y'), written[3]['velocity'])  # float64, bitwise
    from harness.config import load_config
    from harness.plan import make_plan
    from legacy import LegacyPipeline
    from phiml_native import NativePipeline
    config = load_config('burgers', ['data.cast_float32=true', 'data.rollout_steps=2'])
    for cls, folder in ((LegacyPipeline, team), (NativePipeline, tmp_path / 'out' / 'native-cache')):
        pipeline = cls.configured(config)(folder, 2)
        pipeline.open([1])
        plan = make_plan(pipeline.window_keys(), 4, seed=0, epoch=0)
        for keys, raw in zip(plan.batches, pipeline.load_batches(plan)):
            targets = pipeline.to_phiml(raw)['targets']
            assert targets.dtype == math.DType(float, 32)
            expected = np.stack([written[1]['velocity'][:, k.t0 + 1:k.t0 + 3] for k in keys]).astype(np.float32)
            assert np.array_equal(targets.numpy('batch,vector,time,x,y'), expected)


@pytest.mark.parametrize('listed', [True, False], ids=['fields-listed', 'plan-format'])
def test_a_teams_own_native_cache_is_judged_and_left_untouched(tmp_path, capsys, listed):
    """--native-cache: the team's own .npz files, written by stock phiml.math.save, with the metadata key 'fields' or
    in the migration plan's format without it (`{'velocity': Tensor, 'metadata': {...}}`)."""
    team, native = tmp_path / 'team', tmp_path / 'team-npz'
    written = team_cache(team, {'velocity': (2, 9, 16, 16)})
    native.mkdir()
    for sim, arrays in written.items():
        velocity = math.wrap(np.moveaxis(arrays['velocity'], 0, -1), batch('time'), spatial('x,y'), channel(vector='x,y'))
        meta = torch.load(team / f'sim_{sim:06d}.pt', weights_only=True)['metadata']  # carried over, as it must be
        meta = {**meta, 'fields': ['velocity']} if listed else meta
        math.save(str(native / f'sim_{sim:06d}.npz'), {'velocity': velocity, 'metadata': meta})
    before = tree_state(team, native)
    code, output = _compare(capsys, '--legacy-cache', team, '--native-cache', native, '--out', tmp_path / 'out', *FAST)
    assert code == 0, output
    assert tree_state(team, native) == before
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['caches'] == {'legacy': {'folder': str(team), 'read_only': True},
                                 'phiml': {'folder': str(native), 'read_only': True}}
    assert not (tmp_path / 'out' / 'native-cache').exists()
    # the report's line that reproduces the run names both caches
    assert summary['provenance']['overrides'] == ['--quick', '--legacy-cache', str(team), '--native-cache', str(native),
                                                  *FAST]


def test_a_config_of_ones_own_is_judged_and_its_flip_names_it(tmp_path, capsys, monkeypatch):
    """The scenario given as the path of a team's own YAML file: the report names it, and the GO's flip changes it."""
    from harness.config import CONFIG_DIR
    team = tmp_path / 'team'
    team_cache(team, {'velocity': (2, 9, 16, 16)})
    (tmp_path / 'ours.yaml').write_text((CONFIG_DIR / 'burgers.yaml').read_text())
    monkeypatch.chdir(tmp_path)
    code = compare.main(['ours.yaml', '--quick', '--no-progress', '--legacy-cache', 'team', '--out', 'out', *FAST])
    output = capsys.readouterr().out
    assert code == 0, output
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['scenario'] == 'ours.yaml'
    flip = output.splitlines()[-1]
    assert flip.startswith("to train on the native pipeline by default (ours.yaml line ") and flip.endswith(" ours.yaml")
    assert "python -m harness.train ours.yaml" in (tmp_path / 'out' / 'index.html').read_text()


def test_a_cache_in_the_format_before_torch_1_6_is_migrated_and_judged(tmp_path, capsys):
    team = tmp_path / 'team'
    written = team_cache(team, {'velocity': (2, 9, 16, 16)}, zip_format=False)
    assert not zipfile.is_zipfile(team / 'sim_000000.pt')
    before = tree_state(team)
    assert migrate.main([str(team), str(tmp_path / 'npz'), '--no-progress']) == 0
    stock = math.load(str(tmp_path / 'npz' / 'sim_000003.npz'))  # phiml's own reader
    np.testing.assert_array_equal(stock['velocity'].numpy('vector,time,x,y'), written[3]['velocity'])
    code, output = _compare(capsys, '--legacy-cache', team, '--native-cache', tmp_path / 'npz', '--out',
                            tmp_path / 'out', *FAST)
    assert code == 0, output
    assert tree_state(team) == before


def test_a_cache_with_numpy_and_torch_values_in_its_metadata_is_migrated_and_judged(tmp_path, capsys):
    """Metadata as numpy and torch code often write it (np.float32 dt, np.int64 run, np.bool_ flag, np.array extents,
    torch scalars and vectors): read as the Python values they hold, carried into the native cache as such, and judged
    go; the team's folder is left untouched."""
    team = tmp_path / 'team'
    team.mkdir()
    rng = np.random.default_rng(0)
    for sim in range(4):
        velocity = torch.from_numpy((rng.standard_normal((2, 9, 16, 16)) * 0.5).astype(np.float32))
        meta = {'dt': np.float32(0.01), 'run': np.int64(sim), 'stable': np.bool_(True), 'grid': [np.int32(16), 16],
                'extent': np.array([[0.0, 1.0], [0.0, 2.0]]), 'probes': np.array([3, 7], np.int16),
                'nu': torch.tensor(0.5), 'origin': torch.tensor([1, 2])}
        torch.save({'tensor_data': {'velocity': velocity}, 'metadata': meta}, team / f'sim_{sim:06d}.pt')
    before = tree_state(team)
    assert migrate.main([str(team), str(tmp_path / 'npz'), '--no-progress']) == 0
    stock = math.load(str(tmp_path / 'npz' / 'sim_000002.npz'))['metadata']  # phiml's own reader
    assert stock == {'dt': float(np.float32(0.01)), 'run': 2, 'stable': True, 'grid': [16, 16],
                     'extent': [[0.0, 1.0], [0.0, 2.0]], 'probes': [3, 7], 'nu': 0.5, 'origin': [1, 2],
                     'fields': ['velocity']}
    assert [type(stock[k]) for k in ('dt', 'run', 'stable', 'nu')] == [float, int, bool, float]
    assert [type(x) for x in stock['extent'][1] + stock['probes'] + stock['origin']] == [float, float, int, int, int, int]
    code, output = _compare(capsys, '--legacy-cache', team, '--out', tmp_path / 'out', *FAST)
    assert code == 0, output
    assert tree_state(team) == before
    checks = {c['name']: c for c in json.loads((tmp_path / 'out' / 'summary.json').read_text())['checks']}
    assert checks['metadata carried']['passed'] and "8 keys" in checks['metadata carried']['detail']


@pytest.mark.parametrize('argv, message', [
    (['--native-cache', 'npz'], "--native-cache (='npz') needs --legacy-cache DIR: the legacy cache is the source of "
                                "truth it is judged against"),
    (['--legacy-cache', 'team', '--cache-dir', 'c'],
     "--legacy-cache (='team') judges an existing cache and writes nothing into it: --cache-dir and --repair (for the "
     "harness's simulated caches) do not apply"),
    (['--legacy-cache', 'team', '--channels', 'rgb'], "--channels (='rgb') must be FIELD=a,b,c (or FIELD= for a scalar "
                                                       "field), e.g. velocity=u,v"),
], ids=['native-alone', 'with-cache-dir', 'bad-channels'])
def test_bad_usage_is_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, output = _compare(capsys, *argv)
    assert (code, output) == (2, f"python -m harness.compare: error: {message}\n")


def test_unnamed_channels_are_refused_with_the_way_to_name_them(tmp_path, capsys):
    team = tmp_path / 'team'
    team_cache(team, {'rgb': (3, 9, 16, 16)}, n_sims=2)
    before = tree_state(team)
    code, output = _compare(capsys, '--legacy-cache', team, '--out', tmp_path / 'out')
    assert (code, output) == (2, f"python -m harness.compare: error: {team / 'sim_000000.pt'}: field 'rgb' has C=3 "
                                 f"channels: only C=2 (one per spatial dim ['x', 'y']) or C=1 (a scalar field) are named "
                                 f"from the shape; name them with --channels rgb=a,b,... or the config key "
                                 f"data.channels.rgb\n")
    assert tree_state(team) == before and not (tmp_path / 'out').exists()


@pytest.mark.parametrize('make, words', [
    (lambda team: None, "the legacy cache folder does not exist"),
    (lambda team: team.mkdir(), "no sim_XXXXXX.pt files (expected the legacy cache to judge)"),
], ids=['missing', 'empty'])
def test_a_cache_folder_that_cannot_be_judged_leaves_nothing_behind(tmp_path, capsys, make, words):
    team = tmp_path / 'team'
    make(team)
    code, output = _compare(capsys, '--legacy-cache', team, '--out', tmp_path / 'out')
    assert (code, output) == (2, f"python -m harness.compare: error: {team}: {words}\n")
    assert not (tmp_path / 'out').exists()
