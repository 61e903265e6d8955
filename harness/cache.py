"""Building a pipeline's cache from one simulation."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

from .pipeline import AbstractPipeline
from .simulate import Simulation

logger = logging.getLogger(__name__)


def write_cache(pipeline: AbstractPipeline, simulation: Simulation, sims: Sequence[int],
                progress: Callable[[int], None] | None = None) -> list[Path]:
    """Writes the cache files of `sims` with `pipeline`'s own conversion; returns their paths."""
    paths = []
    for sim in sims:
        paths.append(pipeline.write_cache(sim, simulation.sim_fields(sim), simulation.metadata(sim)))
        if progress:
            progress(1)
    logger.info("%s: wrote %d cache files to %s", pipeline.name, len(paths), pipeline.cache_dir)
    return paths
