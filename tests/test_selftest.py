"""The self-test: every injected bug caught with the expected diagnosis; the clean pipeline passes."""
import re

import pytest

from harness.cli import selftest as selftest_cli
from harness.selftest import run as selftest
from legacy import LegacyPipeline
from phiml_native import NativePipeline
from harness.selftest.run import catalogue
from harness.bench.stats import judge_ratios
from harness.config import load_config
from harness.selftest.bugs_speed import speed_finding
from conftest import TINY

CLEAN = 'none (clean native pipeline)'
BOTH = 'batches equal, every window delivered exactly once'
# (bug, the checks that catch it, the diagnosis kind): every row of a self-test, in the order it runs them
EXPECTED = [
    (CLEAN, '-', 'none'),
    ('x and y transposed', BOTH, 'layout'),
    ('vector components swapped', BOTH, 'layout'),
    ('vector item names swapped', 'batches equal', 'structure'),
    ('targets shifted by one frame', BOTH, 'time offset'),
    ('windows start one frame late', BOTH, 'time offset'),
    ('rollout one step short', 'batches equal', 'structure'),
    ('data upcast to float64', 'batches equal', 'structure'),
    ('last partial batch dropped', BOTH, 'batch count'),
    ('different shuffle order', BOTH, 'reorder'),
    ('data normalised twice', BOTH, 'value transform'),
    ('tiny numerical drift', BOTH, 'numerical drift'),
    ('metadata float stored as float32', 'metadata carried', 'metadata type'),
    ('metadata key dropped', 'metadata carried', 'metadata missing'),
    ('windows of the wrong simulation', BOTH, 'wrong simulation'),
    ('NaN in served data', BOTH, 'non-finite values'),
    ('large batches take another path', 'size-gated paths', 'size-gated'),
    ('everyday epochs all alike', 'everyday paths', 'everyday path'),
    ('everyday last batch dropped', 'everyday paths', 'everyday path'),
    ('output buffer reused', 'everyday paths', 'batch lifetime'),
    ('loader variant reorders', 'everyday paths', 'loader variant'),
    ('batch loading slower', 'batch loading not slower', 'slower stage'),
]


class _Matches(str):
    """Equal to every string `re.fullmatch`ed by its pattern (a diagnosis with measured figures)."""

    def __eq__(self, other):
        return isinstance(other, str) and re.fullmatch(str(self), other) is not None

    __hash__ = str.__hash__


SLOWER = _Matches(r"native is slower at batch loading: batch loading: speedup 0\.\d\dx \(median of \d+ paired ratios, "
                  r"90% interval 0\.\d\d-0\.\d\d\), threshold 0\.9")


def test_catalogue():
    assert {bug: cls.expected_kind for bug, cls in catalogue().items()} == {bug: kind for bug, _, kind in EXPECTED[1:]}
    assert list(catalogue()) == [bug for bug, _, _ in EXPECTED[1:]]


