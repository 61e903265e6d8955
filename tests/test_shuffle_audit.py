"""Audit of each pipeline's own shuffling, and that the audit can fail."""
from harness.equivalence.shuffle_audit import audit_own_shuffling
from legacy import LegacyPipeline
from phiml_native import NativePipeline
from conftest import PIPELINES
import pytest


@pytest.mark.parametrize('name', ['legacy', 'phiml'])
def test_both_pipelines_pass(name, cache_dirs, tiny_config):
    rows = audit_own_shuffling(PIPELINES[name], cache_dirs[name], tiny_config)
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    assert {r.check for r in rows} >= {'epoch 0: each window exactly once', 'same seed, same order',
                                       'other seed, other order', 'training and validation sims never mix'}


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
    rows = {r.check: r for r in audit_own_shuffling(Unseeded, cache_dirs['phiml'], tiny_config)}
    assert not rows['epoch 0: each window exactly once'].passed
    assert '1 repeated' in rows['epoch 0: each window exactly once'].detail
    assert not rows['other seed, other order'].passed
    leaky = {r.check: r for r in audit_own_shuffling(LeaksValidation, cache_dirs['legacy'], tiny_config)}
    assert not leaky['training and validation sims never mix'].passed
    assert 'sims outside the chosen ones: [3]' in leaky['epoch 0: each window exactly once'].detail
