"""The checks behind the verdict (go / no-go / inconclusive), each with a detail a user can act on."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from harness.bench.epoch_memory import EpochMemory
from harness.bench.stats import MISS, OFF, PASS
from harness.bench.timing import StageTiming
from harness.config import ScenarioConfig
from harness.equivalence.batches import EquivalenceResult
from harness.equivalence.training import TrainingResult

GO, NO_GO, INCONCLUSIVE = 'go', 'no-go', 'inconclusive'


@dataclass(frozen=True)
class Check:
    """One check of the verdict. `inconclusive` (only a timing check can be): the measurement could not tell pass
    from fail; then `passed` is False."""
    name: str
    passed: bool
    detail: str
    inconclusive: bool = False

    def __post_init__(self):
        if self.passed and self.inconclusive:
            raise ValueError(f"check {self.name!r}: passed and inconclusive at once")

    def __bool__(self) -> bool:
        return self.passed

    @property
    def state(self) -> str:
        """'pass', 'fail' or 'inconclusive'."""
        return 'pass' if self.passed else 'inconclusive' if self.inconclusive else 'fail'

    def to_dict(self) -> dict:
        return {**asdict(self), 'state': self.state}


def verdict(checks: Sequence[Check]) -> str:
    """`'go'` when every check passed; `'no-go'` when any failed (a clear miss), whatever the others; else
    `'inconclusive'` (some timing check could not decide). No checks is no evidence: no-go."""
    if not checks or any(c.state == 'fail' for c in checks):
        return NO_GO
    return INCONCLUSIVE if any(c.inconclusive for c in checks) else GO


def equivalence_check(result: EquivalenceResult, config: ScenarioConfig) -> Check:
    tier = config.compare.tier
    if result.passed:
        return Check('batches equal', True, result.describe())
    hint = ("the native pipeline hands the model different data than the legacy one; fix its conversion "
            "(PhiMLDataManager.field_to_phiml_tensor) or its batch assembly (PhiMLDataset.gather) before switching")
    return Check('batches equal', False, f"{result.describe()} (tier={tier}); {hint}")


def coverage_check(result: EquivalenceResult) -> Check:
    failed = [c for c in result.coverage if not c]
    if not result.coverage:
        return Check('every window delivered exactly once', False, "coverage was not audited")
    if not failed:
        epochs = len({c.epoch for c in result.coverage})
        return Check('every window delivered exactly once', True,
                     f"both pipelines delivered each planned window exactly once in all {epochs} epoch(s), "
                     f"identified by content against the simulation")
    return Check('every window delivered exactly once', False,
                 '; '.join(c.describe() for c in failed[:4]) + "; a pipeline drops, repeats or alters windows")


def window_keys_check(expected: Sequence, found: Mapping[str, Sequence]) -> Check:
    wrong = {name: keys for name, keys in found.items() if list(keys) != list(expected)}
    if not wrong:
        return Check('window enumeration', True, f"both pipelines enumerate the same {len(expected)} windows "
                                                 f"(n_frames - rollout_steps per sim)")
    details = []
    for name, keys in wrong.items():
        extra, missing = sorted(set(keys) - set(expected)), sorted(set(expected) - set(keys))
        repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
        notes = [f"{len(listed)} {what} (first {listed[0]})"
                 for listed, what in ((extra, 'extra'), (missing, 'missing'), (repeated, 'repeated')) if listed]
        details.append(f"{name} enumerates {len(keys)} windows, expected {len(expected)}" +
                       (f": {', '.join(notes)}" if notes else " in another order"))
    return Check('window enumeration', False, '; '.join(details))


def training_check(result: TrainingResult) -> Check:
    if result.passed:
        return Check('loss curves agree', True, result.describe())
    return Check('loss curves agree', False, result.describe() + "; with equal batches this points at nondeterminism "
                 "(torch thread count, initial weights, optimizer state) or at a data difference the diff did not see")


STAGE_CHECKS = {'write': 'cache write', 'read': 'cache read', 'iterate': 'batch loading', 'convert': 'conversion',
                'step': 'train step'}  # timed stage -> the name of its check ('<name> not slower')


ONE_TIME_STAGES = ('write', 'read')  # paid once per cache or per process, not per batch


def speed_check(timings: Mapping[str, StageTiming], stage: str, title: str | None = None, *,
                training_s: float | None = None, one_time_share: float = 0.0) -> Check:
    """The judged stage (`StageTiming.judgement`): pass, a clear miss, or inconclusive with how to rerun.

    A one-time stage (`ONE_TIME_STAGES`) that is slower (a miss or inconclusive) still passes when native's extra time
    is at most `one_time_share` of `training_s`, the training the cache feeds (native train step x steps of the
    configured epochs): a cost no training run notices. With `one_time_share` 0 it is judged as any other stage.

    Raises:
        KeyError: `stage` was not timed.
        ValueError: it was timed but not judged.
    """
    t = timings[stage]
    title = title or STAGE_CHECKS[stage]
    j = t.judgement
    if j is None:
        raise ValueError(f"stage {stage!r} was timed but not judged (expected StageTiming.judge first)")
    name = f'{title} not slower'
    detail = f"native {t.native_s * 1e3:.2f} ms vs legacy {t.legacy_s * 1e3:.2f} ms, {j.describe()}"
    if j.outcome == OFF:
        return Check(name, True, f"{detail}; not judged (compare.min_speedup.{stage}=0)")
    if j.outcome == PASS:
        return Check(name, True, f"{detail} >= {j.threshold}")
    extra = max(0.0, t.native_s - t.legacy_s)  # none where native's median is the faster but its interval straddles
    if stage in ONE_TIME_STAGES and training_s and one_time_share > 0 and extra <= one_time_share * training_s:
        where = 'below' if j.outcome == MISS else 'not clearly at or above'
        return Check(name, True, f"{detail}, {where} {j.threshold}, but the extra {extra * 1e3:.2f} ms is "
                     f"{extra / training_s:.2%} of the training it feeds ({training_s:.2f} s), within "
                     f"compare.one_time_share={one_time_share:g}: paid once, not per batch")
    if j.outcome == MISS:
        return Check(name, False, f"{detail} entirely below {j.threshold}: the native pipeline is clearly slower at "
                     f"{title}; profile it (python -m harness.bench) before switching")
    return Check(name, False, f"{detail} straddles the threshold {j.threshold} (compare.min_speedup.{stage}) after "
                 f"{t.repeats} repetitions: this machine was too noisy to tell; rerun on a quieter machine, or with "
                 f"more repetitions: compare.timing_repeats={t.repeats} starts where this run stopped",
                 inconclusive=True)


def memory_check(memory: EpochMemory, max_ratio: float, slack_bytes: int) -> Check:
    """Native's epoch peak at most `max_ratio` times legacy's, plus `slack_bytes` (below which peaks are allocator and
    page noise); `max_ratio` inf: not judged."""
    name = 'epoch memory not larger'
    if not memory.measured:
        return Check(name, True, "not measured: this system cannot reset the peak resident set (/proc/self/clear_refs); "
                                 "python -m harness.bench measures it in subprocesses")
    mb = 2 ** 20
    detail = (f"open + one epoch raised the peak resident set by {memory.native_bytes / mb:.2f} MiB (native) vs "
              f"{memory.legacy_bytes / mb:.2f} MiB (legacy), median of {len(memory.native)}")
    limit = max_ratio * memory.legacy_bytes + slack_bytes
    if max_ratio == float('inf'):
        return Check(name, True, f"{detail}; not judged (compare.max_memory_ratio=.inf)")
    if memory.native_bytes <= limit:
        return Check(name, True, f"{detail} <= {max_ratio}x legacy + {slack_bytes / mb:g} MiB")
    return Check(name, False, f"{detail} > {max_ratio}x legacy + {slack_bytes / mb:g} MiB: the native pipeline holds "
                 f"more memory per epoch; see python -m harness.bench for where (peak per pipeline, against the "
                 f"cached bytes)")


def everyday_check(rows) -> Check:
    """The everyday audits (`harness.equivalence.everyday.EverydayRow`): each pipeline's own loader, trainer and loader
    variants, judged by what they deliver."""
    failed = [r for r in rows if not r.passed]
    if not rows:
        return Check('everyday paths', False, "the everyday paths were not audited")
    pipelines = ' and '.join(dict.fromkeys(r.pipeline for r in rows))
    if not failed:
        return Check('everyday paths', True, f"{len(rows)} audits of {pipelines} passed: their own loaders serve each "
                     f"window once per epoch, seeded, train and validation apart, batches keep their values, every loader "
                     f"variant serves the same batches, and their own trainers train as the plan-driven path does")
    return Check('everyday paths', False, '; '.join(f"{r.pipeline}: {r.check} ({r.kind}): {r.detail}" for r in failed[:3])
                 + "; the code a user runs every day does not deliver what the comparison judged")


def selftest_check(result) -> Check:
    bad = [r for r in result.rows if not r.ok]
    n = len(result.rows) - 1
    scope = f" (judged on the first {result.sims} training sims, compare.selftest_sims)" if result.sims else ''
    if not bad:
        return Check('harness self-test', True, f"all {n} injected migration bugs caught and diagnosed; clean pipeline "
                                                f"passes{scope}")
    clean = result.rows[0]
    if clean.expected_kind == 'none' and not clean.ok:
        return Check('harness self-test', False, f"not possible: the native pipeline under test differs from legacy "
                     f"without an injected bug ({clean.check} failed; diagnosed {clean.kind!r}), so bugs injected into "
                     f"it cannot be told apart; fix that difference first")
    return Check('harness self-test', False, "the harness itself is unreliable here: " +
                 '; '.join(f"{r.bug}: caught={r.caught}, diagnosed {r.kind!r} (expected {r.expected_kind!r})" for r in bad[:3])
                 + scope)


def physics_check(report) -> Check:
    """The physics sanity of the data (`harness.data.physics.PhysicsReport`): not a pipeline bug, but no-go to train on."""
    if report.passed:
        return Check('physics sanity', True, report.detail)
    return Check('physics sanity', False, report.detail + "; the data is physically wrong whatever the pipeline: fix the "
                 "simulation (or its parameters, e.g. dt) before training on it")


def metadata_check(report) -> Check:
    """Every source key arrived with its value and type in both caches (`harness.equivalence.metadata`)."""
    if report.passed:
        return Check('metadata carried', True, report.detail)
    return Check('metadata carried', False, report.detail + "; a cache must carry the source's metadata unchanged "
                 "(keys, values, types): fix what the pipeline's writer or reader does to it")


def size_probe_check(probe) -> Check:
    """The first epoch equal at batch sizes 1 and all, and in every memory mode (`harness.equivalence.sizes`)."""
    if probe.passed:
        return Check('size-gated paths', True, probe.detail)
    return Check('size-gated paths', False, probe.detail + "; the native pipeline differs from legacy at these batch "
                 "sizes or memory modes (paths the plan's batches may never take)")
