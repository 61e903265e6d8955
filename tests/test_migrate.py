import math as pymath
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from phiml import math

import harness.cache.migrate
from harness.cache.build import verify_cache
from harness.equivalence.diff import compare_tensors
from harness.errors import CacheError
from harness.cache.manifest import MANIFEST_NAME, Manifest, sha256_file
from harness.cli.migrate import main
from legacy import DataManager, LegacyPipeline
from phiml_native import NativePipeline, PhiMLDataManager
from built_caches import built  # noqa: F401  (fixture)


def migrate_cache(legacy_dir, npz_dir, progress=None):
    return harness.cache.migrate.migrate_cache(legacy_dir, npz_dir, progress, legacy_cls=LegacyPipeline,
                                               native_cls=NativePipeline)


@pytest.fixture(scope='module')
def migrated(built, tmp_path_factory):
    target = tmp_path_factory.mktemp('migrated') / 'npz'
    report = migrate_cache(built / 'legacy', target)
    return target, report


def _snapshot(folder: Path) -> dict:
    return {p.name: (sha256_file(p), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_migrated_cache_equals_native_build(built, migrated, tiny_config):
    target, report = migrated
    assert report.converted == tiny_config.all_sims and report.skipped == []
    ours, theirs = PhiMLDataManager(target), PhiMLDataManager(built / 'phiml')
    for sim in tiny_config.all_sims:
        a, b = theirs.load_cache(sim), ours.load_cache(sim)
        diff = compare_tensors(a['velocity'], b['velocity'], name='velocity')
        assert diff.identical, diff.describe()
        assert b['velocity'].shape == a['velocity'].shape and b['metadata'] == a['metadata']
        by_phiml = math.load(str(target / f'sim_{sim:06d}.npz'))  # still readable by phiml itself
        assert np.array_equal(by_phiml['velocity'].numpy('time,x,y,vector'), a['velocity'].numpy('time,x,y,vector'))
    assert verify_cache(target, NativePipeline, tiny_config)
    record = Manifest.load(target).files['sim_000002.npz']
    source = built / 'legacy' / 'sim_000002.pt'
    assert record.source == {'name': source.name, 'size': source.stat().st_size, 'sha256': sha256_file(source)}
    assert record.config_digest is None


def test_source_never_modified_and_rerun_skips(built, tiny_config, tmp_path):
    source = tmp_path / 'legacy'
    shutil.copytree(built / 'legacy', source)
    before = _snapshot(source)
    migrate_cache(source, tmp_path / 'npz')
    target_state = _snapshot(tmp_path / 'npz')
    again = migrate_cache(source, tmp_path / 'npz')
    assert again.converted == [] and again.skipped == tiny_config.all_sims
    assert _snapshot(tmp_path / 'npz') == target_state
    assert _snapshot(source) == before


def test_resume_converts_only_what_is_missing_or_bad(built, migrated, tiny_config, tmp_path):
    target = tmp_path / 'npz'
    shutil.copytree(migrated[0], target)
    (target / 'sim_000000.npz').unlink()
    (target / 'sim_000001.npz').write_bytes((target / 'sim_000001.npz').read_bytes()[:500])
    manifest = Manifest.load(target)
    del manifest.files['sim_000002.npz']  # landed, killed before its record: pending, so still migrate's
    manifest.pending.add('sim_000002.npz')
    manifest.save(target)
    kept = _snapshot(target)['sim_000003.npz']
    report = migrate_cache(built / 'legacy', target)
    assert report.converted == [0, 1, 2] and report.skipped == [3]
    assert _snapshot(target)['sim_000003.npz'] == kept
    for sim in range(3):
        assert (target / f'sim_{sim:06d}.npz').read_bytes() == (migrated[0] / f'sim_{sim:06d}.npz').read_bytes()
    assert verify_cache(target, NativePipeline, tiny_config)


def test_interrupted_migration_resumes(built, tiny_config, tmp_path, monkeypatch):
    saves = []
    original = Manifest.save

    def interrupted_on_third_record(self, folder):  # save 1 lists the files to convert as pending
        saves.append(folder)
        if len(saves) == 4:
            raise KeyboardInterrupt
        return original(self, folder)
    monkeypatch.setattr(Manifest, 'save', interrupted_on_third_record)
    with pytest.raises(KeyboardInterrupt):
        migrate_cache(built / 'legacy', tmp_path / 'npz')
    monkeypatch.setattr(Manifest, 'save', original)
    assert sorted(Manifest.load(tmp_path / 'npz').files) == ['sim_000000.npz', 'sim_000001.npz']
    report = migrate_cache(built / 'legacy', tmp_path / 'npz')
    assert report.skipped == [0, 1] and report.converted == [2, 3]


def test_changed_source_is_converted_again(built, tiny_config, tmp_path):
    source = tmp_path / 'legacy'
    shutil.copytree(built / 'legacy', source)
    (source / MANIFEST_NAME).unlink()  # a hand-made legacy cache has no manifest
    migrate_cache(source, tmp_path / 'npz')
    data = DataManager(source).load_cache(1)
    data['tensor_data']['velocity'] = data['tensor_data']['velocity'] * 2
    DataManager(source).save_cache(1, data['tensor_data'], data['metadata'])
    report = migrate_cache(source, tmp_path / 'npz')
    assert report.converted == [1]
    twice = PhiMLDataManager(tmp_path / 'npz').load_cache(1)['velocity'].numpy('vector,time,x,y')
    assert np.array_equal(twice, data['tensor_data']['velocity'].numpy())


def test_a_wrong_conversion_is_caught_and_removed(built, tmp_path, monkeypatch):
    """The read-back check compares with the source, not with the conversion: a swapped x/y is found."""
    write = NativePipeline.write_fields

    def swapped(self, sim, fields, metadata):
        return write(self, sim, {name: math.wrap(np.swapaxes(t.numpy(t.shape.names), 1, 2), t.shape)
                                 for name, t in fields.items()}, metadata)
    monkeypatch.setattr(NativePipeline, 'write_fields', swapped)
    with pytest.raises(CacheError) as info:
        migrate_cache(built / 'legacy', tmp_path / 'npz')
    assert f"{tmp_path / 'npz' / 'sim_000000.npz'}: does not match its source velocity: " in str(info.value)
    assert 'elements differ' in str(info.value)
    assert not (tmp_path / 'npz' / 'sim_000000.npz').exists()


def _legacy_file(folder, sim, fields, metadata):
    return DataManager(folder).save_cache(sim, fields, metadata)


@pytest.mark.parametrize('change, words', [
    (lambda t, m: (t.to(torch.bfloat16), m), 'dtype torch.bfloat16, expected float16, float32 or float64'),
    (lambda t, m: (t, {**m, 'field_channels': {'velocity': ['u', 'v']}}),
     "cannot be written to the 'phiml' cache: " + "{npz}: field 'velocity' has vector item names ('u', 'v'), expected ('x', 'y') (one component per spatial dim)"),
    (lambda t, m: (t, {**m, 'spatial_dims': ['h', 'w']}), "metadata spatial_dims=['h', 'w'], the tensors have 2 spatial axes ['x', 'y']"),
    (lambda t, m: (t, {**m, 'fields': ['density']}), "metadata fields ['density'] differ from the stored fields"),
], ids=['bfloat16', 'channel-names', 'spatial-names', 'fields'])
def test_unconvertible_source_refused(tmp_path, change, words):
    tensor = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    meta = {'sim_index': 0, 'n_frames': 3, 'spatial_dims': ['x', 'y'], 'field_channels': {'velocity': ['x', 'y']}}
    tensor, meta = change(tensor, meta)
    _legacy_file(tmp_path / 'legacy', 0, {'velocity': tensor}, meta)
    with pytest.raises(CacheError) as info:
        migrate_cache(tmp_path / 'legacy', tmp_path / 'npz')
    words = words.format(npz=tmp_path / 'npz' / 'sim_000000.npz')
    assert str(info.value).startswith(f"{tmp_path / 'legacy' / 'sim_000000.pt'}: ") and words in str(info.value)
    assert not (tmp_path / 'npz' / 'sim_000000.npz').exists()


def test_none_in_metadata_survives(tmp_path):
    tensor = torch.zeros(1, 2, 4)
    meta = {'sim_index': 0, 'n_frames': 2, 'spatial_dims': ['x'], 'field_channels': {'p': []}, 'note': None}
    _legacy_file(tmp_path / 'legacy', 0, {'p': tensor}, meta)
    migrate_cache(tmp_path / 'legacy', tmp_path / 'npz')
    assert PhiMLDataManager(tmp_path / 'npz').load_cache(0)['metadata']['note'] is None


_KEY = st.text('abcdefghijklmnopqrstuvwxyz_0123456789', min_size=1, max_size=8)
_LEAF = st.one_of(st.integers(-2 ** 62, 2 ** 62), st.floats(width=64), st.booleans(),
                  st.text(max_size=6).filter(lambda s: s not in ('__native__', '__missing__')))
_METADATA = st.dictionaries(_KEY.filter(lambda k: k not in ('sim_index', 'n_frames', 'fields', 'spatial_dims',
                                                             'field_channels')),
                            st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3)
                                         | st.dictionaries(_KEY, inner, max_size=3), max_leaves=5), max_size=4)


