"""Scale-out: executors, chunking, and every distributed stage giving exactly what the in-process run gives.

The chunked code paths run here twice: on `Chunked` (chunk tasks one after another in this process: fast, every
test) and on a real Dask cluster of two worker processes (marked slow; one cluster for the module).
"""
import json
import logging
import os
import shutil
import runpy
import signal
import threading
import warnings
import time
from pathlib import Path

import pytest

import numpy as np
from phiml import math

from harness.bench.scale_out import crossover
from harness.cache.build import build_cache as build_here
from harness.cache.manifest import MANIFEST_NAME, Manifest
from harness.cache.migrate import migrate_cache as migrate_here
from harness.cli.compare import main as compare_main
from harness.cli.migrate import main as migrate_main
from harness.cli.train import main as train_main
from harness.equivalence.batches import compare_pipelines as compare_here
from harness.equivalence.expected import Expected
from harness.errors import CacheError, ConfigError
from harness.scale import DaskExecutor, InProcessExecutor, open_executor, split_sims, stages
from harness.scale.migrate import migrate_cache
from harness.scale.tasks import pipeline_ref
from harness.config import load_config, quick_overrides
from harness.data.simulate import simulate as simulate_here
from legacy import LegacyPipeline
from phiml_native import NativePipeline
from built_caches import built  # noqa: F401  (fixture)
from conftest import PIPELINES

PIPES = {'legacy_cls': LegacyPipeline, 'native_cls': NativePipeline}


class Chunked(InProcessExecutor):
    """The distributed code paths (chunk tasks, client-side manifests) run one task after another in this process."""
    distributed = True

    @property
    def n_workers(self) -> int:
        return 2


def assert_same_cache(a: Path, b: Path):
    """The same file names, every sim file bitwise, and manifests with the same records."""
    __tracebackhide__ = True
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for path in sorted(a.iterdir()):
        if path.name != MANIFEST_NAME:
            assert path.read_bytes() == (b / path.name).read_bytes(), path.name
    assert Manifest.load(a) == Manifest.load(b)


@pytest.fixture(scope='module')
def migrated_here(built, tmp_path_factory):
    target = tmp_path_factory.mktemp('here') / 'npz'
    migrate_here(built / 'legacy', target, **PIPES)
    return target


def test_split_sims_gives_contiguous_chunks_of_near_equal_size():
    assert split_sims(range(10), 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert split_sims([5, 6], 4) == [[5], [6]]
    assert split_sims([], 3) == []
    with pytest.raises(ValueError, match=r"`n_chunks` \(=0\) must be at least 1"):
        split_sims([1], 0)
    assert Chunked().chunks(list(range(9))) == [[0, 1, 2], [3, 4], [5, 6], [7, 8]]
    assert InProcessExecutor().chunks([3, 4, 5]) == [[3, 4, 5]]


def test_tasks_name_pipelines_by_module_and_class_unless_the_name_gives_another_class(tiny_config):
    assert pipeline_ref(LegacyPipeline) == 'legacy.pipeline:LegacyPipeline'
    assert pipeline_ref(NativePipeline) == 'phiml_native.pipeline:NativePipeline'
    configured = LegacyPipeline.configured(load_config('burgers', ['data.channels.velocity=[u,v]']))
    assert configured is not LegacyPipeline and pipeline_ref(configured) is configured  # shipped by value
    assert pipeline_ref(LegacyPipeline.configured(tiny_config)) == 'legacy.pipeline:LegacyPipeline'


def test_flags_are_checked_before_anything_starts():
    with pytest.raises(ConfigError, match=r"`--workers` \(=0\) must be a whole number of at least 1"):
        with open_executor(workers=0):
            pass
    with pytest.raises(ConfigError, match=r"`--workers` \(=2\) and `--scheduler` \(='tcp://h:1'\) exclude each other"):
        with open_executor(workers=2, scheduler='tcp://h:1'):
            pass
    with open_executor() as executor:
        assert executor.describe() == {'executor': 'in-process', 'scheduler': None, 'workers': 1}


def test_a_scheduler_that_does_not_answer_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"^`--scheduler` \(='tcp://127\.0\.0\.1:9'\): no Dask scheduler answered "
                                          r"within 0\.5 s \(.*\); expected the address of a running scheduler"):
        with open_executor(scheduler='tcp://127.0.0.1:9', connect_timeout_s=0.5):
            pass


