"""Pluggable pipelines: `--legacy` / `--native MODULE:CLASS` (and `pipelines.*` in the config) on every command, proved
with `tests/npy_pipeline.py`, a third pipeline that shares no code with `legacy/` or `phiml_native/`."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from phiml import math

from harness.cache.build import build_cache, verify_cache
from harness.cache.manifest import Manifest, cache_kind, sims_on_disk
from harness.cli import bench as bench_cli
from harness.cli import compare, migrate
from harness.cli import selftest as selftest_cli
from harness.cli.registry import configure_pipelines, pipeline_classes, report_folder
from harness.config import load_config
from harness.equivalence.batches import compare_pipelines
from harness.errors import CacheError, ConfigError
from harness.pipeline import AbstractPipeline, load_pipeline
from harness.plan import make_plan
from harness.selftest.run import catalogue
from harness.selftest.run import run_selftest
from legacy import LegacyPipeline
from phiml_native import NativePipeline

ROOT = Path(__file__).resolve().parents[1]
NPY = 'tests.npy_pipeline:NpyPipeline'
NpyPipeline = load_pipeline(NPY)  # the class the CLI imports (not a second copy of the module under another name)
INCOMPLETE_MISSING = ['everyday_epochs', 'load_batches', 'read_fields', 'to_phiml', 'train',
                      'write_cache', 'write_fields']


@pytest.fixture(scope='module')
def npy_cache(tiny_sim, tmp_path_factory):
    """The tiny scenario's cache built by the harness with the npy pipeline (manifest included)."""
    pipeline = NpyPipeline(tmp_path_factory.mktemp('npy') / 'npy', tiny_sim.config.data.rollout_steps)
    build_cache(pipeline, tiny_sim.config, tiny_sim)
    return pipeline.cache_dir


# --- the pipeline itself, through the interface ------------------------------------------------------------------

def test_with_options_subclasses_only_where_an_option_changes(tiny_config):
    assert LegacyPipeline.with_options(cast_float32=False) is LegacyPipeline
    assert LegacyPipeline.configured(tiny_config) is LegacyPipeline
    cast = LegacyPipeline.with_options(cast_float32=True, channels={})
    assert issubclass(cast, LegacyPipeline) and cast is not LegacyPipeline
    assert (cast.cast_float32, LegacyPipeline.cast_float32) == (True, False)
    assert (cast.__module__, cast.__qualname__) == ('legacy.pipeline', 'LegacyPipeline')
    with pytest.raises(AttributeError, match='cast_float23'):  # a misspelt option is not set silently
        NativePipeline.with_options(cast_float23=True)


def test_npy_files_are_plain_numpy(npy_cache, tiny_config):
    assert sorted(p.name for p in npy_cache.iterdir()) == ['manifest.json'] + [f'traj_{s:05d}.npz' for s in
                                                                               tiny_config.all_sims]
    with np.load(npy_cache / 'traj_00002.npz', allow_pickle=False) as stored:
        assert sorted(stored.files) == ['__layout__', '__metadata__', 'velocity']
        assert stored['velocity'].shape == (9, 16, 16, 2) and stored['velocity'].dtype == np.float32
        assert json.loads(str(stored['__metadata__']))['sim_index'] == 2
    assert Manifest.load(npy_cache).pipeline == 'npy'
    assert sims_on_disk(npy_cache, cache_kind(NpyPipeline)) == tiny_config.all_sims
    assert cache_kind(NpyPipeline).sim_of('traj_00012.npz') == 12 and cache_kind(NpyPipeline).sim_of('sim_000012.npz') is None
    assert verify_cache(npy_cache, NpyPipeline, tiny_config).passed


def test_npy_reads_a_file_plain_numpy_wrote(tmp_path):
    values = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    np.savez(tmp_path / 'traj_00007.npz', density=values, __metadata__=np.array('{"note": [1, 2.5, null]}'),
             __layout__=np.array('{"density": {"dims": ["time", "x", "y"], "item_names": []}}'))
    fields, metadata = NpyPipeline(tmp_path, 2).read_fields(7)
    assert metadata == {'note': [1, 2.5, None]}
    assert fields['density'].shape.names == ('time', 'x', 'y') and fields['density'].shape.batch.names == ('time',)
    assert np.array_equal(fields['density'].numpy('time,x,y'), values)


def test_npy_refuses_pickles_naming_the_file(tmp_path):
    np.savez(tmp_path / 'traj_00000.npz', velocity=np.array([object()], dtype=object), __metadata__=np.array('{}'),
             __layout__=np.array('{"velocity": {"dims": ["time"], "item_names": []}}'))
    with pytest.raises(CacheError, match=r"traj_00000\.npz: not a readable npy cache file \(ValueError: Object arrays"):
        NpyPipeline(tmp_path, 2).describe_file(0)


