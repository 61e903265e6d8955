"""Simulation of a scenario's trajectories with PhiFlow: every sim in one batched, jit-compiled run on torch.

The fields are produced once and handed to both pipelines; each converts them its own way.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from harness.config import ScenarioConfig

logger = logging.getLogger(__name__)


@dataclass
class Simulation:
    """All trajectories of a run.

    Attributes:
        config: The scenario that produced them.
        fields: Field name -> PhiFlow `CenteredGrid` with dims (sim, time, *spatial, [vector]), float32, torch backend
            (as simulated; read from an existing cache, the stored dtype on numpy).
        stored_metadata: For trajectories read from an existing cache, each sim's metadata as stored there.
    """
    config: ScenarioConfig
    fields: dict[str, Any]
    stored_metadata: list[dict[str, Any]] | None = None

    @property
    def n_sims(self) -> int:
        return next(iter(self.fields.values())).shape.get_size('sim')

    def sim_fields(self, sim: int) -> dict[str, Any]:
        """The fields of simulation `sim` with dims (time, *spatial, [vector])."""
        if not 0 <= sim < self.n_sims:
            raise IndexError(f"`sim` (={sim}) must be in [0, {self.n_sims})")
        return {name: f.sim[sim] for name, f in self.fields.items()}

    def metadata(self, sim: int) -> dict[str, Any]:
        """What is stored beside the tensors in both caches."""
        if self.stored_metadata is not None:
            return dict(self.stored_metadata[sim])
        c = self.config
        return {
            'scenario': c.name, 'physics': c.physics, 'sim_index': sim, 'seed': c.seed,
            'resolution': list(c.sim.resolution), 'domain_size': c.sim.domain_size, 'dt': c.sim.dt,
            'viscosity': c.sim.viscosity, 'n_frames': c.sim.n_frames, 'fields': sorted(self.fields),
        }


def simulate(config: ScenarioConfig, progress: Callable[[int], None] | None = None) -> Simulation:
    """Simulates `config.all_sims` trajectories in one batched run.

    The initial condition is drawn from `config.seed` on the torch backend; the global states of `random`, `numpy`
    and `torch` are restored afterwards, so the caller's randomness is untouched.

    Args:
        config: Scenario.
        progress: Called with 1 after every time step (e.g. `tqdm.update`).
    """
    from phi.torch import flow  # noqa: F401  (selects the torch backend)
    from phi import math
    from phiml.math import batch
    fields = _SIMULATORS[config.physics](config, progress, math, batch)
    return Simulation(config, fields)


def _burgers(config: ScenarioConfig, progress, math, batch) -> dict[str, Any]:
    from phi.flow import CenteredGrid, Noise, Box, extrapolation, diffuse, advect, jit_compile
    from phiml.math import channel
    sim = config.sim
    dims = sim.spatial_dims
    n = len(config.all_sims)
    bounds = Box(**{d: sim.domain_size for d in dims})
    resolution = dict(zip(dims, sim.resolution))
    with _restored_global_rng():
        math.seed(config.seed)
        noise = Noise(batch(sim=n), channel(vector=','.join(dims)), scale=sim.noise_scale, smoothness=sim.noise_smoothness)
        velocity = CenteredGrid(noise, extrapolation.PERIODIC, bounds=bounds, **resolution)

    # torch's grid_sample has no 1-D mode, so semi-Lagrangian advection fails in 1-D; use finite differences there.
    advection = advect.semi_lagrangian if len(dims) > 1 else advect.finite_difference

    @jit_compile
    def step(v):
        v = diffuse.explicit(v, sim.viscosity, sim.dt)
        return advection(v, v, sim.dt)

    frames = [velocity]
    for _ in range(sim.n_steps):
        velocity = step(velocity)
        frames.append(velocity)
        if progress:
            progress(1)
    from phi.field import stack
    trajectory = stack(frames, batch('time'))
    logger.info("simulated %d sims x %d frames of %s", n, sim.n_frames, resolution)
    return {'velocity': trajectory}


_SIMULATORS = {'burgers': _burgers}


class _restored_global_rng:
    """`math.seed` reseeds `random` (always with 0), numpy and torch globally; undo that on exit."""

    def __enter__(self):
        self.state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()

    def __exit__(self, *exc):
        py, np_state, torch_state = self.state
        random.setstate(py)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