def test_selftest_passes(tiny_config, tiny_sim, cache_dirs):
    result = selftest.run_selftest(tiny_config, LegacyPipeline, NativePipeline, tiny_sim, cache_dirs['legacy'], cache_dirs['phiml'])
    assert result, result.table()
    assert [(r.bug, r.caught, r.check, r.kind, r.expected_kind, r.ok) for r in result.rows] == [
        (bug, bug != CLEAN, check, kind, kind, True) for bug, check, kind in EXPECTED]
    # the tiny scenario: 3 sims x 7 windows in batches of 4, the last of 1 window
    assert [r.diagnosis for r in result.rows] == [
        "no difference: every batch pair is equal",
        "layout error: the values match after x<->y transposed in 'initial_state'",
        "layout error: the values match after vector components reversed (x, y) in 'initial_state'",
        "structure differs: initial_state: vector item names ('y', 'x') instead of ('x', 'y')",
        "off-by-one in time: targets start 2 frame(s) after the initial state (expected 1)",
        "off-by-one in time: every window is shifted by +1 frame(s) in t0 (e.g. planned (sim=2, t0=2), delivered "
        "(sim=2, t0=3))",
        "structure differs: targets: 1 target frames instead of 2 (rollout short by 1)",
        "structure differs: initial_state: dtype float64 instead of float32 (values equal after casting)",
        "native delivered 5 of 6 batches: the last, partial batch is dropped (sizes [1])",
        "same windows in a different order: 21 of 21 positions differ",
        "native = 1.09658 * legacy + -0.0342323 (data scaled or normalised differently, e.g. normalised twice)",
        "same windows with numerical drift: max relative error 1.06e-06 (would pass with rtol >= 1.06e-06)",
        "9 metadata finding(s) against the source metadata (simulation): phiml sim 0 'domain_size': 1.0 (float32) instead of 1.0 "
        "(float); phiml sim 0 'dt': 0.009999999776482582 (float32) instead of 0.01 (float); phiml sim 0 'viscosity': "
        "0.003000000026077032 (float32) instead of 0.003 (float); phiml sim 1 'domain_size': 1.0 (float32) instead of "
        "1.0 (float); phiml sim 1 'dt': 0.009999999776482582 (float32) instead of 0.01 (float) and 4 more",
        "3 metadata finding(s) against the source metadata (simulation): phiml sim 0 'dt': dropped (the source has 0.01 "
        "(float)); phiml sim 1 'dt': dropped (the source has 0.01 (float)); phiml sim 2 'dt': dropped (the source has "
        "0.01 (float))",
        "windows served from the wrong simulation: 21 of 21 windows are another sim's frames at the planned t0 (e.g. "
        "planned (sim=2, t0=2), served (sim=0, t0=2)); sims served: sim 1 in place of sim 0, sim 2 in place of sim 1, "
        "sim 0 in place of sim 2",
        "the native pipeline serves non-finite values the legacy data does not have: targets: 1 NaN, 0 Inf in 1 "
        "window(s), first in window (sim=2, t0=0) at time=0, x=0, y=0, vector=x (legacy -1.1834)",
        "in one batch of all 21 windows (1 batch(es) of up to 21 windows): reorder: same windows in a different order: "
        "21 of 21 positions differ",
        "epochs in different orders: epochs 0 ... 1: epoch 1 repeats the order of epoch 0",
        "epoch 0: each window exactly once: 20 windows served, 20 distinct, expected 21 (= 3 sims x 7 windows)",
        "everyday batches keep their values: 12 of 12 batches of 2 epochs changed after later ones were built (first: "
        "epoch 0, batch 0): the pipeline reuses an output buffer, so a batch a user keeps is overwritten",
        "loader variant background_threads=2: 2 epochs against prefetch=False: epoch 0, batch 0 differs: windows "
        "[(sim=1, t0=5), (sim=2, t0=0), (sim=1, t0=0), ...] instead of [(sim=2, t0=2), (sim=1, t0=3), (sim=2, t0=1), "
        "...]",
        SLOWER,
    ]


def test_a_missed_bug_fails_the_selftest():
    row = selftest.SelftestRow('some bug', caught=False, check='-', diagnosis='', kind='none', expected_kind='layout')
    assert not row.ok and not selftest.SelftestResult([row])
    clean_flagged = selftest.SelftestRow('none', caught=True, check='x', diagnosis='', kind='layout', expected_kind='none')
    assert not clean_flagged.ok
    misdiagnosed = selftest.SelftestRow('bug', caught=True, check='x', diagnosis='', kind='reorder', expected_kind='layout')
    assert not misdiagnosed.ok
    good = selftest.SelftestRow('bug', caught=True, check='x', diagnosis='', kind='layout', expected_kind='layout')
    assert good.ok and selftest.SelftestResult([good]) and not selftest.SelftestResult([good, misdiagnosed])


