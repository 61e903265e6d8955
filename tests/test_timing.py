"""How the stages are timed and re-measured: paired runs in alternating order, warm-up dropped, only straddling stages
measured again and only up to their bound. The runs here report made-up seconds (nothing is timed), except the last
test, which runs `time_stages` once on the tiny caches for what it records, not for how fast."""
import itertools
import math

import pytest

from harness import model
from harness.bench.timing import MAX_ROUNDS, PAIRS, STAGES, round_targets, time_paired, time_stages
from harness.plan import make_plan


class Runs:
    """Stage -> run(side, rep) returning the seconds of `seconds(stage, side, call)`; records every call."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.calls = []
        self.count = itertools.count()

    def run(self, stage):
        def run(side, rep):
            self.calls.append((stage, side, rep))
            return self.seconds(stage, side, next(self.count))
        return run

    def __call__(self, *stages):
        return {stage: self.run(stage) for stage in stages}


def _steady(ratio):
    """legacy takes `ratio` times native's 1 ms (no noise)."""
    return lambda stage, side, call: ratio * 1e-3 if side == 'legacy' else 1e-3


def _alternating(high, low):
    """Pairs whose ratio alternates between `high` and `low` (their median interval straddles anything between)."""
    def seconds(stage, side, call):
        return (high if (call // 2) % 2 == 0 else low) * 1e-3 if side == 'legacy' else 1e-3
    return seconds


def test_round_targets():
    assert round_targets('write', 5, 0.9) == [5, 10, 15]
    assert round_targets('write', 1, 0.9) == [1, 5]  # at least the 5 pairs a 90 % interval needs
    assert round_targets('write', 2, 0.9) == [2, 5, 6]
    assert round_targets('step', 1, 0.9) == [1, 2, 3]  # 3 pairs per repetition
    assert round_targets('read', 1, 0.9) == [1, 2, 3]
    assert MAX_ROUNDS == 3 and PAIRS == {'read': 5, 'iterate': 5, 'convert': 5, 'step': 3}


def test_pairs_back_to_back_in_alternating_order_warmup_dropped():
    runs = Runs(_steady(2.0))
    timings = time_paired(runs('write', 'step'), repeats=2, warmup=1, thresholds={'write': 0.9, 'step': 0.9})
    calls = [(stage, side, rep) for stage, side, rep in runs.calls]
    write = [(side, rep) for stage, side, rep in calls if stage == 'write']
    assert write[:6] == [('legacy', 0), ('native', 0), ('native', 1), ('legacy', 1), ('legacy', 2), ('native', 2)]
    assert len(write) == 2 * (1 + 5) and write[6:8] == [('native', 3), ('legacy', 3)]  # re-measured: see below
    step = [side for stage, side, rep in calls if stage == 'step']
    even, odd = ['legacy', 'native', 'native', 'legacy', 'legacy', 'native'], ['native', 'legacy', 'legacy', 'native',
                                                                               'native', 'legacy']
    assert step == even + odd + even  # 3 pairs a repetition, each the other way round from the one before
    assert len(timings['write'].legacy) == timings['write'].repeats  # the warm-up is not kept
    assert (timings['step'].repeats, len(timings['step'].native)) == (2, 6)
    assert timings['step'].judgement.outcome == 'pass' and timings['step'].judgement.ratio == 2.0
    # 2 pairs of write are too few for an interval: re-measured up to 5 pairs, then decided
    assert timings['write'].judgement.outcome == 'pass' and timings['write'].repeats == 5


def test_only_straddling_stages_are_measured_again_up_to_three_times():
    seconds = {'iterate': _steady(2.0), 'write': _alternating(1.2, 0.8), 'step': _steady(0.5)}
    runs = Runs(lambda stage, side, call: seconds[stage](stage, side, call))
    timings = time_paired(runs('iterate', 'write', 'step'), repeats=5, warmup=0,
                          thresholds={'iterate': 0.9, 'write': 0.9, 'step': 0.9})
    outcomes = {s: (t.judgement.outcome, t.repeats, len(t.legacy)) for s, t in timings.items()}
    assert outcomes == {'iterate': ('pass', 5, 25), 'write': ('straddle', 15, 15), 'step': ('miss', 5, 15)}
    later = [stage for stage, _, rep in runs.calls if rep >= 5]
    assert set(later) == {'write'} and len(later) == 2 * 10


def test_a_straddle_measured_again_can_decide():
    def seconds(stage, side, call):  # one low pair among the first 5 (their extremes straddle), the later ones clear
        return _steady(0.8 if call // 2 == 2 else 1.2)(stage, side, call)
    timings = time_paired(Runs(seconds)('write'), repeats=5, warmup=0, thresholds={'write': 0.9})
    assert (timings['write'].judgement.outcome, timings['write'].repeats) == ('pass', 10)


def test_threshold_zero_and_no_extra_time_measure_nothing_more():
    runs = Runs(_alternating(1.2, 0.8))
    off = time_paired(runs('write'), repeats=5, warmup=0, thresholds={'write': 0.0})
    assert (off['write'].judgement.outcome, off['write'].repeats) == ('off', 5)
    capped = time_paired(Runs(_alternating(1.2, 0.8))('write'), repeats=5, warmup=0, thresholds={'write': 0.9},
                         extra_s=0)
    assert (capped['write'].judgement.outcome, capped['write'].repeats) == ('straddle', 5)


def test_a_native_run_timed_at_zero_counts_as_infinitely_fast():
    timings = time_paired(Runs(lambda stage, side, call: 1e-3 if side == 'legacy' else 0.0)('convert'), repeats=1,
                          warmup=0, thresholds={'convert': 0.9})
    assert timings['convert'].paired_ratios == [math.inf] * 5 and timings['convert'].judgement.outcome == 'pass'
    assert timings['convert'].speedup == math.inf


def test_time_stages_times_every_stage_through_the_pipelines(both_pipelines, tiny_config, tiny_sim, tmp_path):
    legacy, native = both_pipelines['legacy'], both_pipelines['phiml']
    plan = make_plan(legacy.window_keys(), tiny_config.data.batch_size, seed=tiny_config.seed, epoch=0)
    network = model.make_network(tiny_config.model, 2, 2, seed=tiny_config.seed)
    before = [p.detach().clone() for p in network.parameters()]
    steps = {}
    for p in (legacy, native):  # count the train steps each pipeline's own trainer runs, one batch each
        original = p.train
        p.train = lambda plans, net, opt, original=original, name=p.name: (
            steps.setdefault(name, []).append(sum(len(plan) for plan in plans)) or original(plans, net, opt))
    try:
        timings = time_stages(legacy, native, tiny_sim, plan, tiny_config.train_sims, network, 1e-3,
                              tmp_path / 'scratch', repeats=1, warmup=0)
    finally:
        del legacy.train, native.train
    assert list(timings) == list(STAGES)
    assert {s: (t.repeats, len(t.legacy), len(t.native)) for s, t in timings.items()} == {
        s: (1, PAIRS.get(s, 1), PAIRS.get(s, 1)) for s in STAGES}
    assert all(x > 0 for s in ('write', 'read', 'iterate', 'step') for x in timings[s].legacy + timings[s].native)
    assert {s: t.judgement.outcome for s, t in timings.items()} == {s: 'off' for s in STAGES}
    assert steps == {'legacy': [1, 1, 1], 'phiml': [1, 1, 1]}
    assert all(bool((a == b).all()) for a, b in zip(before, network.parameters()))  # trained on copies
    assert not (tmp_path / 'scratch').exists()
