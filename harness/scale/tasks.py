"""The chunk tasks: what a worker does for one chunk of sims. Each is a module-level function (pickled by reference),
takes pipeline classes as `'module:Class'` strings (loaded in the worker), writes its files atomically, and returns
only small results: records of the files written, signatures, comparison statistics.

Every task is idempotent: a rerun of a chunk (after a worker died) rewrites its files with the same bytes or skips
the files that already verify. No task writes a `manifest.json`: the client records what the tasks return.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from harness.cache.manifest import FileRecord, cache_kind, config_digest, record_file, sha256_file
from harness.cache.migrate import _signature, _target_intact, convert
from harness.config import ScenarioConfig
from harness.data.simulate import assemble, simulate_chunk
from harness.pipeline import AbstractPipeline, load_pipeline

logger = logging.getLogger(__name__)


def _pipeline(spec: str, folder: Path, rollout_steps: int = 1) -> AbstractPipeline:
    return load_pipeline(spec)(Path(folder), rollout_steps)


def describe_sources(source_spec: str, folder: Path, sims: Sequence[int]) -> list[tuple[int, str, dict[str, Any]]]:
    """For each source sim of a migration: its field signature and `{'name', 'size', 'sha256'}`."""
    source = _pipeline(source_spec, folder)
    rows = []
    for sim in sims:
        path = source.cache_file(sim)
        signature = _signature(source.read_fields(sim)[0])
        rows.append((sim, signature, {'name': path.name, 'size': path.stat().st_size, 'sha256': sha256_file(path)}))
    return rows


def migrate_chunk(source_spec: str, target_spec: str, source_dir: Path, target_dir: Path,
                  items: Sequence[tuple[int, dict[str, Any], FileRecord | None]]) -> list[tuple[int, FileRecord | None]]:
    """Converts, verifies and describes the sims of `items` (`(sim, source, recorded target or None)`).

    Returns:
        `(sim, record)` per sim; `record` is None where the recorded target still matches its source and bytes
        (skipped).
    """
    source, target = _pipeline(source_spec, source_dir), _pipeline(target_spec, target_dir)
    kind = cache_kind(type(target))
    done = []
    for sim, source_record, recorded in items:
        if recorded is not None and recorded.source == source_record and _target_intact(Path(target_dir) / recorded.name,
                                                                                        recorded):
            done.append((sim, None))
            continue
        convert(source, target, sim)
        done.append((sim, record_file(kind, Path(target_dir), sim, source=source_record)))
    return done


def write_chunk(config: ScenarioConfig, writes: Sequence[tuple[str, Path, Sequence[int]]],
                fields: Mapping[str, np.ndarray] | None = None,
                initial: Mapping[str, np.ndarray] | None = None) -> list[list[FileRecord]]:
    """Writes the cache files of one chunk of sims with each pipeline of `writes` and describes each for the manifest.

    Args:
        config: The scenario.
        writes: `(pipeline spec, cache folder, sims to write)` per pipeline; the sims lie in the chunk.
        fields: The chunk's simulated fields (`simulate_chunk`'s arrays, axes (time, sim, ...)), or None to
            simulate them here from `initial`.
        initial: The chunk's rows of `initial_state`.

    Returns:
        The records of the files written, per entry of `writes`.
    """
    sims = sorted({sim for _, _, chunk in writes for sim in chunk})
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
            pipeline.write_cache(sim, simulation.sim_fields(sims.index(sim)), simulation.metadata(sim))
            written.append(record_file(kind, Path(folder), sim, digest=digest))
        records.append(written)
    return records

