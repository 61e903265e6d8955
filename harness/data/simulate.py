"""Simulation of a scenario's trajectories with PhiFlow: every sim in one batched, jit-compiled run on torch.

The fields are produced once and handed to both pipelines; each converts them its own way.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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

    def arrays(self) -> dict[str, np.ndarray]:
        """Field name -> float32 array with axes (time, sim, *spatial[, vector]): what `simulate_chunk` returns."""
        return {name: _numpy(f.values, ('time', 'sim')) for name, f in self.fields.items()}

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
    initial, steps = _SIMULATORS[config.physics]
    return Simulation(config, steps(config, initial(config), progress))


def initial_state(config: ScenarioConfig) -> dict[str, np.ndarray]:
    """The initial frame of every sim, drawn for all sims at once from `config.seed` (as `simulate` draws it).

    Returns:
        Field name -> float32 array with axes (sim, *spatial[, vector]).
    """
    initial, _ = _SIMULATORS[config.physics]
    return {name: _numpy(grid.values, ('sim',)) for name, grid in initial(config).items()}


def simulate_chunk(config: ScenarioConfig, initial: Mapping[str, np.ndarray],
                   progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Simulates the sims whose initial frames are `initial` (rows of `initial_state`): bitwise what `simulate`
    gives for them, in another process too (the per-sim arithmetic does not depend on the batch or the thread count).

    Returns:
        Field name -> float32 array with axes (time, sim, *spatial[, vector]).
    """
    from phi.torch import flow  # noqa: F401  (selects the torch backend)
    from phi.flow import CenteredGrid
    from phiml.math import batch, channel, spatial, tensor
    _, steps = _SIMULATORS[config.physics]
    dims = config.sim.spatial_dims
    grids = {}
    for name, values in initial.items():
        vector = [channel(vector=','.join(dims))] if values.ndim == len(dims) + 2 else []
        grids[name] = CenteredGrid(tensor(torch.from_numpy(np.array(values, np.float32)), batch('sim'),
                                          spatial(','.join(dims)), *vector),
                                   _extrapolation(config), bounds=_bounds(config))
    return {name: _numpy(field.values, ('time', 'sim')) for name, field in steps(config, grids, progress).items()}


def assemble(config: ScenarioConfig, chunks: Sequence[Mapping[str, np.ndarray]]) -> Simulation:
    """A `Simulation` of `config` from the `simulate_chunk` results of consecutive chunks of sims (sim `i` of it is the
    `i`-th sim of the chunks); bitwise the fields `simulate` gives when the chunks cover `config.all_sims`."""
    from phi.torch import flow  # noqa: F401
    from phi.flow import CenteredGrid
    from phiml.math import batch, channel, spatial, tensor
    dims = config.sim.spatial_dims
    fields = {}
    for name in chunks[0]:
        values = np.concatenate([chunk[name] for chunk in chunks], axis=1)
        vector = [channel(vector=','.join(dims))] if values.ndim == len(dims) + 3 else []
        fields[name] = CenteredGrid(tensor(torch.from_numpy(values), batch('time'), batch('sim'),
                                           spatial(','.join(dims)), *vector),
                                    _extrapolation(config), bounds=_bounds(config))
    return Simulation(config, fields)


def _numpy(values, leading: tuple[str, ...]) -> np.ndarray:
    order = [*leading, *values.shape.spatial.names, *values.shape.channel.names]
    return np.ascontiguousarray(values.numpy(order), dtype=np.float32)


def _bounds(config: ScenarioConfig):
    from phi.flow import Box
    return Box(**{d: config.sim.domain_size for d in config.sim.spatial_dims})


def _extrapolation(config: ScenarioConfig):
    from phi.flow import extrapolation
    return extrapolation.PERIODIC


def _burgers_initial(config: ScenarioConfig) -> dict[str, Any]:
    """Smooth noise velocity of every sim, drawn at once from the seed (the draw depends on the number of sims)."""
    from phi.torch import flow  # noqa: F401  (selects the torch backend)
    from phi import math
    from phi.flow import CenteredGrid, Noise
    from phiml.math import batch, channel
    sim = config.sim
    with _restored_global_rng():
        math.seed(config.seed)
        noise = Noise(batch(sim=len(config.all_sims)), channel(vector=','.join(sim.spatial_dims)),
                      scale=sim.noise_scale, smoothness=sim.noise_smoothness)
        velocity = CenteredGrid(noise, _extrapolation(config), bounds=_bounds(config),
                                **dict(zip(sim.spatial_dims, sim.resolution)))
    return {'velocity': velocity}


def _burgers_steps(config: ScenarioConfig, initial: Mapping[str, Any], progress) -> dict[str, Any]:
    from phi.field import stack
    from phiml.math import batch
    velocity = initial['velocity']
    step = _stepper(config)
    frames = [velocity]
    for _ in range(config.sim.n_steps):
        velocity = step(velocity)
        frames.append(velocity)
        if progress:
            progress(1)
    trajectory = stack(frames, batch('time'))
    logger.info("simulated %d sims x %d frames of %s", velocity.shape.get_size('sim'), config.sim.n_frames,
                dict(zip(config.sim.spatial_dims, config.sim.resolution)))
    return {'velocity': trajectory}


def _burgers_step(config: ScenarioConfig):
    from phi.flow import advect, diffuse, jit_compile
    sim = config.sim
    # torch's grid_sample has no 1-D mode, so semi-Lagrangian advection fails in 1-D; use finite differences there.
    advection = advect.semi_lagrangian if len(sim.spatial_dims) > 1 else advect.finite_difference

    @jit_compile
    def step(v):
        v = diffuse.explicit(v, sim.viscosity, sim.dt)
        return advection(v, v, sim.dt)
    return step


_SIMULATORS = {'burgers': (_burgers_initial, _burgers_steps)}
_STEP_FACTORIES = {'burgers': _burgers_step}
_STEPS: dict[str, Callable] = {}  # one traced step per physics and sim config and process (a trace cannot be pickled)


def _stepper(config: ScenarioConfig) -> Callable:
    key = json.dumps({'physics': config.physics, 'sim': dataclasses.asdict(config.sim)}, sort_keys=True)
    if key not in _STEPS:
        _STEPS[key] = _STEP_FACTORIES[config.physics](config)
    return _STEPS[key]


class _restored_global_rng:
    """`math.seed` reseeds `random` (always with 0), numpy and torch globally; undo that on exit."""

    def __enter__(self):
        self.state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()

    def __exit__(self, *exc):
        py, np_state, torch_state = self.state
        random.setstate(py)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
