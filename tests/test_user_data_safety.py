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


@pytest.mark.parametrize('leftover', ['.sim_000001.npz.0a1b2c3d.harness-tmp.npz',
                                      '.manifest.json.0a1b2c3d.harness-tmp.json'], ids=['sim-file', 'first-manifest'])
def test_leftovers_in_a_folder_without_the_harness_manifest_stay(tiny_config, tiny_sim, tmp_path, leftover):
    """Not even once the build has made the folder the harness's: they were there before (a kill during a fresh
    folder's first manifest write leaves `.manifest.json.*.harness-tmp.json` so)."""
    folder = tmp_path / 'phiml'
    folder.mkdir()
    (folder / leftover).write_bytes(b'whose?')
    result = build_cache(PIPELINES['phiml'](folder, tiny_config.data.rollout_steps), tiny_config, tiny_sim)
    assert result.removed_temp_files == [] and result.rebuilt == tiny_config.all_sims
    assert result.after.temp_files == [leftover] and (folder / leftover).read_bytes() == b'whose?'


COMPARE_PROG = 'python -m harness.compare'
NOT_YET = "to judge a cache of your own, pass it as --legacy-cache DIR (and --native-cache DIR2)"


def _compare_fails(capsys, *argv) -> str:
    """Runs the compare CLI in-process as its `__main__` does; asserts exit code 2 and one line on stderr."""
    from harness.cli import compare
    code = compare.main( ['burgers', '--quick', '--no-progress', *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 2 and out == '', (code, out, err)
    assert err.startswith(f"{COMPARE_PROG}: error: ") and err.count('\n') == 1, err
    return err.removeprefix(f"{COMPARE_PROG}: error: ").removesuffix('\n')


@pytest.mark.slow  # before the fix, --repair ran the whole quick comparison over the team's files
@pytest.mark.parametrize('repair', [[], ['--repair']], ids=['verify', 'repair'])
def test_compare_refuses_a_teams_cache_in_cache_dir(tmp_path, capsys, repair):
    """`X/legacy/` holds a team's own 48x32 files: refused with the file named, with or without --repair."""
    root = tmp_path / 'X'
    _team_folder(root / 'legacy')
    before = tree_state(root)
    message = _compare_fails(capsys, '--cache-dir', root, '--out', tmp_path / 'report', *repair)
    legacy = root / 'legacy'
    assert message == (
        f"{legacy / 'sim_000000.pt'}: not written by the harness (not recorded in {legacy / MANIFEST_NAME}) (and 3 "
        f"more: sim_000001.pt, sim_000002.pt, sim_000003.pt); refusing to use or overwrite files the harness did not "
        f"write, nothing was changed (--repair rewrites only the harness's own files); {NOT_YET}")
    assert tree_state(root) == before  # no phiml/ written beside it, no file of the team touched
    assert not (tmp_path / 'report').exists()


@pytest.mark.slow
@pytest.mark.parametrize('repair', [[], ['--repair']], ids=['verify', 'repair'])
def test_compare_refuses_a_flat_folder_of_team_files(tmp_path, capsys, repair):
    """`X/` itself holds the team's files: no simulated legacy/ and phiml/ are written into it, no GO for them."""
    root = _team_folder(tmp_path / 'X')
    (root / 'README.txt').write_text('ocean runs, 2024\n')
    before = tree_state(root)
    message = _compare_fails(capsys, '--cache-dir', root, '--out', tmp_path / 'report', *repair)
    assert message == (
        f"{root}: holds README.txt, sim_000000.pt, sim_000001.pt and 2 more, which the harness did not write; "
        f"--cache-dir takes a new or empty folder, or one holding the harness's own caches (legacy/ and phiml/, each "
        f"with the harness's manifest.json); {NOT_YET}; nothing was changed")
    assert tree_state(root) == before
    assert not (tmp_path / 'report').exists()


@pytest.mark.slow
def test_compare_refuses_a_teams_manifest_in_cache_dir(tmp_path, capsys):
    phiml = tmp_path / 'X' / 'phiml'
    phiml.mkdir(parents=True)
    (phiml / MANIFEST_NAME).write_text('{"dataset": "ocean-2024"}')
    before = tree_state(tmp_path / 'X')
    message = _compare_fails(capsys, '--cache-dir', tmp_path / 'X', '--out', tmp_path / 'report', '--repair')
    assert message.startswith(f"{phiml / MANIFEST_NAME}: not a cache manifest of the harness (writer None, ")
    assert message.endswith(f"; refusing to write into {phiml}, nothing was changed; {NOT_YET}")
    assert tree_state(tmp_path / 'X') == before


# --- python -m harness.migrate LEGACY_DIR NPZ_DIR -------------------------------------------------------------------

MIGRATE_PROG = 'python -m harness.migrate: error: '
NOT_MIGRATES = "NPZ_DIR must be a new or empty folder, or one that an earlier migrate wrote; nothing was changed"


def _migrate(*argv) -> int:
    from harness.cli.migrate import main
    return main([*map(str, argv), '--no-progress'])


def _migrate_fails(capsys, *argv) -> str:
    code = _migrate(*argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == '', (code, out, err)
    assert err.startswith(MIGRATE_PROG) and err.count('\n') == 1, err
    return err.removeprefix(MIGRATE_PROG).removesuffix('\n')


def _team_npz(path):
    """A .npz written by the team's own numpy code."""
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'wb') as f:
        np.savez(f, velocity=np.ones((27, 48, 32, 2), np.float32), note=np.array('ocean'))


@pytest.mark.parametrize('case', ['npz-and-manifest', 'npz', 'notes', 'look-alike-temp', 'harness-build'])
def test_migrate_refuses_a_target_holding_files_it_did_not_write(built, tmp_path, capsys, case):
    source = _team_folder(tmp_path / 'team-legacy')
    target = tmp_path / 'npz'
    target.mkdir()
    if case == 'npz-and-manifest':
        _team_npz(target / 'sim_000000.npz')
        (target / MANIFEST_NAME).write_text('{"dataset": "ocean-2024", "files": ["sim_000000.npz"]}')
    elif case == 'npz':
        _team_npz(target / 'sim_000000.npz')
    elif case == 'notes':
        (target / 'notes.txt').write_text('converted by hand, 2024\n')
    elif case == 'look-alike-temp':  # today's temporary name pattern of atomic_path: the team's, all the same
        (target / '.sim_000001.npz.abc.tmp.npz').write_bytes(b'the team file')
    else:  # the harness's native cache built from a simulation: not migrate's to overwrite
        shutil.rmtree(target)
        shutil.copytree(built / 'phiml', target)
    before = tree_state(source, target)
    message = _migrate_fails(capsys, source, target)
    expected = {
        'npz-and-manifest': f"{target / MANIFEST_NAME}: not a cache manifest of the harness (writer None, ",
        'npz': f"{target / 'sim_000000.npz'}: not written by harness.migrate (not recorded in "
               f"{target / MANIFEST_NAME}); {NOT_MIGRATES}",
        'notes': f"{target / 'notes.txt'}: not written by harness.migrate (not recorded in {target / MANIFEST_NAME}); "
                 f"{NOT_MIGRATES}",
        'look-alike-temp': f"{target / '.sim_000001.npz.abc.tmp.npz'}: not written by harness.migrate (not recorded "
                           f"in {target / MANIFEST_NAME}); {NOT_MIGRATES}",
        'harness-build': f"{target / MANIFEST_NAME}: records a native cache the harness built from a simulation "
                         f"(sim_000000.npz has no source), not a migration; {NOT_MIGRATES}",
    }[case]
    assert message.startswith(expected), message
    if case == 'npz-and-manifest':
        assert message.endswith(f"; refusing to write into {target}, {NOT_MIGRATES}")
    assert tree_state(source, target) == before


def test_migrate_resumes_in_its_own_folder_and_leaves_the_source_alone(tmp_path):
    source = _team_folder(tmp_path / 'team-legacy')
    before = tree_state(source)
    assert _migrate(source, tmp_path / 'npz') == 0
    done = tree_state(tmp_path / 'npz')
    (tmp_path / 'npz' / 'sim_000002.npz').unlink()
    assert _migrate(source, tmp_path / 'npz') == 0
    assert tree_state(tmp_path / 'npz') == done and tree_state(source) == before


def _fork_migrate_killed_at_first_npz_rename(source, target) -> int:
    """Runs the migrate CLI in a forked child that SIGKILLs itself when its first converted file is about to be
    renamed into place (the file is written under its temporary name): what a kill mid-run leaves."""
    import os
    import signal
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            original = os.replace

            def die_before_npz_rename(src, dst, *args, **kwargs):
                if str(dst).endswith('.npz'):
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(src, dst, *args, **kwargs)
            os.replace = die_before_npz_rename
            _migrate(source, target)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1]


@pytest.mark.skipif(not hasattr(__import__('os'), 'fork'), reason='the migration is killed in a forked child')
def test_killed_migrations_leave_no_leftovers_after_the_next_run(tmp_path):
    import os
    import signal
    source = _team_folder(tmp_path / 'team-legacy')
    look_alike = source / '.sim_000000.pt.0a1b2c3d.harness-tmp.pt'  # in the source folder: never the harness's to clean
    look_alike.write_bytes(b'the team file')
    before = tree_state(source)
    target = tmp_path / 'npz'
    leftovers = []
    for _ in range(10):
        status = _fork_migrate_killed_at_first_npz_rename(source, target)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        temps = [p for p in target.iterdir() if p.name.startswith('.')]
        assert all(p.stat().st_size > 100_000 for p in temps)  # the converted 48x32x27 file, under its temporary name
        leftovers.append(len(temps))
    assert leftovers == [1] * 10  # each run removed the one before's leftover (they piled up: 1, 2, ..., 10)
    assert _migrate(source, target) == 0
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST_NAME] + [f'sim_{s:06d}.npz' for s in range(4)]
    assert verify_cache(target, PIPELINES['phiml'])
    assert tree_state(source) == before


