"""Simulation of a scenario's trajectories with PhiFlow: every sim in one batched, jit-compiled run on torch.

The fields are produced once and handed to both pipelines; each converts them its own way.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import random
import warnings
from dataclasses import dataclass, field
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
            (as simulated; read from an existing cache, in the stored dtype).
        constants: What the physics sanity check needs besides the fields, e.g. smoke's `inflow_mass_per_step`.
        stored_metadata: For trajectories read from an existing cache, each sim's metadata as stored there.
    """
    config: ScenarioConfig
    fields: dict[str, Any]
    constants: dict[str, float] = field(default_factory=dict)
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
    from phi.torch import flow  # noqa: F401  (selects the torch backend)
    from phi import math
    from phiml.math import batch
    with warnings.catch_warnings():  # torch's notes on its sparse CSR support, from the pressure solve
        warnings.filterwarnings('ignore', message='Sparse (CSR tensor support|invariant checks)', category=UserWarning)
        fields, constants = _SIMULATORS[config.physics](config, progress, math, batch)
    return Simulation(config, fields, constants)


def _burgers(config: ScenarioConfig, progress, math, batch) -> tuple[dict[str, Any], dict[str, float]]:
    return _burgers_steps(config, _burgers_initial(config), progress), {}


def _burgers_initial(config: ScenarioConfig) -> dict[str, Any]:
    """Smooth noise velocity of every sim, drawn at once from the seed (the draw depends on the number of sims)."""
    from phi import math
    from phi.flow import CenteredGrid, Noise, extrapolation
    from phiml.math import batch, channel
    sim = config.sim
    dims = sim.spatial_dims
    with _restored_global_rng():
        math.seed(config.seed)
        noise = Noise(batch(sim=len(config.all_sims)), channel(vector=','.join(dims)), scale=sim.noise_scale,
                      smoothness=sim.noise_smoothness)
        velocity = CenteredGrid(noise, extrapolation.PERIODIC, bounds=_bounds(config),
                                **dict(zip(dims, sim.resolution)))
    return {'velocity': velocity}


def _burgers_steps(config: ScenarioConfig, initial: Mapping[str, Any], progress) -> dict[str, Any]:
    from phi.field import stack
    from phiml.math import batch
    velocity = initial['velocity']
    step = _stepper(config, _burgers_step, velocity.shape.get_size('sim'))
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


def _burgers_step(config: ScenarioConfig) -> Callable:
    from phi.flow import advect, diffuse, jit_compile
    sim = config.sim
    # torch's grid_sample has no 1-D mode, so semi-Lagrangian advection fails in 1-D: there the conservative Rusanov
    # flux (exact mean-velocity conservation, no energy gain) advects instead
    advection = _rusanov_advect if sim.burgers_advection == 'rusanov' else advect.semi_lagrangian

    @jit_compile
    def step(v):
        v = diffuse.explicit(v, sim.viscosity, sim.dt)
        return advection(v, v, sim.dt)
    return step


_STEPS: collections.OrderedDict[str, Callable] = collections.OrderedDict()
MAX_STEPS = 8


def _stepper(config: ScenarioConfig, factory: Callable[[ScenarioConfig], Callable], n_sims: int) -> Callable:
    """The jit-compiled step of `config` for batches of `n_sims`, made once per process (a trace cannot be pickled, so
    each worker builds its own; its chunks of equal size reuse one trace); the last `MAX_STEPS` are kept."""
    key = json.dumps({'physics': config.physics, 'sim': dataclasses.asdict(config.sim), 'n_sims': n_sims},
                     sort_keys=True)
    if key not in _STEPS:
        _STEPS[key] = factory(config)
        while len(_STEPS) > MAX_STEPS:
            _STEPS.popitem(last=False)
    _STEPS.move_to_end(key)
    return _STEPS[key]


def _rusanov_advect(u, velocity, dt):
    """One explicit step of 1-D Burgers advection in conservative form, `u_t + (u^2 / 2)_x = 0`, with the Rusanov
    (local Lax-Friedrichs) flux on the periodic grid: the mean is conserved to rounding and energy never grows."""
    from phiml import math
    values = u.values.vector['x']
    right = math.shift(values, (1,), padding=u.extrapolation, stack_dim=None)[0]  # u_{i+1}
    flux_right = .25 * (values ** 2 + right ** 2) - .5 * math.maximum(abs(values), abs(right)) * (right - values)
    flux_left = math.shift(flux_right, (-1,), padding=u.extrapolation, stack_dim=None)[0]  # F_{i-1/2}
    updated = values - dt / u.dx.vector['x'] * (flux_right - flux_left)
    return u.with_values(math.expand(updated, u.values.shape.only('vector')))


