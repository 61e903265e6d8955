"""The chunk tasks: what a worker does for one chunk of sims. Each is a module-level function (pickled by reference),
takes pipeline classes as `'module:Class'` strings (loaded in the worker; see `pipeline_ref`), writes its files
atomically, and returns only small results: records of the files written, signatures, comparison statistics.

Every task is idempotent: a rerun of a chunk (after a worker died) rewrites its files with the same bytes or skips
the files that already verify. No task writes a `manifest.json`: the client records what the tasks return.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from harness.cache.manifest import FileRecord, cache_kind, config_digest, record_file, sha256_file
from harness.cache.migrate import _signature, _target_intact, convert
from harness.config import HealthConfig, ScenarioConfig
from harness.data.simulate import assemble, simulate_chunk
from harness.equivalence.batches import MAX_REPORTED, BatchFailure, paired_batches
from harness.equivalence.diff import TensorDiff, ToleranceMap, compare_batches, flatten_batch
from harness.equivalence.identify import FrameIndex
from harness.errors import ConfigError
from harness.pipeline import AbstractPipeline, BatchPlan, WindowKey, class_spec, load_pipeline

logger = logging.getLogger(__name__)
PipelineRef = Union[str, type]  # 'module:Class', or a class that its name does not give back (see `pipeline_ref`)


def pipeline_ref(cls: type[AbstractPipeline]) -> PipelineRef:
    """How a task names a pipeline class: `'module:Class'` (loaded on the worker with `load_pipeline`) when that name
    gives back this very class; else the class itself, e.g. one made at run time (`LegacyPipeline.configured` with
    `data.channels`) or defined in a script's `__main__` (Dask pickles it by value, its bases by name)."""
    spec = class_spec(cls)
    try:
        by_name = cls.__module__ != '__main__' and load_pipeline(spec) is cls
    except ConfigError:
        by_name = False
    return spec if by_name else cls


def _pipeline(ref: PipelineRef, folder: Path, rollout_steps: int = 1) -> AbstractPipeline:
    cls = load_pipeline(ref) if isinstance(ref, str) else ref
    return cls(Path(folder), rollout_steps)


def describe_sources(source_ref: PipelineRef, folder: Path, target_dir: Path,
                     items: Sequence[tuple[int, FileRecord | None]]) -> list[tuple[int, str, dict[str, Any], bool]]:
    """For each `(sim, recorded target or None)` of a migration: the source's field signature, its
    `{'name', 'size', 'sha256'}`, and whether the recorded target still matches that source and its own bytes."""
    source = _pipeline(source_ref, folder)
    rows = []
    for sim, recorded in items:
        path = source.cache_file(sim)
        signature = _signature(source.read_fields(sim)[0])
        described = {'name': path.name, 'size': path.stat().st_size, 'sha256': sha256_file(path)}
        intact = recorded is not None and recorded.source == described \
            and _target_intact(Path(target_dir) / recorded.name, recorded)
        rows.append((sim, signature, described, intact))
    return rows


def migrate_chunk(source_ref: PipelineRef, target_ref: PipelineRef, source_dir: Path, target_dir: Path,
                  items: Sequence[tuple[int, dict[str, Any]]], health: HealthConfig) -> list[tuple[int, FileRecord]]:
    """Converts, verifies, scans and describes the sims of `items` (`(sim, source description)`).

    Returns:
        `(sim, record)` per sim, the data health findings in the record.
    """
    source, target = _pipeline(source_ref, source_dir), _pipeline(target_ref, target_dir)
    kind = cache_kind(type(target))
    done = []
    for sim, described in items:
        findings = convert(source, target, sim, health)
        record = record_file(kind, Path(target_dir), sim, source=described)
        done.append((sim, dataclasses.replace(record, health=findings)))
    return done


def write_chunk(config: ScenarioConfig, sims: Sequence[int], writes: Sequence[tuple[PipelineRef, Path, Sequence[int]]],
                fields: Mapping[str, np.ndarray] | None = None, initial: Mapping[str, np.ndarray] | None = None,
                metadata: Sequence[Mapping[str, Any]] | None = None) -> list[list[FileRecord]]:
    """Writes the cache files of one chunk of sims with each pipeline of `writes` and describes each for the manifest.

    Args:
        config: The scenario.
        sims: The chunk's sims, in the order of `fields` / `initial`.
        writes: `(pipeline_ref, cache folder, sims to write)` per pipeline; the sims lie in the chunk.
        fields: The chunk's simulated fields (`simulate_chunk`'s arrays, axes (time, sim, ...)), or None to
            simulate them here from `initial`.
        initial: The chunk's rows of `initial_state`.
        metadata: Per sim of the chunk, what to store beside its fields; default: from `config`.

    Returns:
        The records of the files written, per entry of `writes`.
    """
    sims = list(sims)
    if fields is None:
        fields = simulate_chunk(config, initial)
    simulation = assemble(config, [fields])  # sim i of it is sims[i]
    digest = config_digest(config)
    records = []
    for spec, folder, chunk in writes:
        pipeline = _pipeline(spec, folder, config.data.rollout_steps)
        kind = cache_kind(type(pipeline))
        written = []
        for sim in chunk:
            local = sims.index(sim)
            meta = simulation.metadata(sim) if metadata is None else dict(metadata[local])
            pipeline.write_cache(sim, simulation.sim_fields(local), meta)
            written.append(record_file(kind, Path(folder), sim, digest=digest))
        records.append(written)
    return records