def test_npy_batches_equal_legacy_bitwise(npy_cache, cache_dirs, tiny_config):
    legacy, npy = LegacyPipeline(cache_dirs['legacy'], 2), NpyPipeline(npy_cache, 2)
    legacy.open(tiny_config.train_sims)
    npy.open(tiny_config.train_sims)
    assert npy.window_keys() == legacy.window_keys()
    plan = make_plan(legacy.window_keys(), 4, seed=3, epoch=1)
    result = compare_pipelines(legacy, npy, [plan], compare_tolerance())
    assert result.passed and result.identical and result.batches_compared == 6
    first = next(npy.batches(plan))
    assert first['targets'].shape.names == ('batch', 'time', 'x', 'y', 'vector')
    assert first['targets'].shape.get_item_names('vector') == ('x', 'y') and first['targets'].dtype == math.DType(float, 32)


def compare_tolerance():
    from harness.equivalence.diff import Tolerance
    return Tolerance('identical')


def test_same_name_is_refused_by_the_comparison(cache_dirs, tiny_config):
    a, b = LegacyPipeline(cache_dirs['legacy'], 2), LegacyPipeline(cache_dirs['legacy'], 2)
    with pytest.raises(ValueError, match=r"both pipelines named 'legacy'"):
        compare_pipelines(a, b, [], compare_tolerance())


def test_selftest_wraps_the_foreign_pipeline(tiny_config, tiny_sim):
    served = []

    class Counting(NpyPipeline):
        def load_batches(self, plan):
            served.append(type(self).__name__)
            return super().load_batches(plan)

    result = run_selftest(tiny_config, LegacyPipeline, Counting, tiny_sim)
    assert result, result.table()
    assert [(r.bug, r.kind) for r in result.rows] == [('none (clean native pipeline)', 'none')] + \
        [(name, bug.expected_kind) for name, bug in catalogue().items()]
    assert set(served) == {'Counting'} and len(served) > 6 * len(catalogue())  # every bug's batches came from it


# --- choosing the classes ----------------------------------------------------------------------------------------

def test_flags_override_the_config_and_the_config_the_defaults():
    config = load_config('burgers', [f'pipelines.native={NPY}'])
    assert config.pipelines.native == NPY and config.pipelines.legacy == 'legacy:LegacyPipeline'
    assert pipeline_classes(None, None, config)[0] == (LegacyPipeline, NpyPipeline)
    assert pipeline_classes(None, 'phiml_native:NativePipeline', config)[0] == (LegacyPipeline, NativePipeline)
    resolved, classes = configure_pipelines(load_config('burgers'), None, NPY)
    assert resolved.pipelines.native == NPY and classes == (LegacyPipeline, NpyPipeline)
    assert report_folder(resolved, classes) == Path('reports/burgers-legacy-vs-npy')
    assert report_folder(load_config('burgers'), (LegacyPipeline, NativePipeline)) == Path('reports/burgers')


class NoName(NpyPipeline):
    name = ''


class OtherConstructor(NpyPipeline):
    def __init__(self, folder):
        super().__init__(folder, 1)


