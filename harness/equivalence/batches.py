"""Drives both pipelines with the same batch plans and compares every pair of batches, by name and by value."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Callable, Iterator, Sequence

from harness.equivalence.diff import TensorDiff, Tolerance, ToleranceMap, compare_batches
from harness.equivalence.identify import FrameIndex
from harness.pipeline import AbstractPipeline, Batch, BatchPlan, WindowKey

MAX_REPORTED = 20


@dataclass
class BatchFailure:
    """A pair of batches that differ: where (epoch, batch index, its planned windows) and how."""
    epoch: int
    batch: int
    keys: list[WindowKey]
    diffs: list[TensorDiff]

    def describe(self) -> str:
        failed = [d.describe() for d in self.diffs if not d]
        return f"epoch {self.epoch}, batch {self.batch}: " + ' | '.join(failed)


@dataclass
class CoverageResult:
    """Which windows one pipeline delivered in one epoch, identified by content (see `harness.identify`), and whether
    each came at its planned place: `misplaced` holds `(planned, served)` for every position whose served window (sim
    included) is another than the planned one."""
    pipeline: str
    epoch: int
    expected: int
    delivered: int
    missing: list[WindowKey] = field(default_factory=list)
    duplicated: list[WindowKey] = field(default_factory=list)
    unexpected: list[WindowKey] = field(default_factory=list)
    unidentified: int = 0
    misplaced: list[tuple[WindowKey, WindowKey]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected or self.unidentified or self.misplaced) \
            and self.delivered == self.expected

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {'pipeline': self.pipeline, 'epoch': self.epoch, 'expected': self.expected, 'delivered': self.delivered,
                'passed': self.passed, 'detail': self.describe()}

    def describe(self) -> str:
        if self.passed:
            return f"{self.pipeline} epoch {self.epoch}: all {self.expected} windows exactly once"
        parts = [f"{self.pipeline} epoch {self.epoch}: delivered {self.delivered} of {self.expected} windows"]
        if self.missing:
            parts.append(f"missing {len(self.missing)} (e.g. {', '.join(map(str, self.missing[:3]))})")
        if self.duplicated:
            parts.append(f"{len(self.duplicated)} delivered more than once (e.g. {', '.join(map(str, self.duplicated[:3]))})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} not in the plan (e.g. {', '.join(map(str, self.unexpected[:3]))})")
        if self.unidentified:
            parts.append(f"{self.unidentified} elements match no simulated window (layout or value change)")
        if self.misplaced:
            shown = ', '.join(f"planned {p}, served {s}" for p, s in self.misplaced[:3])
            parts.append(f"{len(self.misplaced)} served in place of another planned window (e.g. {shown})")
        return '; '.join(parts)


@dataclass
class EquivalenceResult:
    """All batch comparisons of a run. `__bool__` is `passed`."""
    batches_compared: int = 0
    elements_compared: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    identical: bool = True
    failed_batches: int = 0
    batch_count_errors: list[str] = field(default_factory=list)
    failures: list[BatchFailure] = field(default_factory=list)
    coverage: list[CoverageResult] = field(default_factory=list)
    per_tensor: dict[str, dict] = field(default_factory=dict)
    worst: tuple | None = None  # (TensorDiff, legacy Tensor, native Tensor) of the largest value error

    @property
    def first_failure(self) -> BatchFailure | None:
        return self.failures[0] if self.failures else None

    @property
    def passed(self) -> bool:
        return self.failed_batches == 0 and not self.batch_count_errors

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        """Everything but the worst tensors (plotted, not serialised)."""
        return {'batches_compared': self.batches_compared, 'elements_compared': self.elements_compared,
                'max_abs_diff': self.max_abs_diff, 'max_rel_diff': self.max_rel_diff, 'identical': self.identical,
                'failed_batches': self.failed_batches, 'batch_count_errors': self.batch_count_errors,
                'failures': [f.describe() for f in self.failures], 'per_tensor': self.per_tensor,
                'coverage': [c.to_dict() for c in self.coverage]}

    def describe(self) -> str:
        if self.passed:
            kind = 'bitwise identical' if self.identical else 'equal within tolerance'
            return f"{self.batches_compared} batch pairs, {self.elements_compared:,} elements: {kind}"
        parts = self.batch_count_errors + [f"{self.failed_batches} of {self.batches_compared} batch pairs differ"]
        if self.failures:
            parts.append(f"first: {self.failures[0].describe()}")
        return '; '.join(parts)



def paired_batches(legacy: AbstractPipeline, native: AbstractPipeline, plan: BatchPlan
                   ) -> Iterator[tuple[int, dict[str, Batch]]]:
    """Both pipelines' batches of `plan` side by side, converted to PhiML: `(index, {pipeline name: batch})`, without
    the pipeline that has delivered all its batches where the other delivers more."""
    for index, raws in enumerate(zip_longest(legacy.load_batches(plan), native.load_batches(plan))):
        yield index, {p.name: p.to_phiml(raw) for p, raw in zip((legacy, native), raws) if raw is not None}

def compare_pipelines(legacy: AbstractPipeline, native: AbstractPipeline, plans: Sequence[BatchPlan],
                      tolerance: Tolerance | ToleranceMap, frames: FrameIndex | None = None,
                      progress: Callable[[int], None] | None = None) -> EquivalenceResult:
    """Loads every batch of every plan from both pipelines and compares them pair by pair.

    Args:
        legacy: The reference pipeline (opened).
        native: The pipeline under test (opened on the same sims).
        plans: One batch plan per epoch.
        tolerance: Value tier and tolerances.
        frames: When given, also identifies each delivered element by content and audits coverage per epoch.
        progress: Called with 1 per batch pair.

    Raises:
        ValueError: both pipelines have the same `name` (their batches would be taken for each other).
    """
    if legacy.name == native.name:
        raise ValueError(f"`legacy` and `native` are both pipelines named {legacy.name!r}; expected two different "
                         f"`name`s (their batches are keyed by them)")
    result = EquivalenceResult()
    for plan in plans:
        delivered = {legacy.name: [], native.name: []}
        counts = {legacy.name: 0, native.name: 0}
        for index, batches in paired_batches(legacy, native, plan):
            keys = list(plan.batches[index]) if index < len(plan.batches) else []
            for name, batch in batches.items():
                counts[name] += 1
                if frames is not None:
                    delivered[name] += frames.identify(batch, keys)
            if len(batches) == 2:
                diffs = compare_batches(batches[legacy.name], batches[native.name], tolerance, keys)
                _record(result, plan.epoch, index, keys, diffs)
                _keep_worst(result, diffs, batches[legacy.name], batches[native.name])
            if progress:
                progress(1)
        for name, count in counts.items():
            if count != len(plan.batches):
                result.batch_count_errors.append(f"{name} delivered {count} batches in epoch {plan.epoch}, "
                                                 f"the plan has {len(plan.batches)}")
        if frames is not None:
            for name, keys in delivered.items():
                result.coverage.append(audit_coverage(name, plan.epoch, plan.keys(), keys, plan.keys()))
    return result


def _record(result: EquivalenceResult, epoch: int, index: int, keys: list, diffs: list[TensorDiff]) -> None:
    result.batches_compared += 1
    failed = [d for d in diffs if not d]
    for d in diffs:
        result.elements_compared += d.n_elements
        result.max_abs_diff = max(result.max_abs_diff, d.max_abs)
        result.max_rel_diff = max(result.max_rel_diff, d.max_rel)
        result.identical &= d.identical
        stats = result.per_tensor.setdefault(d.name, {'batches': 0, 'failed': 0, 'elements': 0, 'mismatched': 0,
                                                      'max_abs': 0.0, 'max_rel': 0.0})
        stats['batches'] += 1
        stats['failed'] += int(not d)
        stats['elements'] += d.n_elements
        stats['mismatched'] += d.n_mismatched if not d.structure_errors else 0
        stats['max_abs'] = max(stats['max_abs'], d.max_abs)
        stats['max_rel'] = max(stats['max_rel'], d.max_rel)
    if failed:
        result.failed_batches += 1
        if len(result.failures) < MAX_REPORTED:
            result.failures.append(BatchFailure(epoch, index, keys, diffs))


def _keep_worst(result: EquivalenceResult, diffs: list[TensorDiff], legacy: dict, native: dict) -> None:
    from harness.equivalence.diff import flatten_batch
    for d in diffs:
        if d or d.structure_errors or not d.n_elements:
            continue
        if result.worst is None or d.max_abs > result.worst[0].max_abs:
            result.worst = (d, dict(flatten_batch(legacy))[d.name], dict(flatten_batch(native))[d.name])


def audit_coverage(pipeline: str, epoch: int, expected: Sequence[WindowKey], delivered: Sequence[WindowKey | None],
                   planned: Sequence[WindowKey] | None = None) -> CoverageResult:
    """Compares the windows a pipeline delivered with those it was asked for: each exactly once, nothing else, and,
    given `planned` (the planned window at each delivered position), each at its planned place, sim included.

    Args:
        expected: Every window of the epoch's plan.
        delivered: The content-identified window of each delivered element (None: matches no simulated window).
        planned: The window planned at each position of `delivered`.
    """
    counts = Counter(k for k in delivered if k is not None)
    wanted = set(expected)
    misplaced = [(WindowKey(*p), WindowKey(*d)) for p, d in zip(planned or (), delivered)
                 if d is not None and tuple(d) != tuple(p)]
    return CoverageResult(
        pipeline, epoch, expected=len(expected), delivered=len(delivered),
        missing=sorted(wanted - set(counts)), duplicated=sorted(k for k, c in counts.items() if c > 1),
        unexpected=sorted(set(counts) - wanted), unidentified=sum(1 for k in delivered if k is None),
        misplaced=misplaced)