@pytest.mark.slow
def test_cli_quick(capsys):
    assert selftest_cli.main(['burgers', '--quick']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ['bug', '-' * len(lines[0])]
    assert [line[:32].rstrip() for line in lines[2:-1]] == [bug for bug, _, _ in EXPECTED]
    assert [line[32:].split()[0] for line in lines[2:-1]] == ['no'] + ['yes'] * 21
    assert [line[80:83] for line in lines[2:-1]] == ['ok '] * 22  # the 'ok' column: 32 + 1 + 7 + 1 + 38 + 1
    assert lines[-1] == "self-test: PASSED: 21 injected bugs, all caught and diagnosed; clean pipeline passes"


def test_speed_judge_counts_only_a_clear_miss():
    def judged(ratios, threshold=0.9):
        return selftest.Finding(*speed_finding(judge_ratios(ratios, threshold, 0.9)))
    miss = judged([0.03, 0.04, 0.03, 0.05, 0.03])
    assert (miss.failed, miss.kind) == (['batch loading not slower'], 'slower stage')
    assert miss.summary == ("native is slower at batch loading: batch loading: speedup 0.03x (median of 5 paired "
                            "ratios, 90% interval 0.03-0.05), threshold 0.9")
    straddle = judged([0.5, 1.5, 1.0, 0.7, 1.2])  # a noisy clean pipeline: not caught, so not a failed self-test
    assert (straddle.failed, straddle.kind) == ([], 'none') and straddle.summary.endswith(
        ": inconclusive, not counted as caught")
    assert judged([2.0] * 5).failed == [] and judged([0.1] * 5, threshold=0).failed == []


def test_speed_bug_not_applicable_without_a_timing_verdict(tiny_config, tiny_sim, cache_dirs):
    config = load_config('burgers', [*TINY, 'compare.min_speedup=0'])
    result = selftest.run_selftest(config, LegacyPipeline, NativePipeline, tiny_sim, cache_dirs['legacy'],
                                   cache_dirs['phiml'])
    assert result and [r.bug for r in result.rows] == [bug for bug, _, _ in EXPECTED[:-1]]
    assert result.skipped == {'batch loading slower': "batch loading is timed, not judged "
                                                      "(compare.min_speedup.iterate=0)"}
    assert result.rows[0].diagnosis == "no difference: every batch pair is equal"


def test_order_bugs_between_batches_not_applicable_when_an_epoch_is_one_batch(tiny_config, tiny_sim, cache_dirs):
    config = load_config('burgers', [*TINY, 'data.batch_size=32'])  # 21 windows: one batch per epoch
    result = selftest.run_selftest(config, LegacyPipeline, NativePipeline, tiny_sim, cache_dirs['legacy'],
                                   cache_dirs['phiml'])
    no_partial = "the plan has no partial batch (the windows divide by data.batch_size)"
    assert result.skipped == {
        'last partial batch dropped': no_partial, 'everyday last batch dropped': no_partial,
        'loader variant reorders': "an epoch is one batch (all windows fit in data.batch_size): batches have no "
                                   "order to get wrong"}
    assert result, result.table()
    assert [r.bug for r in result.rows] == [bug for bug, _, _ in EXPECTED if bug not in result.skipped]


@pytest.mark.parametrize('overrides, judged', [
    (['compare.selftest_sims=0'], [0, 1, 2]),
    (['compare.selftest_sims=1'], [0, 1]),  # at least three batches: 2 x 7 windows in batches of 4
    (['compare.selftest_sims=1', 'data.n_sims=5', 'data.batch_size=7'], [0, 1, 2]),  # no partial batch anywhere
    (['compare.selftest_sims=6', 'data.n_sims=9', 'data.batch_size=14'], [0, 1, 2, 3, 4, 5, 6]),  # 6 x 7 would divide
])
def test_the_selftest_judges_the_first_sims_and_enough_of_them(overrides, judged):
    assert selftest.judged_sims(load_config('burgers', [*TINY, *overrides])) == judged


def test_the_selftest_of_a_large_cache_judges_its_first_sims(tiny_sim, cache_dirs):
    """A team's cache of many sims: the self-test's time must not grow with it; its first sims show the same bugs
    caught (the next sim serves as its validation sim)."""
    from harness.report.verdict import selftest_check
    config = load_config('burgers', [*TINY, 'compare.selftest_sims=1'])
    result = selftest.run_selftest(config, LegacyPipeline, NativePipeline, tiny_sim, cache_dirs['legacy'],
                                   cache_dirs['phiml'])
    assert result, result.table()
    assert result.sims == '2 of 3' and [r.bug for r in result.rows] == [bug for bug, _, _ in EXPECTED]
    assert "(judged on the first 2 of 3 training sims, compare.selftest_sims)" in selftest_check(result).detail
