"""Self-test bugs that cost time, not correctness, and the judge that must catch them: the speed check.

A bug here serves exactly the batches of the pipeline it wraps, only later. The judge (`judge_speed`) times batch
loading (one epoch of `load_batches`) of the reference pipeline and of the pipeline under test, paired and
interleaved as the compare run does (`harness.bench.timing.time_paired`), and judges the paired ratios against
`compare.min_speedup.iterate`: a clear miss is caught (kind 'slower stage'); a pass or an inconclusive measurement is
not. With that threshold 0 (no timing verdict) the bugs are not applicable.
"""
from __future__ import annotations

import time
from typing import Iterator

from harness.bench.stats import MISS, OFF, PASS, STRADDLE, RatioJudgement
from harness.bench.timing import time_paired
from harness.pipeline import AbstractPipeline, BatchPlan, drain
from harness.selftest.bugs import InjectedBug

SLOWER_STAGE = 'slower stage'
EXTRA_S_PER_BATCH = 0.003  # on top of twice its own time: a slowdown no noise of a shared machine can hide


class SlowerBatchLoading(InjectedBug):
    """Batch loading three times slower plus a few ms per batch (e.g. a per-batch re-open of the cache file, or a copy
    made per window): every batch waits twice the time its loading took, then `EXTRA_S_PER_BATCH`."""
    expected_kind = SLOWER_STAGE
    judged_by = 'speed'

    @classmethod
    def not_judged(cls, config) -> str | None:
        if config.compare.min_speedup.iterate <= 0:
            return "batch loading is timed, not judged (compare.min_speedup.iterate=0)"
        return None

    def load_batches(self, plan: BatchPlan) -> Iterator:
        batches, end = self.inner.load_batches(plan), object()
        while True:
            start = time.perf_counter()
            raw = next(batches, end)
            if raw is end:
                return
            time.sleep(2 * (time.perf_counter() - start) + EXTRA_S_PER_BATCH)
            yield raw

    def to_phiml(self, raw):
        return self.inner.to_phiml(raw)


def judge_speed(ctx, native: AbstractPipeline) -> tuple[list[str], str, str]:
    """Batch loading of `native` against the reference (`ctx.legacy`), judged at `compare.min_speedup.iterate` from
    `compare.timing_repeats` paired repetitions (re-measured when the interval straddles); returns the fields of a
    `harness.selftest.run.Finding` (failed checks, kind, summary)."""
    cmp = ctx.config.compare
    plan = ctx.expected.plans[0]
    sides = {'legacy': ctx.legacy, 'native': native}
    timing = time_paired({'iterate': lambda side, rep: _timed_epoch(sides[side], plan)},
                         repeats=cmp.timing_repeats, warmup=1, thresholds={'iterate': cmp.min_speedup.iterate},
                         confidence=cmp.confidence, extra_s=cmp.timing_extra_s)['iterate']
    return speed_finding(timing.judgement)


def speed_finding(j: RatioJudgement) -> tuple[list[str], str, str]:
    """Caught only on a clear miss; a pass, an inconclusive measurement (straddle) or no judgement is not caught."""
    summary = f"batch loading: {j.describe()}, threshold {j.threshold}"
    if j.outcome == MISS:
        return ['batch loading not slower'], SLOWER_STAGE, f"native is slower at batch loading: {summary}"
    why = {PASS: 'pass', STRADDLE: 'inconclusive, not counted as caught', OFF: 'not judged'}[j.outcome]
    return [], 'none', f"{summary}: {why}"


def _timed_epoch(pipeline: AbstractPipeline, plan: BatchPlan) -> float:
    start = time.perf_counter()
    drain(pipeline.load_batches(plan))
    return time.perf_counter() - start


CATALOGUE: dict[str, type[InjectedBug]] = {
    'batch loading slower': SlowerBatchLoading,
}
