import dataclasses
import json
import shutil

import pytest

import harness.cache.build
from harness.cache.build import build_cache, open_cache, repair_cache, verify_cache, write_cache
from harness.config import load_config
from harness.errors import CacheError
from harness.cache.manifest import MANIFEST_NAME, Manifest
from built_caches import built  # noqa: F401  (fixture)
from conftest import KINDS, PIPELINES, PIPELINE_IDS, TINY


@pytest.fixture
def no_simulation(monkeypatch):
    """Fails the test if anything simulates."""
    def refuse(config, progress=None):
        raise AssertionError("simulate() was called")
    monkeypatch.setattr(harness.cache.build, 'simulate', refuse)


def _copy(built, name, tmp_path):
    shutil.copytree(built / name, tmp_path / name)
    return tmp_path / name


def _state(folder):
    """Bytes and modification time of every file."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_fresh_build_verifies(built, tiny_config, name):
    report = verify_cache(built / name, PIPELINES[name], tiny_config)
    assert report and report.passed and report.problems == [] and report.sims == tiny_config.all_sims
    assert report.summary() == f"{built / name}: all 4 {name} cache files verify against manifest.json"
    assert sorted(p.name for p in (built / name).iterdir()) == \
        [MANIFEST_NAME] + [KINDS[name].file_name(s) for s in tiny_config.all_sims]


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_complete_cache_is_not_rebuilt(built, tiny_config, tmp_path, no_simulation, name):
    folder = _copy(built, name, tmp_path)
    before = _state(folder)
    result = build_cache(PIPELINES[name](folder, tiny_config.data.rollout_steps), tiny_config)
    assert result.rebuilt == [] and result.skipped == tiny_config.all_sims
    assert _state(folder) == before


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _unrecord(path):
    manifest = Manifest.load(path.parent)
    del manifest.files[path.name]
    manifest.save(path.parent)


@pytest.mark.parametrize('damage, kind, words', [
    (lambda p: p.unlink(), 'missing', 'expected the {name} cache of sim 1, {size} bytes recorded'),
    (lambda p: p.write_bytes(b''), 'empty', '0 bytes, {size} bytes recorded'),
    (_truncate, 'truncated', '1000 of {size} recorded bytes'),
    (lambda p: p.write_bytes(p.read_bytes() + b'\0'), 'size-mismatch', '{size_plus} bytes, {size} recorded'),
    (_flip_byte, 'hash-mismatch', 'SHA-256 '),
    (_unrecord, 'unrecorded', 'not in manifest.json: it loads, but its bytes cannot be verified'),
], ids=['missing', 'empty', 'truncated', 'longer', 'flipped-byte', 'unrecorded'])
@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_damage_named(built, tiny_config, tmp_path, name, damage, kind, words):
    folder = _copy(built, name, tmp_path)
    path = folder / KINDS[name].file_name(1)
    size = path.stat().st_size
    damage(path)
    report = verify_cache(folder, PIPELINES[name], tiny_config)
    assert not report and report.bad_sims == [1]
    problem, = report.problems
    assert (problem.sim, problem.name, problem.kind) == (1, path.name, kind)
    assert words.format(name=name, size=size, size_plus=size + 1) in problem.detail
    assert f"1 of 4 {name} cache files are bad: {path.name}: {kind} (" in report.summary()


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_unrecorded_garbage_is_unreadable(built, tiny_config, tmp_path, name):
    folder = _copy(built, name, tmp_path)
    path = folder / KINDS[name].file_name(2)
    _unrecord(path)
    path.write_bytes(b'garbage')
    problem, = verify_cache(folder, PIPELINES[name], tiny_config).problems
    assert (problem.sim, problem.name, problem.kind) == (2, path.name, 'unreadable')
    assert problem.detail == {
        'legacy': 'not a readable torch file (expected the zip archive that torch.save writes, or its format before torch 1.6; 7 bytes, empty or '
                  'truncated?); not written by the harness',
        'phiml': 'not a readable .npz file (File is not a zip file); not written by the harness'}[name]


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_other_config_is_stale_or_wrong_shape(built, tiny_config, tmp_path, name):
    other_seed = load_config('burgers', [*TINY, 'seed=7'])
    report = verify_cache(built / name, PIPELINES[name], other_seed)
    assert [p.kind for p in report.problems] == ['stale'] * 4
    assert 'written for config' in report.problems[0].detail
    longer = load_config('burgers', [*TINY, 'sim.n_steps=12'])
    assert [p.kind for p in verify_cache(built / name, PIPELINES[name], longer, sims=[0]).problems] == ['stale']
    # records without a config digest (migrated files): the shape check still sees it
    folder = _copy(built, name, tmp_path)
    manifest = Manifest.load(folder)
    manifest.files = {n: dataclasses.replace(r, config_digest=None) for n, r in manifest.files.items()}
    manifest.save(folder)
    assert [str(p) for p in verify_cache(folder, PIPELINES[name], longer, sims=[0]).problems] == [
        f"{KINDS[name].file_name(0)}: wrong-shape (field 'velocity' 9 frames of 16x16 cells; "
        f"the config expects 13 frames of 16x16 cells)"]
    assert verify_cache(folder, PIPELINES[name], tiny_config)


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_repair_rewrites_only_bad_files_bitwise(built, tiny_config, tiny_sim, tmp_path, name):
    folder = _copy(built, name, tmp_path)
    kind = KINDS[name]
    (folder / kind.file_name(0)).unlink()
    _truncate(folder / kind.file_name(2))
    leftover = f'.sim_000003{kind.suffix}.0a1b2c3d.harness-tmp{kind.suffix}'  # as atomic_path names it
    (folder / leftover).write_bytes(b'left over by a killed write')
    untouched = {n: v for n, v in _state(folder).items() if n in (kind.file_name(1), kind.file_name(3))}
    assert verify_cache(folder, PIPELINES[name], tiny_config).temp_files == [leftover]
    result = repair_cache(folder, PIPELINES[name], tiny_config, tiny_sim)
    assert result.rebuilt == [0, 2] and result.skipped == [1, 3] and result.after
    assert [p.kind for p in result.before.problems] == ['missing', 'truncated']
    assert result.removed_temp_files == [leftover]
    after = _state(folder)
    assert {n: after[n] for n in untouched} == untouched  # bytes and mtime unchanged
    for sim in tiny_config.all_sims:  # rewritten files are bitwise what a fresh build wrote
        assert (folder / kind.file_name(sim)).read_bytes() == (built / name / kind.file_name(sim)).read_bytes()
    assert json.loads((folder / MANIFEST_NAME).read_text()) == json.loads((built / name / MANIFEST_NAME).read_text())


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_repair_simulates_when_needed(built, tiny_config, tmp_path, name):
    folder = _copy(built, name, tmp_path)
    (folder / KINDS[name].file_name(3)).unlink()
    result = repair_cache(folder, PIPELINES[name], tiny_config)
    assert result.rebuilt == [3]
    assert (folder / KINDS[name].file_name(3)).read_bytes() == (built / name / KINDS[name].file_name(3)).read_bytes()


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_corrupt_manifest_refused(built, tiny_config, tiny_sim, tmp_path, name):
    """Without a readable manifest nothing shows which files are the harness's: the build refuses, changes nothing."""
    folder = _copy(built, name, tmp_path)
    (folder / MANIFEST_NAME).write_text('{"format_version": 1, "pipel')
    before = _state(folder)
    report = verify_cache(folder, PIPELINES[name], tiny_config)
    assert 'not a readable cache manifest' in report.manifest_problem
    assert [(p.kind, p.foreign) for p in report.problems] == [('unrecorded', True)] * 4
    with pytest.raises(CacheError) as info:
        build_cache(PIPELINES[name](folder, tiny_config.data.rollout_steps), tiny_config, tiny_sim)
    assert str(info.value).startswith(f"{folder / MANIFEST_NAME}: not a readable cache manifest (JSONDecodeError: ")
    assert str(info.value).endswith(f"; refusing to write into {folder}, nothing was changed")
    assert _state(folder) == before