@dataclass
class ChunkComparison:
    """What comparing the batches of one chunk of sims found, keyed by the plan's own `(epoch, batch)`: every batch
    of a plan is compared in parts, the part of its windows that belong to the chunk's sims.

    Attributes:
        sims: The chunk.
        compared, failed: `(epoch, batch)` of the parts compared / that differ.
        tensors: Per tensor name: `batches`, `failed` (sets of `(epoch, batch)`), `elements`, `mismatched`,
            `max_abs`, `max_rel`.
        failures: The first parts that differ (at most `MAX_REPORTED`), with the plan's batch index.
        delivered: `(pipeline name, epoch)` -> the window identified for every element delivered.
        misplaced: `(pipeline name, epoch)` -> `(planned, served)` for every element whose served window is another
            than the one planned at its place in the batch.
        worst: `(TensorDiff, legacy tensor, native tensor)` of the chunk's largest value error.
    """
    sims: list[int]
    compared: set = field(default_factory=set)
    failed: set = field(default_factory=set)
    elements: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    identical: bool = True
    tensors: dict[str, dict] = field(default_factory=dict)
    failures: list[BatchFailure] = field(default_factory=list)
    batch_count_errors: list[str] = field(default_factory=list)
    delivered: dict[tuple[str, int], list[WindowKey | None]] = field(default_factory=dict)
    misplaced: dict[tuple[str, int], list[tuple[WindowKey, WindowKey]]] = field(default_factory=dict)
    worst: tuple | None = None

    def add(self, epoch: int, index: int, keys: list[WindowKey], diffs: list[TensorDiff], legacy: dict,
            native: dict) -> None:
        where = (epoch, index)
        self.compared.add(where)
        for d in diffs:
            self.elements += d.n_elements
            self.max_abs, self.max_rel = max(self.max_abs, d.max_abs), max(self.max_rel, d.max_rel)
            self.identical &= d.identical
            stats = self.tensors.setdefault(d.name, {'batches': set(), 'failed': set(), 'elements': 0, 'mismatched': 0,
                                                     'max_abs': 0.0, 'max_rel': 0.0})
            stats['batches'].add(where)
            if not d:
                stats['failed'].add(where)
            stats['elements'] += d.n_elements
            stats['mismatched'] += d.n_mismatched if not d.structure_errors else 0
            stats['max_abs'], stats['max_rel'] = max(stats['max_abs'], d.max_abs), max(stats['max_rel'], d.max_rel)
            if d or d.structure_errors or not d.n_elements:
                continue
            if self.worst is None or d.max_abs > self.worst[0].max_abs:
                self.worst = (d, dict(flatten_batch(legacy))[d.name], dict(flatten_batch(native))[d.name])
        if any(not d for d in diffs):
            self.failed.add(where)
            if len(self.failures) < MAX_REPORTED:
                self.failures.append(BatchFailure(epoch, index, keys, diffs))


def compare_chunk(legacy_spec: PipelineRef, native_spec: PipelineRef, legacy_dir: Path, native_dir: Path,
                  rollout_steps: int, sims: Sequence[int], plans: Sequence[BatchPlan], tolerance: ToleranceMap,
                  frames: FrameIndex | None) -> ChunkComparison:
    """Opens both pipelines on the chunk's sims only and compares, batch by batch of every plan, the windows of the
    batch that belong to these sims; identifies every delivered element by content when `frames` is given, and
    notes each one served in place of another planned window of its part of the batch."""
    legacy = _pipeline(legacy_spec, legacy_dir, rollout_steps)
    native = _pipeline(native_spec, native_dir, rollout_steps)
    legacy.open(list(sims))
    native.open(list(sims))
    inside = set(sims)
    result = ChunkComparison(list(sims))
    for plan in plans:
        parts = [(index, tuple(k for k in batch if k.sim in inside)) for index, batch in enumerate(plan.batches)]
        parts = [(index, keys) for index, keys in parts if keys]
        sub = BatchPlan(plan.seed, plan.epoch, tuple(keys for _, keys in parts))
        counts = {legacy.name: 0, native.name: 0}
        for delivered, batches in paired_batches(legacy, native, sub):
            beyond = (len(plan.batches) + delivered - len(parts), ())  # a batch more than the plan has
            index, keys = parts[delivered] if delivered < len(parts) else beyond
            for name, batch in batches.items():
                counts[name] += 1
                if frames is not None:
                    served = frames.identify(batch, keys)
                    result.delivered.setdefault((name, plan.epoch), []).extend(served)
                    result.misplaced.setdefault((name, plan.epoch), []).extend(
                        (WindowKey(*p), WindowKey(*d)) for p, d in zip(keys, served)
                        if d is not None and tuple(d) != tuple(p))
            if len(batches) == 2:
                diffs = compare_batches(batches[legacy.name], batches[native.name], tolerance, list(keys))
                result.add(plan.epoch, index, list(keys), diffs, batches[legacy.name], batches[native.name])
        for name, count in counts.items():
            if count != len(sub.batches):
                result.batch_count_errors.append(f"{name} delivered {count} batches in epoch {plan.epoch} for sims "
                                                 f"{sims[0]}..{sims[-1]}, the plan has {len(sub.batches)} for them")
    return result
