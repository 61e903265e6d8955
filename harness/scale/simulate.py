"""`simulate` on an executor: the initial frames of all sims are drawn once here (the draw is for all sims at once,
from the seed), each chunk of sims is stepped by a task on a worker, and the chunks are put back together.

The fields are bitwise those of the in-process `harness.data.simulate.simulate`: the per-sim arithmetic does not depend
on how many sims share a batch or on torch's thread count (tests/test_scale.py checks it). Physics whose sims cannot be
split are simulated here, in one run, as in-process: smoke, whose pressure solve stops every sim of a batch at the
smallest tolerance in it (phiml 1.16.1's CG on torch), so a sim's fields depend on the other sims of its batch (see
`harness.data.simulate.CHUNKED`).
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from harness.config import ScenarioConfig
from harness.data import simulate as local
from harness.scale.cluster import AbstractExecutor

logger = logging.getLogger(__name__)
NOT_CHUNKED = ("its sims cannot be split into chunks bitwise: the pressure solve stops every sim of a batch at the "
               "batch's smallest tolerance (see harness.data.simulate.CHUNKED)")


def simulate(executor: AbstractExecutor, config: ScenarioConfig,
             progress: Callable[[int], None] | None = None) -> local.Simulation:
    """`harness.data.simulate.simulate` on `executor` (in this process when it is not distributed).

    Args:
        progress: Called with the number of time steps of the whole run that chunks finishing stand for (their sum
            is `config.sim.n_steps`, as in-process).
    """
    if not executor.distributed or config.physics not in local.CHUNKED:
        if executor.distributed:
            logger.info("%s sims are simulated in one run here: %s", config.physics, NOT_CHUNKED)
        return local.simulate(config, progress)
    initial = local.initial_state(config)
    chunks = executor.chunks(config.all_sims)
    arguments = [(config, chunk_rows(initial, chunk)) for chunk in chunks]
    parts: list = [None] * len(chunks)
    done = shown = 0
    for index, fields in executor.run(local.simulate_chunk, arguments, name='simulate'):
        parts[index] = fields
        done += len(chunks[index])
        if progress:
            steps = config.sim.n_steps * done // len(config.all_sims)
            progress(steps - shown)
            shown = steps
    logger.info("simulated %d sims in %d chunks", len(config.all_sims), len(chunks))
    return local.assemble(config, parts)


def chunk_rows(initial: dict[str, np.ndarray], sims) -> dict[str, np.ndarray]:
    """The rows of `initial_state` (axis 0: sim) of `sims`."""
    return {name: np.ascontiguousarray(values[list(sims)]) for name, values in initial.items()}