@st.composite
def legacy_caches(draw):
    """A legacy cache: 1-3 sims of 1-D, 2-D or 3-D fields, scalar (C=1) or vector (C = spatial dims), any float."""
    n_spatial = draw(st.integers(1, 3))
    spatial_dims = ['x', 'y', 'z'][:n_spatial]
    sizes = draw(st.lists(st.integers(1, 5), min_size=n_spatial, max_size=n_spatial))
    n_frames = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([torch.float16, torch.float32, torch.float64]))
    names = draw(st.lists(st.sampled_from(['velocity', 'density', 'pressure']), min_size=1, max_size=3, unique=True))
    channels = {name: spatial_dims if draw(st.booleans()) else [] for name in names}
    extra = draw(_METADATA)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    sims = []
    for sim in range(draw(st.integers(1, 3))):
        fields = {}
        for name in names:
            values = rng.standard_normal((max(1, len(channels[name])), n_frames, *sizes)) * 10.0 ** rng.integers(-8, 8)
            values.flat[rng.integers(0, values.size, 3)] = rng.choice([np.nan, np.inf, -0.0, 1e-310], 3)
            fields[name] = torch.from_numpy(values).to(dtype)
        meta = {**extra, 'sim_index': sim, 'n_frames': n_frames, 'spatial_dims': spatial_dims, 'field_channels': channels}
        sims.append((fields, meta))
    return sims