@pytest.mark.parametrize('how', ['chmod', 'os-refuses'])
def test_read_only_npz_dir_is_named(tmp_path, capsys, monkeypatch, how):
    """The error names NPZ_DIR, not the random name of a temporary file in it."""
    import errno
    import os
    source = _team_folder(tmp_path / 'team-legacy')
    target = tmp_path / 'npz'
    target.mkdir()
    if how == 'chmod':
        if os.geteuid() == 0:
            pytest.skip('root writes into read-only folders')
        target.chmod(0o555)
    else:  # what the OS answers for a read-only folder (or mount), also where the tests run as root
        original = os.open

        def refuse_creating_in_target(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and os.path.dirname(os.fspath(path)) == str(target):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return original(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, 'open', refuse_creating_in_target)
    before = tree_state(source, target)
    try:
        message = _migrate_fails(capsys, source, target)
    finally:
        target.chmod(0o755)
    assert message == f"cannot use {str(target)!r}: Permission denied"
    assert tree_state(source, target) == before


def test_a_teams_legacy_folder_with_its_own_manifest_migrates(tmp_path):
    """The team's manifest.json in LEGACY_DIR is one of its files: read past, never verified against, never written."""
    source = _team_folder(tmp_path / 'team-legacy')
    (source / MANIFEST_NAME).write_text('{"dataset": "ocean-2024", "runs": 4}')
    before = tree_state(source)
    assert _migrate(source, tmp_path / 'npz') == 0
    assert verify_cache(tmp_path / 'npz', PIPELINES['phiml']).sims == [0, 1, 2, 3]
    assert tree_state(source) == before
