"""`build_cache` on an executor: the files of each chunk of sims are written by a task on a worker (from the chunk's
simulated fields, or simulated there from the chunk's initial frames when no simulation is at hand), and the client
alone records them in each folder's `manifest.json`.

The checks before and after are `harness.cache.build`'s own: the harness writes only where it wrote before, only the
sims that do not verify, and the folder must verify afterwards. The files are bitwise those of the in-process build.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

from harness.cache import build as local
from harness.cache.manifest import cache_kind, config_digest
from harness.config import ScenarioConfig
from harness.data.simulate import CHUNKED, Simulation, initial_state, simulate
from harness.errors import CacheError
from harness.pipeline import AbstractPipeline
from harness.scale import tasks
from harness.scale.cluster import AbstractExecutor
from harness.scale.simulate import NOT_CHUNKED, chunk_rows

logger = logging.getLogger(__name__)


def build_cache(executor: AbstractExecutor, pipeline: AbstractPipeline, config: ScenarioConfig,
                simulation: Simulation | None = None, sims: Sequence[int] | None = None,
                progress: Callable[[int], None] | None = None) -> local.BuildResult:
    """`harness.cache.build.build_cache` on `executor` (in this process when it is not distributed)."""
    if not executor.distributed:
        return local.build_cache(pipeline, config, simulation, sims, progress)
    return build_caches(executor, [pipeline], config, simulation, sims, progress)[0]


def build_caches(executor: AbstractExecutor, pipelines: Sequence[AbstractPipeline], config: ScenarioConfig,
                 simulation: Simulation | None = None, sims: Sequence[int] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[local.BuildResult]:
    """Makes the caches of several pipelines complete in one pass over the chunks of sims: each chunk is simulated
    once (on its worker, when `simulation` is None) and written by every pipeline that misses some of its files.

    Args:
        pipelines: Each writes into its own `cache_dir`.
        simulation: The simulation of `config`, if at hand; its chunks are shipped to the workers.
        sims: Default `config.all_sims`.
        progress: Called with the number of files written, as chunks land.

    Raises:
        CacheError, ValueError: as `harness.cache.build.build_cache`, before anything is written.
    """
    sims = list(config.all_sims if sims is None else sims)
    kinds = [cache_kind(p) for p in pipelines]
    if len({p.cache_dir.resolve() for p in pipelines}) < len(pipelines):
        raise CacheError(f"pipelines {[p.name for p in pipelines]} share a cache folder; expected one folder each")
    for pipeline, kind in zip(pipelines, kinds):
        local.check_writable(pipeline.cache_dir, kind, config, sims)  # every folder before anything is changed
    befores, removed = [], []
    for pipeline, kind in zip(pipelines, kinds):
        pipeline.cache_dir.mkdir(parents=True, exist_ok=True)
        removed.append(local.remove_leftovers(pipeline.cache_dir, kind))
        befores.append(local.verify_cache(pipeline.cache_dir, kind, config, sims))
        if befores[-1].foreign_message():  # appeared since the check
            raise CacheError(befores[-1].foreign_message())
    rebuilt = [before.bad_sims for before in befores]
    todo = sorted({sim for bad in rebuilt for sim in bad})
    if todo:
        if simulation is not None and config_digest(simulation.config) != config_digest(config):
            raise ValueError(f"`simulation` was made from config {config_digest(simulation.config)}, the cache is for "
                             f"{config_digest(config)}; expected the simulation of `config`")
        _write(executor, pipelines, kinds, rebuilt, todo, config, simulation, progress)
    results = []
    for pipeline, kind, before, bad, gone in zip(pipelines, kinds, befores, rebuilt, removed):
        gone += local.remove_leftovers(pipeline.cache_dir, kind)  # of writes on workers that died
        after = local.verify_cache(pipeline.cache_dir, kind, config, sims)
        after.raise_if_failed()
        results.append(local.BuildResult(before, bad, after, gone))
    return results


def _write(executor, pipelines, kinds, rebuilt, todo, config, simulation, progress) -> None:
    manifests = [local.begin_writes(p.cache_dir, kind, bad) if bad else None
                 for p, kind, bad in zip(pipelines, kinds, rebuilt)]
    if simulation is None and config.physics not in CHUNKED:
        logger.info("%s: simulated here, in one run: %s", config.physics, NOT_CHUNKED)
        simulation = simulate(config)
    arrays = simulation.arrays() if simulation is not None else None
    initial = initial_state(config) if simulation is None else None
    arguments = []
    for chunk in executor.chunks(todo):
        writes = [(tasks.pipeline_ref(type(p)), p.cache_dir, [s for s in chunk if s in set(bad)])
                  for p, bad in zip(pipelines, rebuilt)]
        if arrays is not None:  # the metadata too: a simulation read from a cache carries the stored one
            fields = {name: a[:, chunk].copy() for name, a in arrays.items()}
            shipped = fields, None, [simulation.metadata(s) for s in chunk]
        else:
            shipped = None, chunk_rows(initial, chunk), None
        arguments.append((config, chunk, writes, *shipped))
    logger.info("writing %d sims of %s in %d chunks", len(todo), [p.name for p in pipelines], len(arguments))
    for _, records in executor.run(tasks.write_chunk, arguments, name='write-cache'):
        for pipeline, manifest, written in zip(pipelines, manifests, records):
            if not written:
                continue
            for record in written:
                manifest.files[record.name] = record
                manifest.pending.discard(record.name)
            manifest.save(pipeline.cache_dir)
            if progress:
                progress(len(written))
