"""Judging a speed ratio from paired repetitions: an exact confidence interval of the median ratio and its verdict.

Each repetition times legacy and native back to back, so the ratio `legacy_s / native_s` of one pair cancels the
machine's drift; the pairs' ratios are then treated as independent draws. The interval of their median is the
distribution-free one of the sign test (the order statistics `r_(k)` and `r_(n+1-k)` with `k` from the binomial
distribution, as `asv.statistics.quantile_ci` does): no assumption about the shape of the noise, no resampling, and
the same samples always give the same interval. Against a threshold: the interval entirely at or above it passes,
entirely below it is a clear miss, and an interval that straddles it decides nothing (more repetitions, or
inconclusive).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Sequence

PASS, MISS, STRADDLE, OFF = 'pass', 'miss', 'straddle', 'off'


def _binomial_cdf(k: int, n: int) -> float:
    """P(K <= k) for K ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, j) for j in range(k + 1)) / 2 ** n


def order_rank(n: int, confidence: float) -> int:
    """The largest rank `k` (1-based) such that `[r_(k), r_(n+1-k)]` covers the median of `n` samples with at least
    `confidence`; 0 when `n` samples are too few for that confidence."""
    alpha = 1 - confidence
    k = 0
    while k + 1 <= n - k and 2 * _binomial_cdf(k, n) <= alpha:
        k += 1
    return k


def min_samples(confidence: float) -> int:
    """The fewest samples whose extremes cover the median with at least `confidence` (5 for 0.9, 6 for 0.95)."""
    n = 1
    while order_rank(n, confidence) == 0:
        n += 1
    return n


def median_interval(samples: Sequence[float], confidence: float) -> tuple[float, float]:
    """The exact distribution-free interval of the median of `samples` at `confidence`; `(-inf, inf)` when there are
    too few samples for it (see `min_samples`).

    Raises:
        ValueError: `confidence` not in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` (={confidence}) must be in (0, 1)")
    ordered = sorted(samples)
    k = order_rank(len(ordered), confidence)
    if k == 0:
        return -math.inf, math.inf
    return ordered[k - 1], ordered[len(ordered) - k]


def coverage(n: int, confidence: float) -> float:
    """The exact coverage of `median_interval` for `n` samples (at least `confidence`; 0 when there is no interval)."""
    k = order_rank(n, confidence)
    return 1 - 2 * _binomial_cdf(k - 1, n) if k else 0.0


@dataclass(frozen=True)
class RatioJudgement:
    """A ratio judged against its threshold.

    Attributes:
        outcome: 'pass' (interval at or above `threshold`), 'miss' (entirely below), 'straddle' (neither), or 'off'
            (threshold 0: not judged).
        ratio: The median of the paired ratios.
        low, high: Its interval at `confidence` (`-inf, inf` with too few samples).
        n: Number of paired ratios.
        threshold: The smallest ratio that passes.
        confidence: The interval's nominal level; `coverage` is its exact one for `n` samples.
    """
    outcome: str
    ratio: float
    low: float
    high: float
    n: int
    threshold: float
    confidence: float
    coverage: float

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """e.g. `'speedup 1.21x (median of 15 paired ratios, 90 % interval 1.05-1.32)'`."""
        if math.isinf(self.low):
            where = f"too few for a {self.confidence:.0%} interval"
        else:
            where = f"{self.confidence:.0%} interval {self.low:.2f}-{self.high:.2f}"
        return f"speedup {self.ratio:.2f}x (median of {self.n} paired ratios, {where})"


def judge_ratios(ratios: Sequence[float], threshold: float, confidence: float) -> RatioJudgement:
    """Judges paired ratios (higher is better) against `threshold`; a threshold of 0 is 'off' (never decides).

    Raises:
        ValueError: no ratios, or `confidence` not in (0, 1).
    """
    if not ratios:
        raise ValueError("no paired ratios to judge (expected at least one repetition)")
    low, high = median_interval(ratios, confidence)
    if threshold <= 0:
        outcome = OFF
    elif low >= threshold:
        outcome = PASS
    elif high < threshold:
        outcome = MISS
    else:
        outcome = STRADDLE
    return RatioJudgement(outcome, statistics.median(ratios), low, high, len(ratios), threshold, confidence,
                          coverage(len(ratios), confidence))
