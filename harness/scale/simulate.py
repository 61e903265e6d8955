"""`simulate` for a run on an executor. The trajectories are simulated on the client, in one batched jit-compiled run as
in-process (the initial noise is drawn for all sims at once from the seed, and the physics steps are not split by
sim for every scenario yet); the cache builds, the migration and the comparison that follow are what run on the
workers, each chunk of sims shipped its arrays (`Simulation.arrays`)."""
from __future__ import annotations

from typing import Callable

from harness.config import ScenarioConfig
from harness.data import simulate as local
from harness.scale.cluster import AbstractExecutor


def simulate(executor: AbstractExecutor, config: ScenarioConfig,
             progress: Callable[[int], None] | None = None) -> local.Simulation:
    """`harness.data.simulate.simulate`, on the client whatever `executor` is (see the module doc)."""
    return local.simulate(config, progress)
