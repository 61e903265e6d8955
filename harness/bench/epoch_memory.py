"""Peak memory of one epoch, measured cheaply inside the compare run for its memory check.

`python -m harness.bench` measures it precisely, each pipeline in a fresh subprocess (`harness.bench.memory`); that
costs seconds of imports per pipeline. Here every code path has already run in this process (the comparison and the
timings ran before), so the measurement needs no warm-up: freed memory is handed back to the OS, the kernel's peak
counter is reset (`/proc/self/clear_refs`), and a fresh pipeline object opens the training sims and builds one epoch of
model-ready batches (`Pipeline.batches`, each batch let go before the next); the growth of the peak resident set over
the resident set before is the figure. Repetitions alternate the order of the pipelines; the median is kept.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Sequence

from harness.bench.memory import _reset_peak, _status_bytes, release_free_memory
from harness.pipeline import AbstractPipeline, BatchPlan, drain

REPEATS = 3
NOISE_BYTES = 2 ** 20  # below this, a difference of peaks is allocator and page granularity, not data held


@dataclass(frozen=True)
class EpochMemory:
    """Bytes by which `open` + one epoch raised each pipeline's peak resident set, per repetition.

    Attributes:
        legacy, native: One figure per repetition.
        cached_bytes: Pipeline name -> bytes of its cache files of the opened sims.
        measured: False where the peak cannot be reset (no `/proc/self/clear_refs`): then nothing was measured.
    """
    legacy: list[int]
    native: list[int]
    cached_bytes: dict[str, int]
    measured: bool = True

    @property
    def legacy_bytes(self) -> int:
        return int(statistics.median(self.legacy)) if self.legacy else 0

    @property
    def native_bytes(self) -> int:
        return int(statistics.median(self.native)) if self.native else 0

    def to_dict(self) -> dict:
        return {**asdict(self), 'legacy_bytes': self.legacy_bytes, 'native_bytes': self.native_bytes}


def epoch_peaks(legacy: AbstractPipeline, native: AbstractPipeline, sims: Sequence[int], plan: BatchPlan,
                repeats: int = REPEATS) -> EpochMemory:
    """Peak memory of a fresh `open(sims)` + one epoch of `plan` of each pipeline (only their classes and cache
    folders are used; the objects passed stay as they are)."""
    cached = {p.name: sum(p.cache_file(sim).stat().st_size for sim in sims) for p in (legacy, native)}
    figures: dict[str, list[int]] = {legacy.name: [], native.name: []}
    for rep in range(repeats):
        for pipeline in ((legacy, native) if rep % 2 == 0 else (native, legacy)):
            peak = _epoch_peak(pipeline, sims, plan)
            if peak is None:
                return EpochMemory([], [], cached, measured=False)
            figures[pipeline.name].append(peak)
    return EpochMemory(figures[legacy.name], figures[native.name], cached)


def _epoch_peak(pipeline: AbstractPipeline, sims: Sequence[int], plan: BatchPlan) -> int | None:
    fresh = type(pipeline)(pipeline.cache_dir, pipeline.rollout_steps)
    type(pipeline).forget_read_caches()
    release_free_memory()
    try:
        before = _status_bytes('VmRSS')
    except OSError:  # no /proc
        return None
    if not _reset_peak():
        return None
    fresh.open(sims)
    drain(fresh.batches(plan))
    return max(0, _status_bytes('VmHWM') - before)
