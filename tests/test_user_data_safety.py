"""The harness never writes, renames or deletes a file it did not write itself (issue 12).

"Written by the harness" means recorded (or listed as pending) in its own `manifest.json`, which carries the
harness's `writer`. Every test here writes a team's files with plain `torch.save`, `numpy` or `open` (nothing of the
project's writers) and checks them byte for byte afterwards, and that no file was added to or removed from them.
"""
import shutil

import pytest

import harness.cache.build
from harness.cache.build import build_cache, repair_cache, verify_cache
from harness.cache.manifest import MANIFEST_NAME, Manifest
from harness.errors import CacheError
from built_caches import built  # noqa: F401  (fixture)
from conftest import KINDS, PIPELINE_IDS, PIPELINES
from user_data import tree_state, write_team_pt


@pytest.fixture
def no_simulation(monkeypatch):
    """Fails the test if anything simulates."""
    def refuse(config, progress=None):
        raise AssertionError("simulate() was called")
    monkeypatch.setattr(harness.cache.build, 'simulate', refuse)


def _team_folder(folder, n=4, **kwargs):
    for sim in range(n):
        write_team_pt(folder, sim, **kwargs)
    return folder


@pytest.mark.parametrize('legacy_keys', [True, False], ids=['loadable', 'free-form-metadata'])
def test_repair_refuses_a_teams_own_files(tiny_config, tmp_path, no_simulation, legacy_keys):
    folder = _team_folder(tmp_path / 'legacy', legacy_keys=legacy_keys)
    before = tree_state(folder)
    with pytest.raises(CacheError) as info:
        repair_cache(folder, PIPELINES['legacy'], tiny_config)
    assert str(info.value) == (
        f"{folder / 'sim_000000.pt'}: not written by the harness (not recorded in {folder / MANIFEST_NAME}) (and 3 "
        f"more: sim_000001.pt, sim_000002.pt, sim_000003.pt); refusing to use or overwrite files the harness did not "
        f"write, nothing was changed (--repair rewrites only the harness's own files)")
    assert tree_state(folder) == before


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_a_teams_file_among_the_harness_files_is_refused(built, tiny_config, tmp_path, no_simulation, name):
    """sim 3 is not in the manifest and the file there is the team's: the build rewrites nothing, not even sim 1."""
    folder = tmp_path / name
    shutil.copytree(built / name, folder)
    kind = KINDS[name]
    manifest = Manifest.load(folder)
    del manifest.files[kind.file_name(3)]
    manifest.save(folder)
    team_file = folder / kind.file_name(3)
    team_file.write_bytes(b'our own results, not a cache file\n')
    (folder / kind.file_name(1)).unlink()  # the harness's file, missing: alone it would be rebuilt
    before = tree_state(folder)
    with pytest.raises(CacheError) as info:
        build_cache(PIPELINES[name](folder, tiny_config.data.rollout_steps), tiny_config)
    assert str(info.value).startswith(f"{team_file}: not written by the harness (not recorded in "
                                      f"{folder / MANIFEST_NAME}); refusing to use or overwrite")
    assert tree_state(folder) == before


@pytest.mark.parametrize('content', ['{"dataset": "ocean-2024", "files": ["sim_000000.pt"]}', 'run 7, 4 sims\n'],
                         ids=['json', 'text'])
def test_a_teams_manifest_is_never_overwritten(tiny_config, tmp_path, no_simulation, content):
    folder = _team_folder(tmp_path / 'legacy')
    (folder / MANIFEST_NAME).write_text(content)
    before = tree_state(folder)
    report = verify_cache(folder, PIPELINES['legacy'], tiny_config)
    assert report.manifest_problem.startswith(f"{folder / MANIFEST_NAME}: not ")
    with pytest.raises(CacheError) as info:
        repair_cache(folder, PIPELINES['legacy'], tiny_config)
    assert str(info.value).startswith(f"{folder / MANIFEST_NAME}: not ")
    assert str(info.value).endswith(f"; refusing to write into {folder}, nothing was changed")
    assert tree_state(folder) == before


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_only_the_harness_leftovers_are_removed(built, tiny_config, tiny_sim, tmp_path, name):
    """A real leftover of a killed write goes; files that merely look like one stay, byte for byte."""
    folder = tmp_path / name
    shutil.copytree(built / name, folder)
    s = KINDS[name].suffix
    leftover = f'.sim_000001{s}.0a1b2c3d.harness-tmp{s}'
    (folder / leftover).write_bytes(b'half a file')
    (folder / f'.manifest.json.99aa88bb.harness-tmp.json').write_text('{"writer": ')
    look_alikes = [f'.sim_000001{s}.abc.tmp{s}', f'.sim_000001{s}.0a1b2c3d.harness-tmp{s}.bak',
                   f'.notes.txt.0a1b2c3d.harness-tmp.txt', f'.sim_000001{s}.0A1B2C3D.harness-tmp{s}']
    for look_alike in look_alikes:
        (folder / look_alike).write_bytes(b'a file of the team')
    team = {n: v for n, v in tree_state(folder).items() if n.split('/')[-1] in look_alikes}
    result = build_cache(PIPELINES[name](folder, tiny_config.data.rollout_steps), tiny_config, tiny_sim)
    assert result.removed_temp_files == ['.manifest.json.99aa88bb.harness-tmp.json', leftover]
    after = tree_state(folder)
    assert {n: after[n] for n in team} == team
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MANIFEST_NAME, *look_alikes, *(KINDS[name].file_name(sim) for sim in tiny_config.all_sims)])


def test_leftovers_in_a_folder_without_the_harness_manifest_stay(tiny_config, tiny_sim, tmp_path):
    folder = tmp_path / 'phiml'
    folder.mkdir()
    (folder / '.sim_000001.npz.0a1b2c3d.harness-tmp.npz').write_bytes(b'whose?')
    result = build_cache(PIPELINES['phiml'](folder, tiny_config.data.rollout_steps), tiny_config, tiny_sim)
    assert result.removed_temp_files == [] and result.rebuilt == tiny_config.all_sims
    assert (folder / '.sim_000001.npz.0a1b2c3d.harness-tmp.npz').read_bytes() == b'whose?'