def _smoke(config: ScenarioConfig, progress, math, batch) -> tuple[dict[str, Any], dict[str, float]]:
    """A buoyant smoke plume in a closed box: density rises from a spherical inflow, velocity incompressible.

    Density moves by a conservative upwind flux through the staggered faces (no flux through the walls), so its mass
    grows by exactly the inflow; velocity by semi-Lagrangian advection, buoyancy, then a pressure solve. Both are stored
    at the cell centres (a staggered grid does not survive `phiml.math.load` in phiml 1.16.1). Under `jit_compile` a
    failed solve raises nothing: the divergence is checked after every `DIVERGENCE_CHUNK` steps.
    """
    from phi.flow import (Box, CenteredGrid, Noise, Solve, Sphere, StaggeredGrid, ZERO_GRADIENT, advect, fluid,
                          jit_compile, resample)
    from phi import field as phi_field
    from phiml.math import channel
    sim = config.sim
    n, size = len(config.all_sims), sim.domain_size
    bounds = Box(x=size, y=size)
    resolution = dict(zip(sim.spatial_dims, sim.resolution))
    solve = Solve('CG', 1e-5, 1e-5, rank_deficiency=0)
    with _restored_global_rng():
        math.seed(config.seed)
        density_noise = Noise(batch(sim=n), scale=sim.noise_scale, smoothness=sim.noise_smoothness)
        density = CenteredGrid(density_noise, ZERO_GRADIENT, bounds=bounds, **resolution)
        values = .1 * abs(density.values)  # some smoke already in the box, different per sim
        order = math.concat_shapes(values.shape.only('sim'), values.shape.spatial)
        density = density.with_values(math.wrap(values.native(order.names), order))
        velocity_noise = Noise(batch(sim=n), channel(vector='x,y'), scale=sim.noise_scale, smoothness=sim.noise_smoothness)
        velocity = StaggeredGrid(velocity_noise, 0, bounds=bounds, **resolution) * sim.noise_amplitude
    velocity, pressure = fluid.make_incompressible(velocity, (), solve)
    center = math.tensor([c * size for c in sim.inflow_center], channel(vector='x,y'))
    inflow = resample(Sphere(center=center, radius=sim.inflow_radius * size), to=density, soft=True)
    # the initial density exactly as `step` returns densities (native dims sim, x, y; Noise samples x, y, sim), or
    # jit_compile traces `step` twice (each trace with the pressure solve costs seconds)
    density = density + 0 * inflow
    cell_volume = float(math.prod(density.dx, 'vector'))
    buoyancy = math.tensor([0., sim.buoyancy], channel(vector='x,y'))

    @jit_compile
    def step(v, rho, p):
        rho = _upwind_advect(rho, v, sim.dt, math) + sim.inflow_rate * sim.dt * inflow
        v = advect.semi_lagrangian(v, v, sim.dt) + resample(rho * buoyancy, to=v) * sim.dt
        v, p = fluid.make_incompressible(v, (), Solve('CG', 1e-5, 1e-5, x0=p, rank_deficiency=0))
        return v, rho, p

    densities, velocities = [density], [velocity.at_centers()]
    for i in range(sim.n_steps):
        velocity, density, pressure = step(velocity, density, pressure)
        densities.append(density)
        velocities.append(velocity.at_centers())
        if (i + 1) % DIVERGENCE_CHUNK == 0 or i + 1 == sim.n_steps:
            worst = float(math.max(abs(phi_field.divergence(velocity).values), dim=math.shape(velocity.values).non_channel))
            if not worst <= config.sanity.max_divergence:
                logger.warning("smoke: max |div v| = %.3g after step %d exceeds `sanity.max_divergence` (=%g): the "
                               "pressure solve failed (it raises nothing under jit_compile)", worst, i + 1,
                               config.sanity.max_divergence)
        if progress:
            progress(1)
    from phi.field import stack
    fields = {'density': stack(densities, batch('time')), 'velocity': stack(velocities, batch('time'))}
    inflow_mass = float(math.sum(sim.inflow_rate * sim.dt * inflow.values, dim=inflow.values.shape.spatial)) * cell_volume
    logger.info("simulated %d smoke sims x %d frames of %s", n, sim.n_frames, resolution)
    return fields, {'inflow_mass_per_step': inflow_mass, 'cell_volume': cell_volume}


DIVERGENCE_CHUNK = 10


def _upwind_advect(rho, velocity, dt, math):
    """Density moved by first-order upwind fluxes through the faces of `velocity` (a staggered grid with closed
    walls: the wall faces carry no flux), so the total mass is conserved to rounding."""
    values, change = rho.values, 0
    for dim in rho.shape.spatial.names:
        faces = velocity.values[{'~vector': dim}]  # the interior faces along `dim`
        faces = math.pad(faces, {dim: (1, 1)}, 0)  # and the walls, through which nothing flows
        padded = math.pad(values, {dim: (1, 1)}, 1)  # any value: it meets only the zero wall faces
        lower, upper = padded[{dim: slice(0, -1)}], padded[{dim: slice(1, None)}]
        flux = math.where(faces > 0, faces * lower, faces * upper)
        change = change + (flux[{dim: slice(1, None)}] - flux[{dim: slice(0, -1)}]) / rho.dx.vector[dim]
    return rho.with_values(values - dt * change)


