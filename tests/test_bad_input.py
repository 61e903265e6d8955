"""Bad input: every case ends in one clear error naming the file or parameter, and nothing already on disk changes.

Library errors are `HarnessError`s (one line each); the migrate CLI turns them into one line on stderr and exit
code 2. (The compare CLI's cases are tested with the compare CLI.)
"""
import shutil

import pytest
import torch

from harness.cache.build import build_cache, verify_cache
from harness.config import load_config, load_config_file
from harness.errors import CacheError, ConfigError, HarnessError
from harness.cache.manifest import sha256_file
from harness.cli.migrate import main
from legacy import DataManager
from phiml_native import PhiMLDataManager
from conftest import PIPELINE_IDS, PIPELINES, TINY

PROG = 'python -m harness.migrate: error: '


def _snapshot(*folders):
    return {p: (sha256_file(p), p.stat().st_mtime_ns) for f in folders if f.exists() for p in sorted(f.rglob('*'))
            if p.is_file()}


def _migrate_fails(capsys, *argv) -> str:
    """Runs the migrate CLI in-process; asserts exit code 2 and one line on stderr; returns that line."""
    code = main([*map(str, argv), '--no-progress'])
    out, err = capsys.readouterr()
    assert code == 2 and out == ''
    assert err.startswith(PROG) and err.endswith('\n') and err.count('\n') == 1, err
    return err


def _one_line(err: HarnessError) -> str:
    message = str(err)
    assert '\n' not in message and 'Traceback' not in message
    return message


def test_unknown_scenario():
    with pytest.raises(ConfigError) as info:
        load_config('burgerz')
    assert _one_line(info.value) == "unknown scenario 'burgerz': expected one of ['burgers', 'burgers1d', 'burgers3d', 'smoke'] or a .yaml file"


def test_malformed_yaml(tmp_path):
    path = tmp_path / 'broken.yaml'
    path.write_text('sim:\n  resolution: [32, 32\n  dt: 0.01\n')
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert _one_line(info.value).startswith(f"{path}: not a valid YAML config (")
    assert path.read_bytes() == before


def test_unknown_override_key():
    with pytest.raises(ConfigError) as info:
        load_config('burgers', ['sim.resolutoin=[8,8]'])
    assert 'sim.resolutoin' in _one_line(info.value)


def test_value_of_the_wrong_type():
    with pytest.raises(ConfigError) as info:
        load_config('burgers', ['health.max_abs_value=big'])
    message = _one_line(info.value)
    assert '`health.max_abs_value`' in message and 'big' in message


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_output_folder_cannot_be_written(tiny_config, tiny_sim, tmp_path, name):
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('a file where the cache folder should go')
    with pytest.raises(OSError) as info:
        build_cache(PIPELINES[name](blocker / 'cache', tiny_config.data.rollout_steps), tiny_config, tiny_sim)
    assert info.value.filename == str(blocker / 'cache')
    assert blocker.read_text() == 'a file where the cache folder should go'


def test_migrate_to_a_folder_that_cannot_be_written(cache_dirs, tmp_path, capsys):
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('keep me')
    before = _snapshot(cache_dirs['legacy'])
    err = _migrate_fails(capsys, cache_dirs['legacy'], blocker / 'npz')
    assert err == f"{PROG}cannot use {str(blocker / 'npz')!r}: Not a directory\n"
    assert blocker.read_text() == 'keep me' and _snapshot(cache_dirs['legacy']) == before
    err = _migrate_fails(capsys, cache_dirs['legacy'], blocker)
    assert err == f"{PROG}{blocker}: exists and is not a folder (expected the folder of the native cache)\n"


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_empty_cache_folder(tmp_path, tiny_config, name, capsys):
    report = verify_cache(tmp_path, PIPELINES[name])
    assert not report and report.folder_problem.startswith(f"{tmp_path}: empty cache folder (no sim_XXXXXX")
    with pytest.raises(CacheError) as info:
        PIPELINES[name](tmp_path, tiny_config.data.rollout_steps).open(tiny_config.train_sims)
    assert _one_line(info.value).startswith(f"{tmp_path / ('sim_000000' + PIPELINES[name].file_suffix)}: cache file missing")
    if name == 'legacy':
        err = _migrate_fails(capsys, tmp_path, tmp_path / 'npz')
        assert err == f"{PROG}{tmp_path}: empty cache folder (no sim_XXXXXX.pt files to migrate)\n"
        assert not (tmp_path / 'npz').exists()
    assert list(tmp_path.iterdir()) == []