def test_refuses_the_other_pipelines_folder(built, tiny_config, tmp_path, no_simulation):
    folder = _copy(built, 'legacy', tmp_path)
    before = _state(folder)
    report = verify_cache(folder, PIPELINES['phiml'], tiny_config)
    assert report.manifest_problem.endswith("records a 'legacy' cache, expected 'phiml'")
    with pytest.raises(CacheError, match="holds a 'legacy' cache, refusing to write 'phiml' files into it"):
        build_cache(PIPELINES['phiml'](folder, tiny_config.data.rollout_steps), tiny_config)
    assert _state(folder) == before


def test_simulation_of_another_config_refused(tiny_sim, tmp_path):
    other = load_config('burgers', [*TINY, 'seed=3'])
    with pytest.raises(ValueError, match="`simulation` was made from config"):
        build_cache(PIPELINES['phiml'](tmp_path / 'c', 2), other, tiny_sim)


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_open_cache_names_every_bad_file(built, tiny_config, tmp_path, name):
    folder = _copy(built, name, tmp_path)
    kind = KINDS[name]
    pipeline = PIPELINES[name](folder, tiny_config.data.rollout_steps)
    assert open_cache(pipeline, tiny_config.train_sims, tiny_config)
    assert len(pipeline.window_keys()) == 3 * tiny_config.windows_per_sim
    (folder / kind.file_name(0)).write_bytes(b'')
    _flip_byte(folder / kind.file_name(2))
    with pytest.raises(CacheError) as info:
        open_cache(PIPELINES[name](folder, tiny_config.data.rollout_steps), tiny_config.train_sims, tiny_config)
    message = str(info.value)
    assert f"2 of 3 {name} cache files are bad: {kind.file_name(0)}: empty (0 bytes" in message
    assert f"{kind.file_name(2)}: hash-mismatch (SHA-256" in message and '--repair' in message
    assert '\n' not in message


