"""The size probe: the first epoch again at batch sizes 1 and all windows, and the native pipeline in every memory
mode, through `configured(config)`."""
import dataclasses

import pytest

from harness.config import load_config
from harness.equivalence.diff import Tolerance
from harness.equivalence.identify import FrameIndex
from harness.equivalence.sizes import memory_variants, probe_sizes, recut
from harness.plan import make_plan
from harness.selftest.bugs_evidence import LargeBatchSorted
from legacy import LegacyPipeline
from phiml_native import NativePipeline
from tests.npy_pipeline import NpyPipeline
from conftest import TINY


@pytest.fixture(scope='module')
def setup(both_pipelines, tiny_sim, tiny_config):
    plan = make_plan(both_pipelines['legacy'].window_keys(), 4, seed=5, epoch=0)
    return plan, FrameIndex(tiny_sim, tiny_config.train_sims)


def _opened(cls, folder, config):
    pipeline = cls(folder, config.data.rollout_steps)
    pipeline.open(config.train_sims)
    return pipeline


def test_recut_keeps_the_order(setup):
    plan, _ = setup
    assert [len(b) for b in recut(plan, 1).batches] == [1] * 21 and recut(plan, 1).keys() == plan.keys()
    assert recut(plan, 21).batches == (tuple(plan.keys()),) and [len(b) for b in recut(plan, 8).batches] == [8, 8, 5]


def test_native_memory_modes_are_configured(tiny_config, cache_dirs):
    variants = memory_variants(NativePipeline, tiny_config)
    assert list(variants) == ['data.memory=load', 'data.memory=map']
    assert [_opened(cls, cache_dirs['phiml'], tiny_config).dataset.memory for cls in variants.values()] == ['load', 'map']
    assert NativePipeline.configured(tiny_config) is NativePipeline  # the default: auto
    mapped = NativePipeline.configured(load_config('burgers', [*TINY, 'data.memory=map', 'data.memory_budget=0.25']))
    assert (mapped(cache_dirs['phiml'], 2).memory, mapped(cache_dirs['phiml'], 2).memory_budget) == ('map', 0.25)
    # a pipeline without the option gets its own class back and repeats the comparison
    assert set(memory_variants(NpyPipeline, tiny_config).values()) == {NpyPipeline}


def test_clean_pipelines_pass_every_variant(setup, both_pipelines, tiny_config, cache_dirs):
    plan, frames = setup
    variants = {name: (lambda cls=cls: _opened(cls, cache_dirs['phiml'], tiny_config))
                for name, cls in memory_variants(NativePipeline, tiny_config).items()}
    probe = probe_sizes(both_pipelines['legacy'], both_pipelines['phiml'], plan, frames, Tolerance(), variants)
    assert probe and [(r.variant, r.batches, r.batch_size, r.passed, r.kind) for r in probe.runs] == [
        ('batch size 1', 21, 1, True, 'none'), ('one batch of all 21 windows', 1, 21, True, 'none'),
        ('data.memory=load', 6, 4, True, 'none'), ('data.memory=map', 6, 4, True, 'none')]
    assert probe.detail == ("the first epoch is bitwise equal and every window at its place in every probed variant: "
                            "batch size 1 (21 batches), one batch of all 21 windows (1 batches), data.memory=load (6 "
                            "batches), data.memory=map (6 batches)")
    assert probe.runs[0].detail == "21 batch pairs, 32,256 elements: bitwise identical"


def test_a_path_taken_only_for_large_batches_is_caught(setup, both_pipelines, tiny_config):
    """Right at the plan's batch size, wrong in one batch of all windows: only the probe sees it."""
    from harness.equivalence.batches import compare_pipelines
    plan, frames = setup
    legacy, bug = both_pipelines['legacy'], LargeBatchSorted(both_pipelines['phiml'])
    assert compare_pipelines(legacy, bug, [plan], Tolerance(), frames)
    probe = probe_sizes(legacy, bug, plan, frames, Tolerance())
    assert not probe and [(r.variant, r.passed) for r in probe.runs] == [
        ('batch size 1', True), ('one batch of all 21 windows', False)]
    moved = sum(1 for a, b in zip(plan.keys(), sorted(plan.keys())) if a != b)
    assert (probe.failed[0].kind, probe.failed[0].detail) == (
        'reorder', f"same windows in a different order: {moved} of 21 positions differ")
    assert probe.detail == f"one batch of all 21 windows: reorder: same windows in a different order: {moved} of 21 " \
                           f"positions differ"


def test_a_bug_only_in_mapped_mode_is_caught(setup, both_pipelines, tiny_config, cache_dirs):
    """A memory mode that serves other data (here: a mapped dataset whose first sim's map is another sim's)."""
    plan, frames = setup

    class MappedWrong(NativePipeline):
        def open(self, sims):
            super().open(sims)
            if self.dataset.memory == 'map':
                maps = self.dataset.maps['velocity']
                maps[0] = maps[1]

    variants = {name: (lambda cls=cls: _opened(cls, cache_dirs['phiml'], tiny_config))
                for name, cls in memory_variants(MappedWrong, tiny_config).items()}
    probe = probe_sizes(both_pipelines['legacy'], both_pipelines['phiml'], plan, frames, Tolerance(), variants)
    assert [(r.variant, r.passed, r.kind) for r in probe.runs] == [
        ('batch size 1', True, 'none'), ('one batch of all 21 windows', True, 'none'),
        ('data.memory=load', True, 'none'), ('data.memory=map', False, 'wrong simulation')]
