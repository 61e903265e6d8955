"""Audit of each pipeline's own shuffling, and that the audit can fail."""
from harness.equivalence.shuffle_audit import audit_own_shuffling
from legacy import LegacyPipeline
from phiml_native import NativePipeline
from conftest import PIPELINES
import pytest


@pytest.mark.parametrize('name', ['legacy', 'phiml'])
def test_both_pipelines_pass(name, cache_dirs, tiny_config):
    rows = audit_own_shuffling(PIPELINES[name], cache_dirs[name], tiny_config)
    every = '21 keys, 21 distinct, expected 21 (= 3 sims x 7 windows)'
    assert [(r.pipeline, r.check, r.passed, r.detail) for r in rows] == [
        (name, 'epoch 0: each window exactly once', True, every),
        (name, 'epoch 1: each window exactly once', True, every),
        (name, 'same seed, same order', True, 'two fresh instances, seed 42, epoch 0: identical orders'),
        (name, 'other seed, other order', True, 'seeds 42 and 43: different orders'),
        (name, 'other epoch, other order', True, 'epochs 0 and 1: different orders'),
        (name, 'training and validation sims never mix', True, 'training draws sims [0, 1, 2], validation [3]'),
    ]


class Unseeded(NativePipeline):
    """Ignores the seed and repeats a window: both must be flagged."""

    def own_epoch(self, seed, epoch, batch_size):
        keys = self.window_keys()
        keys[1] = keys[0]
        return [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]


class LeaksValidation(LegacyPipeline):
    def own_epoch(self, seed, epoch, batch_size):
        batches = super().own_epoch(seed, epoch, batch_size)
        batches[0][0] = batches[0][0]._replace(sim=3)  # sim 3 is the tiny scenario's validation sim
        return batches


def test_audit_catches_bad_shuffling(cache_dirs, tiny_config):
    rows = audit_own_shuffling(Unseeded, cache_dirs['phiml'], tiny_config)
    repeated = '21 keys, 20 distinct, expected 21 (= 3 sims x 7 windows); 1 repeated'
    assert [(r.check, r.passed, r.detail) for r in rows] == [
        ('epoch 0: each window exactly once', False, repeated),
        ('epoch 1: each window exactly once', False, repeated),
        ('same seed, same order', True, 'two fresh instances, seed 42, epoch 0: identical orders'),
        ('other seed, other order', False, 'seeds 42 and 43: IDENTICAL orders'),
        ('other epoch, other order', False, 'epochs 0 and 1: IDENTICAL orders'),
        ('training and validation sims never mix', True, 'training draws sims [0, 1, 2], validation [3]'),
    ]
    leaky = audit_own_shuffling(LeaksValidation, cache_dirs['legacy'], tiny_config)
    outside = '21 keys, 21 distinct, expected 21 (= 3 sims x 7 windows); sims outside the chosen ones: [3]'
    assert [(r.check, r.passed, r.detail) for r in leaky] == [
        ('epoch 0: each window exactly once', False, outside),
        ('epoch 1: each window exactly once', False, outside),
        ('same seed, same order', True, 'two fresh instances, seed 42, epoch 0: identical orders'),
        ('other seed, other order', True, 'seeds 42 and 43: different orders'),
        ('other epoch, other order', True, 'epochs 0 and 1: different orders'),
        ('training and validation sims never mix', False, 'training draws sims [0, 1, 2, 3], validation [3]; shared: [3]'),
    ]