@pytest.mark.parametrize('argv, message', [
    (['--workers', '0'], "error: `--workers` (=0) must be a whole number of at least 1\n"),
    (['--workers', '2', '--scheduler', 'tcp://h:1'],
     "error: argument --scheduler: not allowed with argument --workers"),
], ids=['no-workers', 'both'])
def test_cli_flags_refused_in_one_line_with_exit_2(built, tmp_path, capsys, argv, message):
    assert migrate_main([str(built / 'legacy'), str(tmp_path / 'npz'), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1
    assert not (tmp_path / 'npz').exists()


def test_chunked_migration_equals_the_in_process_one(built, migrated_here, tmp_path):
    target = tmp_path / 'npz'
    report = migrate_cache(Chunked(), built / 'legacy', target, **PIPES)
    assert report.converted == [0, 1, 2, 3] and report.skipped == []
    assert_same_cache(target, migrated_here)
    (target / 'sim_000002.npz').write_bytes(b'damaged')
    again = migrate_cache(Chunked(), built / 'legacy', target, **PIPES)
    assert again.converted == [2] and again.skipped == [0, 1, 3]
    assert_same_cache(target, migrated_here)


def test_chunked_migration_refuses_sources_of_different_shapes(built, tmp_path):
    source = tmp_path / 'legacy'
    shutil.copytree(built / 'legacy', source)
    other = LegacyPipeline(tmp_path / 'other', 2)
    fields, meta = LegacyPipeline(source, 2).read_fields(1)
    other.write_fields(1, {name: t.time[:5] for name, t in fields.items()}, {**meta, 'n_frames': 5})
    shutil.copy(other.cache_file(1), source / 'sim_000001.pt')
    (source / MANIFEST_NAME).unlink()
    with pytest.raises(CacheError, match=r"sim_000001\.pt: fields velocity \(time=5, .*differ from sim_000000\.pt"):
        migrate_cache(Chunked(), source, tmp_path / 'npz', **PIPES)
    assert not (tmp_path / 'npz').exists()


def arrays(simulation) -> dict[str, np.ndarray]:
    return {name: f.values.numpy(f.values.shape.names) for name, f in simulation.fields.items()}


def test_chunked_simulation_is_bitwise_the_in_process_one(tiny_config, tiny_sim):
    chunked = stages.simulate(Chunked(), tiny_config)
    assert [f.values.shape for f in chunked.fields.values()] == [f.values.shape for f in tiny_sim.fields.values()]
    for name, values in arrays(tiny_sim).items():
        assert arrays(chunked)[name].view(np.uint32).tobytes() == values.view(np.uint32).tobytes(), name
    assert chunked.fields['velocity'].geometry == tiny_sim.fields['velocity'].geometry
    assert chunked.fields['velocity'].extrapolation == tiny_sim.fields['velocity'].extrapolation


@pytest.mark.parametrize('scenario', ['burgers1d', 'burgers3d'])
def test_chunked_simulation_of_every_rank_is_bitwise_the_in_process_one(scenario):
    config = load_config(scenario, [*quick_overrides(scenario), 'sim.n_steps=3', 'data.rollout_steps=1'])
    here = simulate_here(config)
    chunked = stages.simulate(Chunked(), config)
    for name, values in arrays(here).items():
        assert arrays(chunked)[name].view(np.uint32).tobytes() == values.view(np.uint32).tobytes(), name


def test_smoke_is_simulated_here_and_its_chunks_written_by_tasks(smoke_sim, tmp_path, caplog):
    """Smoke's sims cannot be split (see harness.data.simulate.CHUNKED): one run here, bitwise the in-process one;
    its fields (a scalar and a vector field) are then shipped to the write tasks by chunk."""
    config, r = smoke_sim.config, smoke_sim.config.data.rollout_steps
    with caplog.at_level(logging.INFO, logger='harness.scale.simulate'):
        chunked = stages.simulate(Chunked(), config)
    assert "smoke sims are simulated in one run here: its sims cannot be split into chunks bitwise" in caplog.text
    for name, values in arrays(smoke_sim).items():
        assert arrays(chunked)[name].view(np.uint32).tobytes() == values.view(np.uint32).tobytes(), name
    assert chunked.constants == smoke_sim.constants
    progress = []
    pipelines = [PIPELINES[name](tmp_path / 'chunked' / name, r) for name in ('legacy', 'phiml')]
    stages.build_caches(Chunked(), pipelines, config, chunked, progress=progress.append)
    assert progress == [1] * 8  # 4 sims in 4 chunks, both pipelines
    for name in ('legacy', 'phiml'):
        build_here(PIPELINES[name](tmp_path / 'here' / name, r), config, smoke_sim)
        assert_same_cache(tmp_path / 'chunked' / name, tmp_path / 'here' / name)


@pytest.mark.parametrize('shipped', [True, False], ids=['fields-shipped', 'simulated-on-workers'])
def test_chunked_cache_builds_equal_the_in_process_ones(built, tiny_config, tiny_sim, tmp_path, shipped):
    pipelines = [PIPELINES[name](tmp_path / name, tiny_config.data.rollout_steps) for name in ('legacy', 'phiml')]
    progress = []
    results = stages.build_caches(Chunked(), pipelines, tiny_config, tiny_sim if shipped else None,
                                  progress=progress.append)
    assert [r.rebuilt for r in results] == [[0, 1, 2, 3], [0, 1, 2, 3]] and [r.skipped for r in results] == [[], []]
    assert progress == [1] * 8  # 4 chunks of 1 sim (2 workers x 2), one call per pipeline per chunk as it lands
    for name in ('legacy', 'phiml'):
        assert_same_cache(tmp_path / name, built / name)
        assert Manifest.load(tmp_path / name).pending == set()
    (tmp_path / 'phiml' / 'sim_000003.npz').unlink()
    again = stages.build_caches(Chunked(), pipelines, tiny_config)
    assert [r.rebuilt for r in again] == [[], [3]]
    assert_same_cache(tmp_path / 'phiml', built / 'phiml')


def test_chunked_build_refuses_a_file_it_did_not_write(built, tiny_config, tmp_path):
    shutil.copytree(built / 'phiml', tmp_path / 'phiml')
    (tmp_path / 'legacy').mkdir()
    (tmp_path / 'legacy' / 'sim_000001.pt').write_bytes(b'a user file')
    pipelines = [PIPELINES[name](tmp_path / name, tiny_config.data.rollout_steps) for name in ('legacy', 'phiml')]
    with pytest.raises(CacheError, match=r"legacy/sim_000001\.pt: not written by the harness"):
        stages.build_caches(Chunked(), pipelines, tiny_config)
    assert (tmp_path / 'legacy' / 'sim_000001.pt').read_bytes() == b'a user file'
    assert sorted(p.name for p in (tmp_path / 'legacy').iterdir()) == ['sim_000001.pt']


class ShiftedNative(NativePipeline):
    """Delivers the targets of sim 2 shifted by 0.5 (a value bug confined to one chunk)."""

    def to_phiml(self, raw):
        batch = super().to_phiml(raw)
        sims = math.tensor(np.array([k.sim for k in self.last_keys]), math.batch('batch'))
        return {**batch, 'targets': batch['targets'] + math.where(sims == 2, 0.5, 0.0)}

    def load_batches(self, plan):
        for keys, raw in zip(plan.batches, super().load_batches(plan)):
            self.last_keys = keys
            yield raw


@pytest.mark.parametrize('native_cls', [NativePipeline, ShiftedNative], ids=['equal', 'sim-2-shifted'])
def test_chunked_comparison_equals_the_in_process_one(built, tiny_config, tiny_sim, native_cls):
    r = tiny_config.data.rollout_steps
    legacy, native = LegacyPipeline(built / 'legacy', r), native_cls(built / 'phiml', r)
    legacy.open(tiny_config.train_sims)
    native.open(tiny_config.train_sims)
    expected = Expected.of(tiny_config, tiny_sim)
    here = compare_here(legacy, native, expected.plans, expected.tolerances, expected.frames)
    progress = []
    chunked = stages.compare_pipelines(Chunked(), legacy, native, expected.plans, expected.tolerances, expected.frames,
                                       progress.append)
    assert progress == [2, 2, 2]  # 3 sims x 7 windows = 21 windows in 6 batches of 4; 3 chunks of 1 sim
    assert chunked.to_dict() == {**here.to_dict(), 'failures': chunked.to_dict()['failures']}
    assert bool(chunked) is (native_cls is NativePipeline) and chunked.batches_compared == 6
    assert [(f.epoch, f.batch) for f in chunked.failures] == [(f.epoch, f.batch) for f in here.failures]
    assert all({k.sim for k in f.keys} == {2} for f in chunked.failures)  # the part of the batch in the chunk of sim 2
    if here.worst is not None:
        assert chunked.worst[0].max_abs == here.worst[0].max_abs == pytest.approx(0.5)


def test_the_crossover_is_where_the_cluster_s_gain_first_exceeds_its_overhead():
    sizes = [4, 8, 16, 32, 64]
    here = {n: n / 4 for n in sizes}  # in-process: 0.25 s per sim
    dask = {n: 0.5 + n / 8 for n in sizes}  # on the cluster: half as much per sim, 0.5 s more per build
    assert crossover(sizes, here, dask, 0.0) == {'first_faster_sims': 8, 'interpolated_sims': 4.0, 'below': False}
    assert crossover(sizes, here, dask, 3.0) == {'first_faster_sims': 32, 'interpolated_sims': 28.0, 'below': False}
    assert crossover(sizes, here, dask, 100.0) == {'first_faster_sims': None, 'interpolated_sims': None,
                                                   'below': False}
    faster = {n: n / 8 for n in sizes}
    assert crossover(sizes, here, faster, 0.0) == {'first_faster_sims': 4, 'interpolated_sims': None, 'below': True}


class ReversedNative(NativePipeline):
    """Serves every batch's windows in reverse order: each is some other planned window's place."""

    def to_phiml(self, raw):
        return {name: value.batch[::-1] for name, value in super().to_phiml(raw).items()}


def test_chunked_comparison_finds_windows_served_in_another_s_place(built, tiny_config, tiny_sim):
    r = tiny_config.data.rollout_steps
    legacy, native = LegacyPipeline(built / 'legacy', r), ReversedNative(built / 'phiml', r)
    expected = Expected.of(tiny_config, tiny_sim)
    chunked = stages.compare_pipelines(Chunked(), legacy, native, expected.plans, expected.tolerances, expected.frames)
    plan = expected.plans[0]
    want = []  # chunks of one sim: the windows of each sim in a batch are reversed among themselves
    for batch in plan.batches:
        for sim in tiny_config.train_sims:
            part = [k for k in batch if k.sim == sim]
            want += [(p, d) for p, d in zip(part, reversed(part)) if p != d]
    want.sort(key=lambda pair: plan.keys().index(pair[0]))
    audit = next(c for c in chunked.coverage if c.pipeline == 'phiml')
    assert want and audit.misplaced == want and not audit.passed
    assert not audit.missing and not audit.duplicated and not audit.unexpected and not audit.unidentified
    assert next(c for c in chunked.coverage if c.pipeline == 'legacy').passed


# --- on a real cluster: a scheduler and two worker processes on this machine ---------------------------------------

@pytest.fixture(scope='module')
def cluster():
    """What `--workers 2` starts: a scheduler in this process and two single-threaded worker processes. The tests
    pass its address (`--scheduler`), as to an existing cluster; yields `(LocalCluster, Client)`."""
    with open_executor(workers=2) as executor:
        assert executor.describe()['cluster'] == 'LocalCluster (worker processes on this machine)'
        yield executor.client.cluster, executor.client


def ran_on(local) -> set[str]:
    """The names of the tasks the cluster's scheduler has seen (key `migrate-3-1a2b3c4d` -> `migrate`)."""
    return set(local.scheduler.task_prefixes)


def tasks_seen(local, name: str) -> int:
    """How many tasks called `name` have finished on the cluster (each enters the state `memory` once)."""
    prefix = local.scheduler.task_prefixes.get(name)
    return prefix.state_counts['memory'] if prefix is not None else 0


@pytest.mark.slow
def test_migrate_on_the_cluster_equals_in_process(built, migrated_here, cluster, tmp_path, capsys):
    local, _ = cluster
    code = migrate_main([str(built / 'legacy'), str(tmp_path / 'npz'), '--scheduler', local.scheduler_address,
                         '--no-progress'])
    out, err = capsys.readouterr()
    assert code == 0 and err == ''
    assert '(4 converted and verified bitwise, 0 already done)' in out
    assert_same_cache(tmp_path / 'npz', migrated_here)
    assert ran_on(local) >= {'describe-sources', 'migrate'}


@pytest.mark.parametrize('module', ['harness.compare', 'harness.migrate', 'harness.train', 'harness.scale_out'])
@pytest.mark.filterwarnings('ignore:.*found in sys.modules after import of package:RuntimeWarning')  # imported here
def test_spawned_workers_import_the_command_line_modules_without_running_them(module, capsys):
    """A worker process that `--workers` spawns first runs the parent's main module as `__mp_main__` (what
    `multiprocessing.spawn` does for `python -m MODULE`, though not for a package's `__main__.py`): the `__main__`
    guard must keep the command from running there."""
    runpy.run_module(module, run_name='__mp_main__')
    assert capsys.readouterr() == ('', '')


QUICK_ARGS = ['burgers', '--quick', 'trainer.epochs=1', 'compare.selftest=false', 'compare.timing_repeats=1',
              'compare.timing_warmup=0', 'compare.min_speedup=0',  # timing on a loaded machine must not decide it
              '--no-progress']


@pytest.fixture(scope='module')
def quick_here(tmp_path_factory):
    out = tmp_path_factory.mktemp('quick-here')
    assert compare_main([*QUICK_ARGS, '--out', str(out)]) == 0
    return out, json.loads((out / 'summary.json').read_text())


@pytest.mark.slow
def test_compare_quick_on_the_cluster_equals_in_process(quick_here, cluster, tmp_path, capsys):
    local, client = cluster
    here_out, here = quick_here
    out = tmp_path / 'out'
    capsys.readouterr()
    assert compare_main([*QUICK_ARGS, '--out', str(out), '--scheduler', local.scheduler_address]) == 0
    assert capsys.readouterr().err == ''
    there = json.loads((out / 'summary.json').read_text())
    assert there['verdict'] == here['verdict'] == 'go'
    assert [(c['name'], c['passed']) for c in there['checks']] == [(c['name'], c['passed']) for c in here['checks']]
    for key in ('batches_compared', 'elements_compared', 'identical', 'max_abs_diff', 'failed_batches', 'coverage',
                'per_tensor'):
        assert there['equivalence'][key] == here['equivalence'][key], key
    assert there['equivalence']['batches_compared'] == 7  # 3 sims x 9 windows = 27 in 7 batches of 4, 1 epoch
    assert there['training']['legacy_losses'] == here['training']['legacy_losses']
    assert there['health'] == here['health']
    for name in ('legacy', 'phiml'):
        assert_same_cache(out / 'cache' / name, here_out / 'cache' / name)
    workers = sorted(client.scheduler_info()['workers'])
    assert there['provenance']['scale'] == {
        'executor': 'dask', 'scheduler': local.scheduler_address, 'cluster': 'existing cluster', 'workers': 2,
        'threads': 2, 'worker_addresses': workers, 'worker_torch_threads': [1],
        'dask': there['provenance']['scale']['dask']}
    assert here['provenance']['scale'] == {'executor': 'in-process', 'scheduler': None, 'workers': 1}
    assert ran_on(local) >= {'write-cache', 'compare'}  # the simulation runs on the client (harness.scale.simulate)


@pytest.mark.slow
def test_train_builds_its_cache_on_the_cluster(quick_here, cluster, tmp_path, capsys):
    """Each write task simulates its own chunk (no simulation at hand): the cache equals compare's in-process one."""
    local, client = cluster
    here_out, _ = quick_here

    def step_traces() -> dict[int, tuple[int, int]]:  # run on each worker (pickled by value)
        from harness.data import simulate as simulate_module
        return {json.loads(key)['n_sims']: (len(step.traces), sum(map(len, step.recorded_mappings.values())))
                for key, step in simulate_module._STEPS.items()}

    before = tasks_seen(local, 'write-cache'), tasks_seen(local, 'simulate')
    traced_before = client.run(step_traces)
    assert train_main(['burgers', '--quick', 'trainer.epochs=1', 'data.pipeline=phiml', '--out', str(tmp_path / 'run'),
                       '--scheduler', local.scheduler_address, '--no-progress']) == 0
    assert capsys.readouterr().err == ''
    assert_same_cache(tmp_path / 'run' / 'cache' / 'phiml', here_out / 'cache' / 'phiml')
    assert (tasks_seen(local, 'write-cache'), tasks_seen(local, 'simulate')) == (before[0] + 4, before[1])  # 4 chunks
    # the jit-compiled step was built in the workers, for chunks of one sim, and traced once in each (one signature);
    # a worker's later chunks reuse it: compare's simulation tasks on this cluster left as many traces as there are now
    traced = client.run(step_traces)
    assert {n for steps in traced.values() for n in steps} == {1}
    assert all(steps[1][0] == 1 for steps in traced.values() if steps)
    assert all(traced[worker] == steps for worker, steps in traced_before.items() if steps)



@pytest.mark.slow
def test_tasks_carry_large_arguments_without_a_warning(cluster):
    """A chunk's fields travel inside its task (so that it can be rerun after its worker died); Dask's warning about
    large graphs would reach the user of `compare --workers` as noise."""
    _, client = cluster
    payload = np.zeros(3_000_000, np.float32)  # 12 MB, above Dask's 10 MB threshold
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        done = list(DaskExecutor(client, local=False).run(len, [(payload,)], name='large'))
    assert done == [(0, 3_000_000)]


class SlowNative(NativePipeline):
    """The native pipeline, half a second slower per file written: a worker can be killed while it converts."""

    def write_fields(self, sim, fields, metadata):
        time.sleep(0.5)
        return super().write_fields(sim, fields, metadata)


def _wait_for(condition, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout} s in vain")


@pytest.mark.slow
def test_a_worker_killed_mid_migration_is_survived(built, migrated_here, cluster, tmp_path):
    """Last of the module: the killed worker's nanny starts a new one, with another address."""
    local, client = cluster
    pids = client.run(os.getpid)
    outcome, progress = {}, []

    def migrate():
        try:
            with open_executor(scheduler=local.scheduler_address) as executor:
                outcome['report'] = migrate_cache(executor, built / 'legacy', tmp_path / 'npz', progress.append,
                                                  legacy_cls=LegacyPipeline, native_cls=SlowNative)
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread
            outcome['error'] = err

    thread = threading.Thread(target=migrate)
    thread.start()
    victim = _wait_for(lambda: next((w for w, keys in client.processing().items()
                                     if any(str(k).startswith('migrate-') for k in keys)), None))
    os.kill(pids[victim], signal.SIGKILL)
    thread.join(timeout=180)
    assert 'error' not in outcome, outcome.get('error')
    assert outcome['report'].converted == [0, 1, 2, 3] and outcome['report'].skipped == []
    assert progress == [1, 1, 1, 1]  # one chunk of one sim landing at a time, the rerun one included
    assert_same_cache(tmp_path / 'npz', migrated_here)  # no leftover of the killed write either
    assert victim not in client.scheduler_info()['workers']
    assert local.scheduler.task_prefixes['migrate'].suspicious >= 1  # a task that was running on a worker that died


@pytest.mark.parametrize('argv, words', [
    (['--crossover-sims', '4,x'], "--crossover-sims (='4,x') must be whole numbers separated by commas"),
    (['--sims', '0'], "--sims (=0) and --crossover-sims (='4,8,16,32') must be at least 1"),
])
def test_scale_out_bad_input_is_one_line_and_exit_2(argv, words, tmp_path, capsys):
    from harness.cli import scale_out
    base = ['--legacy', 'legacy:LegacyPipeline', '--native', 'phiml_native:NativePipeline', '--out', str(tmp_path / 'o.json')]
    assert scale_out.main([*base, *argv]) == 2
    assert capsys.readouterr() == ('', f"python -m harness.scale_out: error: {words}\n")
    assert not (tmp_path / 'o.json').exists()
