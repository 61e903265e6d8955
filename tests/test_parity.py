"""Training parity: divergence detection, loss ratio, ensemble."""
import math

from harness import model
from harness.equivalence.training import TrainingResult, ensemble
from harness.plan import make_plans


def test_bitwise_equal_curves():
    r = TrainingResult([1.0, 0.5, 0.25], [1.0, 0.5, 0.25])
    assert r and r.first_divergent_step is None and r.max_rel_loss_diff == 0 and r.loss_ratio == [1, 1, 1]
    assert r.describe() == "3 steps: loss curves bitwise equal"


def test_divergence_located():
    r = TrainingResult([1.0, 0.5, 0.25], [1.0, 0.5000001, 0.26], loss_rtol=1e-5)
    assert r.first_divergent_step == 1
    assert r.max_rel_loss_diff == abs(0.25 - 0.26) / 0.26
    assert not r and r.describe() == ("3 steps: curves first differ at step 1; max relative difference 0.0385 "
                                      "(beyond loss_rtol=1e-05)")
    assert r.loss_ratio[2] == 0.26 / 0.25


def test_nan_and_length_mismatch_fail():
    nan = TrainingResult([1.0, math.nan], [1.0, math.nan])
    assert not nan and nan.describe() == "2 steps: loss curves bitwise equal; 2 of 4 losses are NaN or Inf"
    short = TrainingResult([1.0, 0.5], [1.0])
    assert not short and short.first_divergent_step == 1 and short.max_rel_loss_diff == math.inf
    assert short.describe() == ("1 steps: curves first differ at step 1; max relative difference inf "
                                "(beyond loss_rtol=1e-05)")


def test_validation_difference_named_when_training_losses_are_equal():
    """A pipeline whose own trainer is right but whose batches are not trains alike and validates apart."""
    r = TrainingResult([1.0, 0.5], [1.0, 0.5], legacy_val=[0.4], native_val=[0.5], loss_rtol=1e-5)
    assert not r and r.first_divergent_step is None and r.max_rel_loss_diff == (0.5 - 0.4) / 0.5
    assert r.describe() == ("2 steps: loss curves bitwise equal; validation losses differ: max relative difference "
                            "0.2 (beyond loss_rtol=1e-05)")
    close = TrainingResult([1.0], [1.0], legacy_val=[1.0], native_val=[1.0 + 1e-7], loss_rtol=1e-5)
    assert close and close.describe() == ("1 steps: loss curves bitwise equal; validation losses differ: max relative "
                                          "difference 1e-07 (within loss_rtol=1e-05)")
    same = TrainingResult([1.0], [1.0], legacy_val=[0.3], native_val=[0.3])
    assert same and same.describe() == "1 steps: loss curves bitwise equal"


def test_ensemble(both_pipelines, tiny_config):
    legacy, native = both_pipelines['legacy'], both_pipelines['phiml']
    keys = legacy.window_keys()
    result = ensemble(legacy, native, keys, lambda s: model.make_network(tiny_config.model, 2, 2, seed=s),
                      lambda s: make_plans(keys, 8, seed=s, epochs=1), 1e-3, [1, 2])
    d = result.to_dict()
    assert d['seeds'] == [1, 2] and d['final_loss_diff'] == [0.0, 0.0] and d['std_diff'] == 0.0
    assert d['legacy_final'][0] != d['legacy_final'][1]  # the seeds matter