def _same(a, b) -> bool:
    """Equal values of equal types; NaN equals NaN; lists equal tuples."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and pymath.isnan(a):
        return isinstance(b, float) and pymath.isnan(b)
    return type(a) is type(b) and a == b


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(legacy_caches())
def test_any_legacy_cache_survives_migration(sims):
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / 'legacy', Path(tmp) / 'npz'
        for sim, (fields, meta) in enumerate(sims):
            _legacy_file(source, sim, fields, meta)
        assert migrate_cache(source, target).converted == list(range(len(sims)))
        for sim, (fields, meta) in enumerate(sims):
            loaded = PhiMLDataManager(target).load_cache(sim, allow_any_float=True)
            spatial_dims = meta['spatial_dims']
            for name, original in fields.items():
                tensor, vector = loaded[name], bool(meta['field_channels'][name])
                assert tensor.shape.names == ('time', *spatial_dims) + (('vector',) if vector else ())
                assert tensor.shape.batch.names == ('time',) and tensor.shape.spatial.names == tuple(spatial_dims)
                if vector:
                    assert tensor.shape.get_item_names('vector') == tuple(spatial_dims)
                assert str(tensor.dtype) == str(original.dtype).removeprefix('torch.')
                with math.precision(tensor.dtype.bits):
                    back = tensor.numpy(['vector', 'time', *spatial_dims] if vector else ['time', *spatial_dims])
                expected = original.numpy() if vector else original.numpy()[0]
                assert back.dtype == expected.dtype and back.tobytes() == expected.tobytes()  # bitwise
            expected_meta = {k: v for k, v in meta.items() if k not in ('spatial_dims', 'field_channels')}
            assert _same(loaded['metadata'], {**expected_meta, 'fields': sorted(fields)})


def test_main_in_process(built, tmp_path, capsys):
    assert main([str(built / 'legacy'), str(tmp_path / 'npz'), '--no-progress']) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"migrated 4 legacy cache files from {built / 'legacy'} to {tmp_path / 'npz'} "
                          f"(4 converted and verified bitwise, 0 already done) in ") and err == ''
    assert main([str(built / 'legacy'), str(tmp_path / 'npz'), '--no-progress']) == 0
    assert '(0 converted and verified bitwise, 4 already done)' in capsys.readouterr().out


@pytest.mark.slow
def test_module_runs_as_a_program(built, tmp_path):
    before = _snapshot(built / 'legacy')
    result = subprocess.run([sys.executable, '-m', 'harness.migrate', str(built / 'legacy'), str(tmp_path / 'npz')],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
                            env={**os.environ, 'PYTHONWARNINGS': 'error::DeprecationWarning:harness'})
    assert result.returncode == 0, result.stderr
    assert 'migrated 4 legacy cache files' in result.stdout and result.stderr == ''
    assert sorted(p.name for p in (tmp_path / 'npz').iterdir()) == \
        [MANIFEST_NAME, 'sim_000000.npz', 'sim_000001.npz', 'sim_000002.npz', 'sim_000003.npz']
    assert _snapshot(built / 'legacy') == before


def test_unrecorded_file_in_the_target_is_refused(migrated, tmp_path):
    """A file at a sim's name that migrate's manifest does not record is not migrate's: never replaced."""
    target = tmp_path / 'npz'
    shutil.copytree(migrated[0], target)
    manifest = Manifest.load(target)
    del manifest.files['sim_000002.npz']
    manifest.save(target)
    before = _snapshot(target)
    with pytest.raises(CacheError) as info:
        migrate_cache(Path(migrated[1].source_dir), target)
    assert str(info.value).startswith(f"{target / 'sim_000002.npz'}: not written by harness.migrate (not recorded in ")
    assert _snapshot(target) == before


