"""A team's existing cache as the source of truth of a comparison: its trajectories, read by its own pipeline.

`python -m harness.compare SCENARIO --legacy-cache DIR` judges a migration without simulating: the scenario gives the
model, trainer and thresholds; the resolution, frames, fields and channel names come from the files.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from phiml import math
from phiml.math import batch

from harness.config import ScenarioConfig, validate
from harness.data.simulate import Simulation
from harness.errors import CacheError, ConfigError
from harness.pipeline import AbstractPipeline


@dataclass(frozen=True)
class CacheSource:
    """What an existing cache holds, as its reader sees it.

    Attributes:
        folder: The cache folder (only read).
        sims: Sim indices of its files, `0 ... n-1`.
        n_frames: Frames per sim.
        resolution: Cells along x[, y[, z]].
        fields: Field name -> `vector` item names (`[]` for a scalar field).
        dtypes: Field name -> stored dtype name.
    """
    folder: str
    sims: list[int]
    n_frames: int
    resolution: list[int]
    fields: dict[str, list[str]]
    dtypes: dict[str, str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_cache(pipeline: AbstractPipeline, sims: Sequence[int], config: ScenarioConfig
               ) -> tuple[Simulation, CacheSource, ScenarioConfig]:
    """Reads every sim of an existing cache with `pipeline.read_fields` into a `Simulation` and fits the scenario to it.

    Args:
        pipeline: The pipeline whose cache it is (the reference: its reader is the source of truth).
        sims: The sims on disk; must be `0 ... n-1`.
        config: The scenario; its resolution, frames and number of sims are replaced by the cache's.

    Returns:
        The trajectories (fields with dims sim, time, *spatial, [vector], stored dtype, torch), what the cache holds, the
        fitted config: `sim.resolution` and `sim.n_steps` from the files, `data.n_sims` + `data.n_val_sims` = the sims
        (the last `data.n_val_sims` validate, fewer when the cache is small).

    Raises:
        CacheError: the sims are not numbered `0 ... n-1`, a file does not read, or the files disagree on fields,
            frames, resolution, channels or dtype.
        ConfigError: the scenario does not fit the cache (e.g. `data.rollout_steps` >= frames per sim).
    """
    sims = list(sims)
    if sims != list(range(len(sims))) or not sims:
        gap = next((s for s in range(len(sims) + 1) if s not in sims), 0)
        raise CacheError(f"{pipeline.cache_dir}: holds the sims {_ranges(sims)}; expected the files "
                         f"{pipeline.file_name(0)} ... numbered without a gap ({pipeline.file_name(gap)} is missing)")
    per_sim, metadata, first = [], [], None
    for sim in sims:
        fields, meta = pipeline.read_fields(sim)
        signature = {name: (t.shape, t.dtype) for name, t in fields.items()}
        if first is None:
            first = signature
        elif signature != first:
            raise CacheError(f"{pipeline.cache_file(sim)}: fields {_describe(signature)} differ from "
                             f"{pipeline.file_name(0)}: {_describe(first)}; one cache must hold sims of one resolution "
                             f"and one set of fields")
        per_sim.append(fields)
        metadata.append(meta)
    from phi.flow import Box, CenteredGrid, extrapolation
    names = sorted(first)
    shape = per_sim[0][names[0]].shape
    resolution = [shape.get_size(d) for d in shape.spatial.names]
    n_frames = shape.get_size('time')
    bounds = Box(**{d: n for d, n in zip(shape.spatial.names, resolution)})
    from phiml.backend.torch import TORCH
    # on torch, as simulated trajectories are: each pipeline converts them its own way
    grids = {name: CenteredGrid(math.convert(math.stack([f[name] for f in per_sim], batch('sim')), TORCH),
                                extrapolation.ZERO, bounds=bounds) for name in names}
    fitted = fit_config(config, resolution, n_frames, len(sims), str(pipeline.cache_dir))
    source = CacheSource(str(pipeline.cache_dir), sims, n_frames, resolution,
                         {name: list(first[name][0].get_item_names('vector') or ()) if 'vector' in first[name][0] else []
                          for name in names},
                         {name: f"{first[name][1].kind.__name__}{first[name][1].bits}" for name in names})
    return Simulation(fitted, grids, stored_metadata=metadata), source, fitted


def fit_config(config: ScenarioConfig, resolution: list[int], n_frames: int, n_sims: int, where: str) -> ScenarioConfig:
    """`config` with the resolution, frames and sims of an existing cache.

    Raises:
        ConfigError: naming the cache and the key that does not fit it.
    """
    n_val = min(config.data.n_val_sims, n_sims - 1)
    fitted = dataclasses.replace(
        config, sim=dataclasses.replace(config.sim, resolution=list(resolution), n_steps=n_frames - 1),
        data=dataclasses.replace(config.data, n_sims=n_sims - n_val, n_val_sims=n_val))
    try:
        validate(fitted)
    except ConfigError as err:
        raise ConfigError(f"{where} ({n_sims} sims of {n_frames} frames at {'x'.join(map(str, resolution))}): {err}") from None
    return fitted


def _describe(signature: dict) -> str:
    return '; '.join(f"{name} {shape} {dtype}" for name, (shape, dtype) in sorted(signature.items()))


def _ranges(sims: list[int]) -> str:
    return '[' + ', '.join(map(str, sims[:6])) + (', ...' if len(sims) > 6 else '') + ']'