def test_write_cache_alone_keeps_no_manifest(tiny_sim, tmp_path):
    """The timed write stage stays a plain write: no read-back, no hashing."""
    paths = write_cache(PIPELINES['phiml'](tmp_path, 2), tiny_sim, [0, 1])
    assert [p.name for p in paths] == ['sim_000000.npz', 'sim_000001.npz']
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_missing_folder(tiny_config, tmp_path):
    report = verify_cache(tmp_path / 'nowhere', PIPELINES['phiml'], tiny_config)
    assert report.folder_problem == f"{tmp_path / 'nowhere'}: cache folder does not exist"
    assert report.bad_sims == tiny_config.all_sims and {p.kind for p in report.problems} == {'missing'}


def test_report_to_dict_is_json(built, tiny_config, tmp_path):
    folder = _copy(built, 'phiml', tmp_path)
    (folder / 'sim_000001.npz').unlink()
    values = json.loads(json.dumps(verify_cache(folder, PIPELINES['phiml'], tiny_config).to_dict()))
    assert values['passed'] is False
    size = (built / 'phiml' / 'sim_000001.npz').stat().st_size
    assert values['problems'] == [{'sim': 1, 'name': 'sim_000001.npz', 'kind': 'missing',
                                   'detail': f'expected the phiml cache of sim 1, {size} bytes recorded', 'foreign': False}]


@pytest.mark.parametrize('legacy_keys', [True, False], ids=['loadable', 'free-form-metadata'])
def test_summary_counts_files_not_problems(tiny_config, tmp_path, legacy_keys):
    """A team's 4 files of 27 frames at 48x32: each is unrecorded and (when it loads) of the wrong shape, one file."""
    from user_data import tree_state, write_team_pt
    folder = tmp_path / 'legacy'
    for sim in tiny_config.all_sims:
        write_team_pt(folder, sim, legacy_keys=legacy_keys)
    before = tree_state(folder)
    report = verify_cache(folder, PIPELINES['legacy'], tiny_config)
    kinds = {p.name: p.kind for p in report.problems}
    assert report.bad_sims == [0, 1, 2, 3] and len(kinds) == 4
    # free-form metadata reads as well: the layout comes from the shapes
    assert [p.kind for p in report.problems if p.sim == 0] == ['unrecorded', 'wrong-shape']
    assert len(report.problems) == 8
    assert report.summary().startswith(f"{folder}: 4 of 4 legacy cache files are bad: sim_000000.pt: ")
    assert tree_state(folder) == before
