"""The interval of a median paired ratio and its verdict, on synthetic samples from fixed seeds (nothing is timed)."""
import math

import numpy as np
import pytest

from harness.bench.stats import (RatioJudgement, coverage, judge_ratios, median_interval, min_samples, order_rank)


def _ratios(median: float, n: int, seed: int, spread: float = 0.15) -> list[float]:
    """`n` log-normal ratios around `median` (a shared machine's pairs: multiplicative noise)."""
    return [float(r) for r in np.exp(np.random.default_rng(seed).normal(math.log(median), spread, n))]


def test_order_ranks_are_those_of_the_sign_test():
    # P(K <= k - 1) for K ~ Bin(n, 1/2) on each side: n=5 -> the extremes (1 - 2/32), n=15 -> ranks 4 and 12
    assert [order_rank(n, 0.9) for n in (1, 4, 5, 9, 15, 45)] == [0, 0, 1, 2, 4, 17]
    assert coverage(5, 0.9) == 1 - 2 / 32
    assert coverage(15, 0.9) == 1 - 2 * (1 + 15 + 105 + 455) / 2 ** 15
    assert coverage(4, 0.9) == 0.0
    assert [min_samples(c) for c in (0.5, 0.75, 0.9, 0.95, 0.99)] == [2, 3, 5, 6, 8]


def test_median_interval_is_the_order_statistics():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 7.0, 8.0, 6.0]  # n=9 at 0.9: ranks 2 and 8 of the sorted samples
    assert median_interval(samples, 0.9) == (2.0, 8.0)
    assert median_interval(samples[:5], 0.9) == (1.0, 5.0)
    assert median_interval(samples[:4], 0.9) == (-math.inf, math.inf)  # too few for 90 %
    with pytest.raises(ValueError, match=r"`confidence` \(=1\) must be in \(0, 1\)"):
        median_interval(samples, 1)


def test_interval_covers_the_true_median_as_often_as_it_says():
    rng = np.random.default_rng(3)
    for n, claimed in ((5, 0.9375), (15, coverage(15, 0.9))):
        trials = np.exp(rng.normal(0.0, 0.5, (4000, n)))  # true median 1
        covered = np.mean([lo <= 1 <= hi for lo, hi in (median_interval(t, 0.9) for t in trials)])
        assert claimed - 0.015 < covered < claimed + 0.015, (n, covered)


def test_clear_pass():
    j = judge_ratios(_ratios(1.5, 15, seed=1), 0.9, 0.9)
    assert j.outcome == 'pass' and j.low >= 0.9 and j.n == 15 and j.coverage == coverage(15, 0.9)


def test_clear_miss():
    j = judge_ratios(_ratios(0.5, 15, seed=2), 0.9, 0.9)
    assert j.outcome == 'miss' and j.high < 0.9


def test_straddle_decides_nothing():
    j = judge_ratios(_ratios(0.9, 15, seed=3), 0.9, 0.9)
    assert j.outcome == 'straddle' and j.low < 0.9 <= j.high


def test_too_few_pairs_straddle_any_threshold():
    j = judge_ratios([3.0, 3.1, 2.9], 0.9, 0.9)  # clearly faster, but 3 pairs give no 90 % interval
    assert (j.outcome, j.low, j.high, j.coverage) == ('straddle', -math.inf, math.inf, 0.0)
    assert j.describe() == "speedup 3.00x (median of 3 paired ratios, too few for a 90% interval)"


def test_the_threshold_itself_passes_and_zero_is_off():
    assert judge_ratios([1.0, 1.2, 1.1, 1.3, 1.4], 1.0, 0.9).outcome == 'pass'
    off = judge_ratios([0.01, 0.02, 0.01], 0.0, 0.9)
    assert off == RatioJudgement('off', 0.01, -math.inf, math.inf, 3, 0.0, 0.9, 0.0)


def test_describe_and_refusals():
    j = judge_ratios([1.0, 1.2, 1.1, 1.3, 1.4], 0.9, 0.9)
    assert j.describe() == "speedup 1.20x (median of 5 paired ratios, 90% interval 1.00-1.40)"
    assert j.to_dict() == {'outcome': 'pass', 'ratio': 1.2, 'low': 1.0, 'high': 1.4, 'n': 5, 'threshold': 0.9,
                           'confidence': 0.9, 'coverage': 0.9375}
    with pytest.raises(ValueError, match="no paired ratios to judge"):
        judge_ratios([], 0.9, 0.9)


def test_same_samples_same_judgement():
    samples = _ratios(0.95, 30, seed=4, spread=0.3)
    assert judge_ratios(samples, 0.9, 0.9) == judge_ratios(list(reversed(samples)), 0.9, 0.9)
