"""`compare_pipelines` on an executor: each chunk of sims is compared by a task on a worker that opens both pipelines
on those sims only (`harness.scale.tasks.compare_chunk`); the client merges the chunks into one `EquivalenceResult`.

Every batch of a plan is compared in parts, one per chunk holding some of its windows; a batch counts once, as failed
when any part differs, so the counts, element totals, largest errors and coverage equal the in-process comparison's.
A failure names the plan's epoch and batch and the part's windows. A window served in place of another is found
within each part of a batch (the planned window at each place of the part), in plan order.
"""
from __future__ import annotations

import copy
import logging
from typing import Callable, Sequence

from harness.equivalence import batches as local
from harness.equivalence.diff import Tolerance, ToleranceMap
from harness.equivalence.identify import FrameIndex
from harness.pipeline import AbstractPipeline, BatchPlan
from harness.scale import tasks
from harness.scale.cluster import AbstractExecutor

logger = logging.getLogger(__name__)


def compare_pipelines(executor: AbstractExecutor, legacy: AbstractPipeline, native: AbstractPipeline,
                      plans: Sequence[BatchPlan], tolerance: Tolerance | ToleranceMap, frames: FrameIndex | None = None,
                      progress: Callable[[int], None] | None = None) -> local.EquivalenceResult:
    """`harness.equivalence.batches.compare_pipelines` on `executor` (in this process when it is not distributed).

    The workers open their own pipelines of the same classes on the same folders (`legacy` and `native` need not be
    opened here).

    Args:
        progress: Called with the number of batches that the chunks finishing stand for (their sum is the number of
            batches of `plans`).
    """
    if not executor.distributed:
        return local.compare_pipelines(legacy, native, plans, tolerance, frames, progress)
    sims = sorted({key.sim for plan in plans for key in plan.keys()})
    chunks = executor.chunks(sims)
    refs = tasks.pipeline_ref(type(legacy)), tasks.pipeline_ref(type(native))
    arguments = [(*refs, legacy.cache_dir, native.cache_dir, legacy.rollout_steps, chunk, plans, tolerance,
                  None if frames is None else frames_of(frames, chunk)) for chunk in chunks]
    parts: list = [None] * len(chunks)
    total, done, shown = sum(len(p) for p in plans), 0, 0
    for index, part in executor.run(tasks.compare_chunk, arguments, name='compare'):
        parts[index] = part
        done += len(chunks[index])
        if progress:
            progress(total * done // len(sims) - shown)
            shown = total * done // len(sims)
    return merge(parts, plans, (legacy.name, native.name), frames is not None)


def frames_of(frames: FrameIndex, sims: Sequence[int]) -> FrameIndex:
    """The frame digests of `sims` only, indexed as `FrameIndex` indexes them."""
    part = copy.copy(frames)
    part.frames = {sim: frames.frames[sim] for sim in sims}
    part.by_digest = {}
    for sim in sims:
        for t, digest in enumerate(part.frames[sim]):
            part.by_digest.setdefault(digest, (sim, t))
    return part


def merge(parts: Sequence[tasks.ChunkComparison], plans: Sequence[BatchPlan], names: tuple[str, str],
          coverage: bool) -> local.EquivalenceResult:
    """One `EquivalenceResult` from the comparisons of all chunks (in chunk order)."""
    result = local.EquivalenceResult()
    compared, failed, tensors, failures = set(), set(), {}, {}
    for part in parts:
        compared |= part.compared
        failed |= part.failed
        result.elements_compared += part.elements
        result.max_abs_diff = max(result.max_abs_diff, part.max_abs)
        result.max_rel_diff = max(result.max_rel_diff, part.max_rel)
        result.identical &= part.identical
        result.batch_count_errors += part.batch_count_errors
        for failure in part.failures:
            failures.setdefault((failure.epoch, failure.batch), failure)
        if part.worst is not None and (result.worst is None or part.worst[0].max_abs > result.worst[0].max_abs):
            result.worst = part.worst
        for name, stats in part.tensors.items():
            into = tensors.setdefault(name, {'batches': set(), 'failed': set(), 'elements': 0, 'mismatched': 0,
                                             'max_abs': 0.0, 'max_rel': 0.0})
            into['batches'] |= stats['batches']
            into['failed'] |= stats['failed']
            into['elements'] += stats['elements']
            into['mismatched'] += stats['mismatched']
            into['max_abs'] = max(into['max_abs'], stats['max_abs'])
            into['max_rel'] = max(into['max_rel'], stats['max_rel'])
    result.batches_compared, result.failed_batches = len(compared), len(failed)
    result.failures = [failures[where] for where in sorted(failures)][:local.MAX_REPORTED]
    result.per_tensor = {name: {**stats, 'batches': len(stats['batches']), 'failed': len(stats['failed'])}
                         for name, stats in tensors.items()}
    if coverage:
        for plan in plans:
            place = {tuple(key): i for i, key in enumerate(plan.keys())}
            for name in names:
                delivered = [key for part in parts for key in part.delivered.get((name, plan.epoch), [])]
                audit = local.audit_coverage(name, plan.epoch, plan.keys(), delivered)
                misplaced = [pair for part in parts for pair in part.misplaced.get((name, plan.epoch), [])]
                audit.misplaced = sorted(misplaced, key=lambda pair: place.get(tuple(pair[0]), len(place)))
                result.coverage.append(audit)
    return result