@pytest.mark.slow
def test_nan_and_inf_sources_are_reported_and_converted_faithfully(tmp_path, caplog, capsys):
    """A team's file with NaN in frame 2 and +inf in frame 4: one warning line each, recorded, values kept bitwise."""
    values = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(5))
    values[0, 2, 3, 4] = float('nan')
    values[1, 4, 0, 0] = float('inf')
    meta = {'sim_index': 0, 'n_frames': 5, 'spatial_dims': ['x', 'y'], 'field_channels': {'velocity': ['x', 'y']},
            'team': 'ocean'}
    (tmp_path / 'legacy').mkdir()
    torch.save({'tensor_data': {'velocity': values}, 'metadata': meta}, tmp_path / 'legacy' / 'sim_000000.pt')
    result = subprocess.run([sys.executable, '-m', 'harness.migrate', str(tmp_path / 'legacy'), str(tmp_path / 'npz')],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    out, err = result.stdout, result.stderr
    source = tmp_path / 'legacy' / 'sim_000000.pt'
    lines = err.splitlines()  # 'WARNING <logger>: <message>', the logger being __main__ under -m
    assert [line.split(' ', 1)[0] for line in lines] == ['WARNING', 'WARNING']
    assert [line.split(': ', 1)[1] for line in lines] == [
        f"{source}: data health: sim 0 frame 2 'velocity': nonfinite (1 NaN, 0 Inf of 128 values)",
        f"{source}: data health: sim 0 frame 4 'velocity': nonfinite (0 NaN, 1 Inf of 128 values)"]
    assert '; 2 data health findings (logged, and recorded in the manifest); manifest: ' in out
    record = Manifest.load(tmp_path / 'npz').files['sim_000000.npz']
    assert record.health == [
        {'sim': 0, 'frame': 2, 'field': 'velocity', 'check': 'nonfinite', 'detail': '1 NaN, 0 Inf of 128 values'},
        {'sim': 0, 'frame': 4, 'field': 'velocity', 'check': 'nonfinite', 'detail': '0 NaN, 1 Inf of 128 values'}]
    back = PhiMLDataManager(tmp_path / 'npz').load_cache(0)['velocity'].numpy('vector,time,x,y')
    assert back.tobytes() == values.numpy().tobytes()
    # a rerun skips the file and reports the same findings from the manifest
    caplog.set_level('WARNING', logger='harness.cache.migrate')
    assert main([str(tmp_path / 'legacy'), str(tmp_path / 'npz'), '--no-progress']) == 0
    assert [r.getMessage() for r in caplog.records] == [line.split(': ', 1)[1] for line in lines]
    assert '(0 converted and verified bitwise, 1 already done)' in capsys.readouterr().out


def test_healthy_migration_says_so(built, tmp_path):
    report = migrate_cache(built / 'legacy', tmp_path / 'npz')
    assert report.health == [] and '; data health scan: no findings; manifest: ' in report.summary()
    assert [r.health for r in Manifest.load(tmp_path / 'npz').files.values()] == [[]] * 4