def _shrink_sim_1(folder, name):
    """Rewrites sim 1 at 8x8 cells: one cache, two resolutions."""
    if name == 'legacy':
        data = DataManager(folder).load_cache(1)
        meta = {**data['metadata'], 'resolution': [8, 8]}
        DataManager(folder).save_cache(1, {'velocity': data['tensor_data']['velocity'][:, :, :8, :8].clone()}, meta)
    else:
        data = PhiMLDataManager(folder).load_cache(1)
        small = data['velocity'][{'x': slice(0, 8), 'y': slice(0, 8)}]
        PhiMLDataManager(folder).save_cache(1, {'velocity': small, 'metadata': {**data['metadata'], 'resolution': [8, 8]}})


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_sims_of_different_resolutions(cache_dirs, tiny_config, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(cache_dirs[name], folder)
    _shrink_sim_1(folder, name)
    suffix = PIPELINES[name].file_suffix
    before = _snapshot(folder)
    with pytest.raises(CacheError) as info:
        PIPELINES[name](folder, tiny_config.data.rollout_steps).open([0, 1])
    message = _one_line(info.value)
    assert message.startswith(f"{folder / ('sim_000001' + suffix)}: fields/shape") and f"sim_000000{suffix}" in message
    assert 'one cache must hold sims of one resolution' in message
    problem, = [p for p in verify_cache(folder, PIPELINES[name]).problems if p.kind == 'wrong-shape']
    assert problem.sim == 1 and "'velocity': 9 frames of 8x8 cells differ from" in problem.detail
    assert _snapshot(folder) == before


def test_migrate_sims_of_different_resolutions(cache_dirs, tmp_path, capsys):
    folder = tmp_path / 'legacy'
    shutil.copytree(cache_dirs['legacy'], folder)
    _shrink_sim_1(folder, 'legacy')
    before = _snapshot(folder)
    err = _migrate_fails(capsys, folder, tmp_path / 'npz')
    assert err == (f"{PROG}{folder / 'sim_000001.pt'}: fields velocity (time=9, x=8, y=8, vector=2) float32 differ "
                   f"from sim_000000.pt: velocity (time=9, x=16, y=16, vector=2) float32; one cache must hold sims of "
                   f"one resolution and one set of fields\n")
    assert _snapshot(folder) == before and not (tmp_path / 'npz').exists()


@pytest.mark.parametrize('layout, words', [
    (lambda t: t.transpose(0, 1).contiguous(), 'metadata n_frames=9, the tensors hold T=2 frames'),
    (lambda t: t[0].contiguous(), 'metadata n_frames=9, the tensors hold T=16 frames'),
    (lambda t: t[..., None].contiguous(), "metadata spatial_dims=['x', 'y'], the tensors have 3 spatial axes ['x', 'y', 'z']"),
    (lambda t: t[0:1].expand(5, -1, -1, -1).contiguous(),
     "field 'velocity' has C=5 channels: only C=2 (one per spatial dim ['x', 'y']) or C=1 (a scalar field) are named "
     "from the shape; name them with --channels velocity=a,b,... or the config key data.channels.velocity"),
], ids=['TCHW', 'THW', 'CTHW1', 'C5'])
def test_legacy_file_not_CTHW(cache_dirs, tmp_path, capsys, layout, words):
    folder = tmp_path / 'legacy'
    shutil.copytree(cache_dirs['legacy'], folder)
    data = torch.load(folder / 'sim_000002.pt', weights_only=True)
    data['tensor_data']['velocity'] = layout(data['tensor_data']['velocity'])
    torch.save(data, folder / 'sim_000002.pt')
    before = _snapshot(folder)
    err = _migrate_fails(capsys, folder, tmp_path / 'npz')
    if words.startswith('field'):  # no hint names these channels: our own field_channels key is dropped
        data['metadata'].pop('field_channels')
        torch.save(data, folder / 'sim_000002.pt')
        before = _snapshot(folder)
        err = _migrate_fails(capsys, folder, tmp_path / 'npz')
    assert err == f"{PROG}{folder / 'sim_000002.pt'}: {words}\n"
    assert _snapshot(folder) == before and not (tmp_path / 'npz').exists()


@pytest.mark.parametrize('argv, words', [
    (lambda tmp, legacy: [tmp / 'nowhere', tmp / 'npz'], "{tmp}/nowhere: legacy cache folder does not exist"),
    (lambda tmp, legacy: [legacy, legacy], "{legacy}: the native cache needs a folder of its own"),
    (lambda tmp, legacy: [legacy], "the following arguments are required: NPZ_DIR (see --help)"),
    (lambda tmp, legacy: [legacy, tmp / 'npz', '--fast'], "unrecognized arguments: --fast (see --help)"),
], ids=['no-source', 'same-folder', 'missing-argument', 'unknown-option'])
def test_migrate_usage_errors(cache_dirs, tmp_path, capsys, argv, words):
    legacy = tmp_path / 'legacy'
    shutil.copytree(cache_dirs['legacy'], legacy)
    before = _snapshot(legacy)
    code = main([str(a) for a in argv(tmp_path, legacy)])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and words.format(tmp=tmp_path, legacy=legacy) in err
    assert _snapshot(legacy) == before and not (tmp_path / 'npz').exists()


def test_tiny_config_is_valid():
    """The fixtures above rely on it."""
    assert load_config('burgers', TINY).sim.n_frames == 9
