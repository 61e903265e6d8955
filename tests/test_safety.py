"""Interrupted cache builds: a build killed with SIGKILL at random moments leaves no file that the loader would accept
wrongly, and a resumed build completes with exactly the files of an uninterrupted build."""
import os
import random
import shutil
import signal
import time

import pytest

from harness.cache.build import build_cache, open_cache, verify_cache
from harness.config import load_config
from harness.errors import CacheError
from harness.cache.manifest import Manifest
from harness.data.simulate import simulate
from conftest import KINDS, PIPELINES, PIPELINE_IDS, TINY

pytestmark = pytest.mark.skipif(not hasattr(os, 'fork'), reason='the builds are killed in forked children')
KILLS = 20
KILL_CONFIG = (*TINY, 'data.n_sims=6', 'data.n_val_sims=2')  # 8 files: kills land before, between and inside writes


@pytest.fixture(scope='module')
def kill_setup(tmp_path_factory):
    config = load_config('burgers', KILL_CONFIG)
    return config, simulate(config), tmp_path_factory.mktemp('kill')


def _fork_build(name, folder, config, simulation, kill_point=None) -> int:
    """Starts `build_cache` in a forked child (torch and phiml are already imported there: no start-up cost).

    `kill_point=(function, n)`: the child SIGKILLs itself at its n-th call of `os.replace` (a data file is written
    to its temporary name, not yet renamed) or of `Manifest.save` (a data file has landed, it is not recorded yet).
    """
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            if kill_point:
                _arm(*kill_point)
            build_cache(PIPELINES[name](folder, config.data.rollout_steps), config, simulation)
            code = 0
        finally:
            os._exit(code)
    return pid


def _arm(function: str, n: int) -> None:
    owner, attribute = (os, 'replace') if function == 'os.replace' else (Manifest, 'save')
    original, calls = getattr(owner, attribute), []

    def die_on_nth(*args, **kwargs):
        calls.append(args)
        if len(calls) == n and (function != 'os.replace' or not str(args[1]).endswith('.json')):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(owner, attribute, die_on_nth)


def _kill_after(pid: int, seconds: float) -> None:
    time.sleep(seconds)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_sigkill_at_random_moments(name, kill_setup):
    config, simulation, root = kill_setup
    kind = KINDS[name]
    reference = root / f'{name}-reference'
    build_cache(PIPELINES[name](reference, config.data.rollout_steps), config, simulation)
    pid = _fork_build(name, root / f'{name}-timed', config, simulation)
    start = time.perf_counter()
    assert os.waitpid(pid, 0)[1] == 0
    full = time.perf_counter() - start
    rng = random.Random(6)
    outcomes = []
    folder = None
    for trial in range(KILLS):
        if trial % 2 == 0:  # odd trials kill the resumed build of the previous trial's remains
            folder = root / f'{name}-{trial}'
        _kill_after(_fork_build(name, folder, config, simulation), rng.uniform(0, 1.2 * full))
        report = verify_cache(folder, PIPELINES[name], config)
        # writes are atomic: a killed build leaves whole files, recorded or not, never torn ones
        assert {p.kind for p in report.problems} <= {'missing', 'unrecorded'}, report.describe()
        for sim in config.all_sims:
            if sim not in report.bad_sims:  # everything that verifies is exactly what an uninterrupted build wrote
                assert (folder / kind.file_name(sim)).read_bytes() == (reference / kind.file_name(sim)).read_bytes()
                assert KINDS[name].describe(folder, sim)[1]['sim_index'] == sim
        pipeline = PIPELINES[name](folder, config.data.rollout_steps)
        if report:
            open_cache(pipeline, config.all_sims, config)
        else:
            with pytest.raises(CacheError) as info:
                open_cache(pipeline, config.all_sims, config)
            assert report.summary() in str(info.value)
        outcomes.append(len(config.all_sims) - len(report.bad_sims))
        if trial % 2 == 1:
            # leftovers go only where the harness's manifest already was: a kill during a fresh folder's first
            # manifest write leaves its temporary file in a folder that is not yet the harness's, and it stays
            owned = Manifest.load(folder) is not None
            resumed = build_cache(pipeline, config, simulation)
            assert resumed.after and resumed.rebuilt == report.bad_sims
            assert resumed.after.temp_files == ([] if owned else report.temp_files)
            for sim in config.all_sims:
                assert (folder / kind.file_name(sim)).read_bytes() == (reference / kind.file_name(sim)).read_bytes()
            shutil.rmtree(folder)
    # the kills were spread over the build: some found nothing written, some a partial cache
    assert min(outcomes) < len(config.all_sims) and any(0 < n < len(config.all_sims) for n in outcomes), outcomes


@pytest.mark.parametrize('function, found', [('os.replace', 'missing'), ('Manifest.save', 'unrecorded')],
                         ids=['before-rename', 'before-record'])
@pytest.mark.parametrize('name', PIPELINE_IDS)
def test_sigkill_at_the_worst_moments(name, function, found, kill_setup):
    """Killed with the 4th file written under its temporary name, or renamed into place but not yet recorded.

    The first manifest save lists the files to write as pending; then each file's rename is followed by one save.
    """
    config, simulation, root = kill_setup
    kind = KINDS[name]
    folder = root / f'{name}-worst-{function}'
    pid = _fork_build(name, folder, config, simulation, kill_point=(function, 8 if function == 'os.replace' else 5))
    status = os.waitpid(pid, 0)[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    report = verify_cache(folder, PIPELINES[name], config)
    assert [(p.sim, p.kind) for p in report.problems] == [(3, found)] + [(s, 'missing') for s in range(4, 8)]
    assert not any(p.foreign for p in report.problems)  # the landed, unrecorded file is pending: the harness's
    assert len(report.temp_files) == (1 if function == 'os.replace' else 0)
    with pytest.raises(CacheError, match=f"{kind.file_name(3)}: {found}"):
        open_cache(PIPELINES[name](folder, config.data.rollout_steps), config.all_sims, config)
    resumed = build_cache(PIPELINES[name](folder, config.data.rollout_steps), config, simulation)
    assert resumed.rebuilt == [3, 4, 5, 6, 7] and resumed.removed_temp_files == report.temp_files
    assert sorted(p.name for p in folder.iterdir()) == ['manifest.json'] + [kind.file_name(s) for s in range(8)]