@pytest.mark.parametrize('spec, words', [
    ('nosuch.module:X', "--native (='nosuch.module:X'): cannot import module 'nosuch.module' (ModuleNotFoundError: No "
                        "module named 'nosuch'); expected a module importable"),
    ('json:loads', "--native (='json:loads'): json.loads is a function, not a pipeline class; expected a subclass of "
                   "harness.pipeline.AbstractPipeline"),
    ('tests.npy_pipeline:Incomplete', f"--native (='tests.npy_pipeline:Incomplete'): Incomplete does not implement "
                                      f"{INCOMPLETE_MISSING} of the Pipeline interface; expected a class implementing"),
    ('tests.npy_pipeline', "--native (='tests.npy_pipeline') must be MODULE:CLASS"),
    (f'{__name__}:NoName', f"--native (='{__name__}:NoName'): NoName has `name` (='') and `file_suffix` (='.npz'); "
                           f"expected class attributes"),
    (f'{__name__}:OtherConstructor', f"--native (='{__name__}:OtherConstructor'): OtherConstructor(cache_dir, "
                                     f"rollout_steps) cannot be called"),
    ('legacy:LegacyPipeline', "`pipelines.legacy` (='legacy:LegacyPipeline') and --native (='legacy:LegacyPipeline') "
                              "are both pipelines named 'legacy'; expected two different `name`s"),
], ids=['no-module', 'not-a-class', 'incomplete', 'no-colon', 'no-name', 'constructor', 'same-name'])
@pytest.mark.parametrize('command', [compare, selftest_cli, bench_cli], ids=['compare', 'selftest', 'bench'])
def test_bad_pipeline_is_one_line_and_exit_2(command, spec, words, capsys, tmp_path):
    out = ['--out', str(tmp_path)] if command is not selftest_cli else []
    assert command.main(['burgers', '--quick' if command is not bench_cli else 'data.n_sims=1', '--native', spec,
                         *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{command.PROG}: error: ") and words in err, err
    assert len(err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_bad_pipeline_subprocess_one_line(tmp_path):
    # as a real process (the in-process test above covers every kind of bad class): one line, exit 2, no traceback
    spec = 'nosuch.module:X'
    proc = subprocess.run([sys.executable, '-m', 'harness.compare', 'burgers', '--quick', '--native', spec,
                           '--out', str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ''
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m harness.compare: error: --native (={spec!r}): "), lines


def test_bad_config_pipeline_names_the_key(capsys, tmp_path):
    assert compare.main(['burgers', '--quick', 'pipelines.legacy=json:loads', '--out', str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("python -m harness.compare: error: `pipelines.legacy` (='json:loads'): json.loads "
                                       "is a function, not a pipeline class; expected a subclass of "
                                       "harness.pipeline.AbstractPipeline\n")


# --- the commands, end to end ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_compare_judges_the_npy_pipeline_go(tmp_path, capsys):
    # min_speedup=0: the timing checks still run and are reported, but a test asserts no timings (a shared machine's
    # load decides them); every correctness check must pass on its own merits
    code = compare.main(['burgers', '--quick', '--native', NPY, 'compare.min_speedup=0', '--out', str(tmp_path),
                         '--no-progress'])
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert code == 0 and summary['verdict'] == 'go', capsys.readouterr().out
    assert [c['name'] for c in summary['checks'] if not c['passed']] == [] and len(summary['checks']) == 16
    assert summary['equivalence']['identical'] is True and summary['equivalence']['batches_compared'] == 14
    assert summary['training']['first_divergent_step'] is None  # loss curves bitwise equal
    assert {r['pipeline'] for r in summary['equivalence']['everyday']} == {'legacy', 'npy'}
    assert all(r['passed'] for r in summary['equivalence']['everyday'])
    assert all(r['ok'] for r in summary['equivalence']['selftest']) and len(summary['equivalence']['selftest']) == 22
    assert summary['provenance']['config']['pipelines'] == {'legacy': 'legacy:LegacyPipeline', 'native': NPY}
    assert summary['provenance']['overrides'] == ['--quick', '--native', NPY, 'compare.min_speedup=0']
    assert Manifest.load(tmp_path / 'cache' / 'phiml').pipeline == 'npy'
    assert sorted(p.name for p in (tmp_path / 'cache' / 'phiml').glob('*.npz')) == [f'traj_{s:05d}.npz' for s in range(4)]


@pytest.mark.slow
def test_selftest_catches_every_bug_in_the_npy_pipeline(capsys):
    assert selftest_cli.main(['burgers', '--quick', '--native', NPY]) == 0
    out = capsys.readouterr().out
    assert f"self-test: PASSED: {len(catalogue())} injected bugs, all caught and diagnosed; clean pipeline passes" in out
    rows = out.splitlines()[2:2 + len(catalogue()) + 1]
    assert [row[:32].strip() for row in rows] == ['none (clean native pipeline)', *catalogue()]
    assert all(row[80:83] == 'ok ' for row in rows), rows


@pytest.mark.slow
def test_migrate_legacy_to_npy_and_back(cache_dirs, tmp_path, capsys):
    npy_dir, back = tmp_path / 'npy', tmp_path / 'legacy'
    assert migrate.main([str(cache_dirs['legacy']), str(npy_dir), '--native', NPY, '--no-progress']) == 0
    assert migrate.main([str(npy_dir), str(back), '--legacy', NPY, '--native', 'legacy:LegacyPipeline',
                         '--no-progress']) == 0
    assert sims_on_disk(npy_dir, cache_kind(NpyPipeline)) == [0, 1, 2, 3]
    assert Manifest.load(npy_dir).pipeline == 'npy' and Manifest.load(back).pipeline == 'legacy'
    for sim in range(4):
        source, _ = LegacyPipeline(cache_dirs['legacy'], 2).read_fields(sim)
        for folder, cls in ((npy_dir, NpyPipeline), (back, LegacyPipeline)):
            fields, metadata = cls(folder, 2).read_fields(sim)
            assert metadata['sim_index'] == sim
            assert np.array_equal(fields['velocity'].numpy('time,x,y,vector'), source['velocity'].numpy('time,x,y,vector'))
    assert migrate.main([str(cache_dirs['legacy']), str(tmp_path / 'x'), '--native', 'json:loads']) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "python -m harness.migrate: error: --native (='json:loads'): json.loads is a function")


@pytest.mark.slow
def test_bench_runs_the_npy_pipeline(tmp_path, capsys):
    assert bench_cli.main(['burgers', 'sim.resolution=[16,16]', 'sim.n_steps=8', 'data.n_sims=2', 'data.n_val_sims=0',
                           '--native', NPY, '--repeats', '1', '--warmup', '0', '--skip', 'scaling', '--out',
                           str(tmp_path)]) == 0
    written = json.loads((tmp_path / 'bench.json').read_text())
    assert '--native' in written['machine']['argv'] and NPY in written['machine']['argv']
    assert written['stages']['iterate']['epoch_bytes'] == 2 * 5 * 5 * 16 * 16 * 2 * 4  # 2 sims x 5 windows x (1 + 4) frames
    assert written['memory']['native']['pipeline'] == 'npy'