_SIMULATORS = {'burgers': _burgers, 'smoke': _smoke}
# physics whose sims can be simulated in chunks, bitwise as in one run: initial state for all sims, steps for some.
# Not smoke: phiml 1.16.1's CG on torch (`TorchBackend.conjugate_gradient`) compares the residuals, shape (sim, 1),
# with tolerances of shape (sim,), so every sim of a batch stops at the smallest tolerance in it (that of the sim with
# the smallest right-hand side): a sim's pressure, and so its fields, depend on the other sims of its batch
# (tests/test_simulate.py shows it on a two-sim system). With a per-sim tolerance patched in, chunks of smoke sims are
# bitwise one run; without it, sims differ from one run (by 7e-7 after 6 steps at 16x16).
CHUNKED = {'burgers': (_burgers_initial, _burgers_steps)}


def initial_state(config: ScenarioConfig) -> dict[str, np.ndarray]:
    """The initial frame of every sim, drawn for all sims at once from `config.seed` (as `simulate` draws it).

    Returns:
        Field name -> float32 array with axes (sim, *spatial[, vector]).

    Raises:
        ValueError: the physics cannot be simulated in chunks (not in `CHUNKED`).
    """
    from phi.torch import flow  # noqa: F401  (selects the torch backend)
    initial, _ = _chunked(config)
    return {name: _numpy(grid.values, ('sim',)) for name, grid in initial(config).items()}


def simulate_chunk(config: ScenarioConfig, initial: Mapping[str, np.ndarray],
                   progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Simulates the sims whose initial frames are `initial` (rows of `initial_state`): bitwise what `simulate`
    gives for them, in another process too (the per-sim arithmetic depends neither on how many sims share the batch
    nor on torch's thread count).

    Returns:
        Field name -> float32 array with axes (time, sim, *spatial[, vector]).
    """
    from phi.torch import flow  # noqa: F401  (selects the torch backend)
    from phi.flow import CenteredGrid, extrapolation
    from phiml.math import batch, channel, spatial, tensor
    _, steps = _chunked(config)
    dims = ','.join(config.sim.spatial_dims)
    grids = {}
    for name, values in initial.items():
        vector = [channel(vector=dims)] if values.ndim == len(config.sim.spatial_dims) + 2 else []
        grids[name] = CenteredGrid(tensor(torch.from_numpy(np.array(values, np.float32)), batch('sim'), spatial(dims),
                                          *vector), extrapolation.PERIODIC, bounds=_bounds(config))
    return {name: _numpy(f.values, ('time', 'sim')) for name, f in steps(config, grids, progress).items()}


def assemble(config: ScenarioConfig, chunks: Sequence[Mapping[str, np.ndarray]]) -> Simulation:
    """A `Simulation` of `config` from consecutive chunks of sims (`simulate_chunk` results or `Simulation.arrays`;
    sim `i` of it is the `i`-th sim of the chunks): for `CHUNKED` physics covering `config.all_sims`, bitwise the
    fields `simulate` gives (periodic `CenteredGrid`s; for others the values only, enough to write caches)."""
    from phi.torch import flow  # noqa: F401
    from phi.flow import CenteredGrid, extrapolation
    from phiml.math import batch, channel, spatial, tensor
    dims = ','.join(config.sim.spatial_dims)
    fields = {}
    for name in chunks[0]:
        values = np.concatenate([chunk[name] for chunk in chunks], axis=1)
        vector = [channel(vector=dims)] if values.ndim == len(config.sim.spatial_dims) + 3 else []
        values = tensor(torch.from_numpy(values), batch('time'), batch('sim'), spatial(dims), *vector)
        fields[name] = CenteredGrid(values, extrapolation.PERIODIC, bounds=_bounds(config))
    return Simulation(config, fields)


def _chunked(config: ScenarioConfig):
    if config.physics not in CHUNKED:
        raise ValueError(f"`physics` (={config.physics!r}) cannot be simulated in chunks of sims; expected one of "
                         f"{sorted(CHUNKED)}")
    return CHUNKED[config.physics]


def _numpy(values, leading: tuple[str, ...]) -> np.ndarray:
    order = [*leading, *values.shape.spatial.names, *values.shape.channel.names]
    return np.ascontiguousarray(values.numpy(order), dtype=np.float32)


def _bounds(config: ScenarioConfig):
    from phi.flow import Box
    return Box(**{d: config.sim.domain_size for d in config.sim.spatial_dims})


class _restored_global_rng:
    """`math.seed` reseeds `random` (always with 0), numpy and torch globally; undo that on exit."""

    def __enter__(self):
        self.state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()

    def __exit__(self, *exc):
        py, np_state, torch_state = self.state
        random.setstate(py)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
