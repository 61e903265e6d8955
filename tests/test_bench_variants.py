"""`harness.bench.variants`: one training epoch per loader variant of the native pipeline, loaded and mapped from a
dropped page cache; any pipeline class (one without variants or a mapped mode too); the cache files untouched."""
import hashlib
import json
import math

import pytest

from conftest import TINY
from harness import model
from harness.bench.run import format_table, run_bench
from harness.config import load_config
from legacy import LegacyPipeline
from harness.bench.variants import bench_variants, drop_page_cache, variant_label
from harness.cache.build import build_cache
from phiml_native import NativePipeline
from tests.npy_pipeline import NpyPipeline


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def steps(monkeypatch):
    """Counts the train steps taken and the batch sizes they were given."""
    taken = []
    original = model.train_step

    def counting(network, optimizer, batch):
        taken.append(batch['initial_state'].shape.get_size('batch'))
        return original(network, optimizer, batch)

    monkeypatch.setattr(model, 'train_step', counting)
    return taken


def test_every_variant_trains_every_batch_of_an_epoch_in_both_modes(cache_dirs, tiny_config, steps):
    before = _digests(cache_dirs['phiml'])
    result = bench_variants(tiny_config, NativePipeline, cache_dirs['phiml'], repeats=2, warmup=1)
    assert list(result) == ['load', 'map (page cache dropped)']
    for figures in result.values():
        assert list(figures['epoch_s']) == ['prefetch=False', 'prefetch=True']
        assert figures['per_repetition']['prefetch=False'] == [1.0, 1.0]
        assert figures['vs_first']['prefetch=True'] == pytest.approx(
            figures['epoch_s']['prefetch=True'] / figures['epoch_s']['prefetch=False'])
        assert all(seconds > 0 for seconds in figures['epoch_s'].values())
    windows = len(tiny_config.train_sims) * (tiny_config.sim.n_frames - tiny_config.data.rollout_steps)
    per_epoch = math.ceil(windows / tiny_config.data.batch_size)
    assert len(steps) == 2 * 2 * 3 * per_epoch  # modes x variants x (warm-up + repeats) epochs, every batch
    assert sum(steps) == 2 * 2 * 3 * windows
    assert _digests(cache_dirs['phiml']) == before  # the page cache was dropped, the files are untouched


def test_a_pipeline_without_variants_or_mapped_mode(tiny_sim, tiny_config, tmp_path, steps):
    pipeline = NpyPipeline(tmp_path / 'npy', tiny_config.data.rollout_steps)
    build_cache(pipeline, tiny_config, tiny_sim)
    result = bench_variants(tiny_config, NpyPipeline, pipeline.cache_dir, repeats=1, warmup=0)
    assert list(result) == ['load'] and list(result['load']['epoch_s']) == ['default']
    assert result['load']['vs_first'] == {'default': 1.0} and len(steps) > 0


def test_variant_labels_and_the_table_line():
    assert variant_label({}) == 'default'
    assert variant_label({'prefetch': True, 'workers': 2}) == 'prefetch=True, workers=2'
    result = {'scenario': 'burgers', 'machine': {'cpu': 'x', 'cpu_count': 2, 'torch_threads': 2, 'gather': 'g'},
              'method': {'repeats': 3}, 'bandwidth': {'bytes_per_s': 1e10}, 'stages': {}, 'targets': [],
              'variants': {'load': {'epoch_s': {'prefetch=False': 1.5, 'prefetch=True': 1.2},
                                    'vs_first': {'prefetch=False': 1.0, 'prefetch=True': 0.8},
                                    'per_repetition': {'prefetch=False': [1.0, 1.0], 'prefetch=True': [0.7, 0.9]}}}}
    line = [line for line in format_table(result).splitlines() if 'loader variant' in line]
    assert line == ['one training epoch per native loader variant, load: prefetch=False 1.5 s (1x), '
                    'prefetch=True 1.2 s (0.8x, per repetition 0.75-0.85)']


def test_dropping_the_page_cache_changes_no_file(tmp_path):
    path = tmp_path / 'data.bin'
    path.write_bytes(bytes(range(256)) * 4096)
    before = _digests(tmp_path)
    path.chmod(0o444)
    drop_page_cache([path])
    assert _digests(tmp_path) == before and path.stat().st_mode & 0o777 == 0o444


@pytest.mark.slow
def test_run_bench_writes_the_variants_with_at_most_its_repeats(tmp_path):
    config = load_config('burgers', TINY)
    run_bench(config, LegacyPipeline, NativePipeline, tmp_path, repeats=1, warmup=0, scaling=False, memory=False,
              variants=True)
    written = json.loads((tmp_path / 'bench.json').read_text())
    assert set(written['variants']) == {'load', 'map (page cache dropped)'}
    for figures in written['variants'].values():
        assert {label: len(ratios) for label, ratios in figures['per_repetition'].items()} == \
            {'prefetch=False': 2, 'prefetch=True': 2}  # repeats=1 is rounded up to even
    assert 'variants' in written['method']
