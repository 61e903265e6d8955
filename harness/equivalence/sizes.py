"""The size probe: code paths that only run above (or below) a size must be compared too.

A pipeline may take another path for a batch of one window, for a batch larger than the plan's, or when its cache is
memory-mapped rather than loaded (the native `data.memory: auto` picks one by a RAM budget, so a small scenario would
only ever run one of them). The probe compares the first epoch again, bitwise against the reference, with

- batch size 1 (every window its own batch) and one batch of all windows, same order as the plan;
- the candidate opened in every memory mode of `data.memory` (`load`, `map`), through its `configured(config)`: a
  pipeline without that option gets its own class back and simply repeats the comparison.

Each probed variant reports its batches, whether it is equal and covered (every window at its planned place,
identified by content), and on a failure the diagnosis (`harness.equivalence.diagnose`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from harness.config import ScenarioConfig
from harness.equivalence.batches import compare_pipelines
from harness.equivalence.diagnose import diagnose_epoch
from harness.equivalence.diff import Tolerance, ToleranceMap
from harness.equivalence.identify import FrameIndex
from harness.pipeline import AbstractPipeline, BatchPlan

PROBED_MEMORY = ('load', 'map')


@dataclass
class ProbeRun:
    """One probed variant of the first epoch.

    Attributes:
        variant: What was probed, e.g. `'batch size 1'`, `'data.memory=map'`.
        batches: Batches in the variant's plan.
        batch_size: Its largest batch.
        passed: Every batch pair equal at the run's tier, every window delivered once at its planned place.
        detail: The comparison in words.
        kind: The diagnosis kind on a failure, `'none'` otherwise.
    """
    variant: str
    batches: int
    batch_size: int
    passed: bool
    detail: str
    kind: str = 'none'

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SizeProbe:
    """Every probed variant; `__bool__` is `passed`."""
    runs: list[ProbeRun] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runs)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed(self) -> list[ProbeRun]:
        return [r for r in self.runs if not r.passed]

    @property
    def detail(self) -> str:
        probed = ', '.join(f"{r.variant} ({r.batches} batches)" for r in self.runs)
        if self.passed:
            return f"the first epoch is bitwise equal and every window at its place in every probed variant: {probed}"
        return '; '.join(f"{r.variant}: {r.kind}: {r.detail}" for r in self.failed[:3])

    def to_dict(self) -> dict:
        return {'passed': self.passed, 'detail': self.detail, 'runs': [r.to_dict() for r in self.runs]}


def recut(plan: BatchPlan, batch_size: int) -> BatchPlan:
    """`plan`'s windows in the same order, cut into batches of `batch_size` (the last one smaller)."""
    keys = plan.keys()
    return BatchPlan(plan.seed, plan.epoch, tuple(tuple(keys[i:i + batch_size]) for i in range(0, len(keys), batch_size)))


def memory_variants(candidate_cls: type[AbstractPipeline], config: ScenarioConfig) -> dict[str, type[AbstractPipeline]]:
    """`data.memory=MODE` -> the candidate class configured with that mode (its own class where it has no such option)."""
    return {f"data.memory={mode}": candidate_cls.configured(dataclasses.replace(
        config, data=dataclasses.replace(config.data, memory=mode))) for mode in PROBED_MEMORY}


def probe_sizes(reference: AbstractPipeline, candidate: AbstractPipeline, plan: BatchPlan, frames: FrameIndex,
                tolerance: Tolerance | ToleranceMap, variants: Mapping[str, Callable[[], AbstractPipeline]] = {}
                ) -> SizeProbe:
    """Compares `plan` (the first epoch) re-cut at batch size 1 and as one batch of all windows, and for each of
    `variants` (name -> a new, opened candidate, e.g. in another memory mode) as planned.

    Args:
        reference, candidate: Opened on the plan's sims.
        variants: Built only when probed, one at a time.
    """
    probe = SizeProbe()
    total = plan.n_windows
    for name, probed in (("batch size 1", recut(plan, 1)), (f"one batch of all {total} windows", recut(plan, total))):
        probe.runs.append(_compare(name, reference, candidate, probed, frames, tolerance))
    for name, make in variants.items():
        probe.runs.append(_compare(name, reference, make(), plan, frames, tolerance))
    return probe


def _compare(name: str, reference: AbstractPipeline, candidate: AbstractPipeline, plan: BatchPlan, frames: FrameIndex,
             tolerance) -> ProbeRun:
    result = compare_pipelines(reference, candidate, [plan], tolerance, frames)
    coverage = [c for c in result.coverage if not c]
    size = max((len(b) for b in plan.batches), default=0)
    if result and not coverage:
        return ProbeRun(name, len(plan), size, True, result.describe())
    diagnosis = diagnose_epoch(reference, candidate, plan, frames, tolerance)
    detail = diagnosis.summary if diagnosis.kind != 'none' else '; '.join(c.describe() for c in coverage)
    return ProbeRun(name, len(plan), size, False, detail, diagnosis.kind if diagnosis.kind != 'none' else 'coverage')
