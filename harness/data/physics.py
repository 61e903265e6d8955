"""Physics sanity of the data: laws the trajectories must obey, checked on the simulation and on what each pipeline
serves. Data that is physically wrong is no pipeline bug, but it must not be trained on unnoticed.

Burgers (periodic, viscous), per sim and frame step `t -> t+1`:
  - `energy`: the kinetic energy `E = <|u|^2> / 2` (mean over cells) does not grow:
    `(E[t+1] - E[t]) / E[t] <= sanity.energy_rtol`.
  - `mean velocity`: `d<u>/dt = <u (div u)>` (central differences); in 1-D the right side vanishes and the mean is
    conserved, in 2-D and 3-D compressive flow moves it. The residual `|(<u>[t+1] - <u>[t]) / dt - (S[t] + S[t+1]) / 2|`
    must stay below `sanity.momentum_atol + sanity.momentum_rtol * max_t |S|`.
Smoke (closed box):
  - `divergence`: the stored velocity is the average of the staggered faces at each cell centre; with no flow through
    the walls the faces follow exactly, row by row, and their divergence must stay below `sanity.max_divergence`.
  - `mass`: the smoke mass `sum(density) * cell volume` grows by the inflow every step, within `sanity.mass_rtol` of
    the inflow per step.

Usage:

    report = check_physics(simulation, {'legacy': legacy, 'phiml': native})   # pipelines opened on their sims
    bool(report); report.detail; report.to_dict()                           # the curves are in to_dict()
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from harness.config import SanityConfig, ScenarioConfig
from harness.pipeline import AbstractPipeline, BatchPlan, WindowKey

logger = logging.getLogger(__name__)
QUANTITIES = {'burgers': ('energy', 'mean velocity'), 'smoke': ('divergence', 'mass')}
MAX_PROBLEMS = 20  # per source and quantity, in the report


@dataclass
class SourceCheck:
    """The laws checked on one source of trajectories.

    Attributes:
        source: `'simulation'` or a pipeline name.
        sims: The sims checked.
        curves: Quantity -> one curve per sim (energy or mass per frame, max |div v| per frame, ...).
        worst: Quantity -> the worst measured value, in the units of its bound.
        bounds: Quantity -> the bound it is compared with.
        problems: Each violation, naming sim, frame, measured value and bound.
    """
    source: str
    sims: list[int]
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    worst: dict[str, float] = field(default_factory=dict)
    bounds: dict[str, float] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(self.problems.values())

    def to_dict(self) -> dict:
        return {'source': self.source, 'sims': self.sims, 'passed': self.passed, 'curves': self.curves,
                'worst': self.worst, 'bounds': self.bounds, 'problems': self.problems}


@dataclass
class PhysicsReport:
    """The physics sanity of a run; `__bool__` is `passed`."""
    physics: str
    quantities: tuple[str, ...]
    sources: list[SourceCheck]
    tolerances: dict
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.sources)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def detail(self) -> str:
        names = ', '.join(s.source for s in self.sources)
        if self.passed:
            worst = '; '.join(f"{q}: worst {_worst_text(self, q)}" for q in self.quantities)
            return f"{self.physics} laws hold on {names}: {worst}"
        failures = [f"{s.source}: {p}" for s in self.sources for q in self.quantities for p in s.problems.get(q, [])[:2]]
        return f"{len(failures)}+ violation(s) of the {self.physics} laws: " + '; '.join(failures[:4])

    def to_dict(self) -> dict:
        return {'physics': self.physics, 'passed': self.passed, 'detail': self.detail, 'quantities': list(self.quantities),
                'tolerances': self.tolerances, 'notes': self.notes, 'sources': [s.to_dict() for s in self.sources]}


def _worst_text(report: PhysicsReport, quantity: str) -> str:
    values = [s.worst[quantity] for s in report.sources if quantity in s.worst]
    bound = next(s.bounds[quantity] for s in report.sources if quantity in s.bounds)
    return f"{max(values):.3g} (bound {bound:.3g})"


def check_physics(simulation, pipelines: Mapping[str, AbstractPipeline] | None = None,
                  sims: Mapping[str, Sequence[int]] | None = None) -> PhysicsReport:
    """Checks the scenario's laws on every sim of `simulation` and on what each pipeline serves.

    Args:
        simulation: A `harness.data.simulate.Simulation`.
        pipelines: Name -> pipeline, each opened; its served windows are reassembled into trajectories.
        sims: Name -> the sims that pipeline was opened on (default: the scenario's training sims).
    """
    config: ScenarioConfig = simulation.config
    quantities = QUANTITIES[config.physics]
    sources = [_check_source('simulation', config, simulation.constants,
                             {s: _simulated(simulation, s) for s in range(simulation.n_sims)})]
    for name, pipeline in (pipelines or {}).items():
        served_sims = list((sims or {}).get(name, config.train_sims))
        sources.append(_check_source(name, config, simulation.constants, served_trajectories(pipeline, served_sims,
                                                                                             config.sim.n_frames)))
    notes = []
    if config.physics == 'burgers' and len(config.sim.resolution) > 1:
        notes.append("In 2-D and 3-D vector Burgers does not conserve the mean velocity: d<u>/dt = <u div u>; the check "
                     "holds the mean to that budget (in 1-D the source vanishes and the mean is conserved).")
    return PhysicsReport(config.physics, quantities, sources, _tolerances(config.sanity, config.physics), notes)


def _tolerances(sanity: SanityConfig, physics: str) -> dict:
    keys = {'burgers': ('energy_rtol', 'momentum_rtol', 'momentum_atol'), 'smoke': ('max_divergence', 'mass_rtol')}
    return {key: getattr(sanity, key) for key in keys[physics]}


def _simulated(simulation, sim: int) -> dict[str, np.ndarray]:
    return {name: _array(field.values) for name, field in simulation.sim_fields(sim).items()}


def _array(values) -> np.ndarray:
    """(time, *spatial, [vector]) as float64."""
    order = ['time', *values.shape.spatial.names] + (['vector'] if 'vector' in values.shape else [])
    return np.ascontiguousarray(values.numpy(order), dtype=np.float64)  # one memory order: bitwise equal sums


def served_trajectories(pipeline: AbstractPipeline, sims: Sequence[int], n_frames: int) -> dict[int, dict[str, np.ndarray]]:
    """Each sim's trajectory as the pipeline serves it: the initial states of its windows `t0 = 0 ... W-1`, then the
    targets of its last window, through `pipeline.batches` (its own loading and conversion)."""
    windows = n_frames - pipeline.rollout_steps
    plan = BatchPlan(0, -1, tuple(tuple(WindowKey(s, t0) for t0 in range(windows)) for s in sims))
    result = {}
    for sim, batch in zip(sims, pipeline.batches(plan)):
        initial, targets = batch['initial_state'], batch['targets']
        names = sorted(initial) if isinstance(initial, dict) else [None]
        fields = {}
        for name in names:
            first = initial[name] if name else initial
            rest = targets[name] if name else targets
            spatial = list(first.shape.spatial.names) + (['vector'] if 'vector' in first.shape else [])
            frames = first.numpy(['batch', *spatial]).astype(np.float64)
            tail = rest.numpy(['batch', 'time', *spatial])[-1].astype(np.float64)
            fields[name or _single_field_name(pipeline)] = np.ascontiguousarray(np.concatenate([frames, tail]))
        result[sim] = fields
    return result


def _single_field_name(pipeline: AbstractPipeline) -> str:
    layouts, _ = pipeline.describe_file(pipeline.window_keys()[0].sim)
    return sorted(layouts)[0]


def _check_source(source: str, config: ScenarioConfig, constants: Mapping[str, float],
                  trajectories: Mapping[int, Mapping[str, np.ndarray]]) -> SourceCheck:
    result = SourceCheck(source, sorted(trajectories))
    check = _burgers if config.physics == 'burgers' else _smoke
    for quantity in QUANTITIES[config.physics]:
        result.curves[quantity], result.problems[quantity] = [], []
    check(config, constants, trajectories, result)
    for quantity in QUANTITIES[config.physics]:
        if len(result.problems[quantity]) > MAX_PROBLEMS:
            extra = len(result.problems[quantity]) - MAX_PROBLEMS
            result.problems[quantity] = result.problems[quantity][:MAX_PROBLEMS] + [f"... and {extra} more"]
    return result


def _note(result: SourceCheck, quantity: str, value: float, bound: float) -> None:
    result.worst[quantity] = max(result.worst.get(quantity, -np.inf), value)
    result.bounds[quantity] = bound


def _burgers(config: ScenarioConfig, constants, trajectories: Mapping[int, Mapping[str, np.ndarray]],
             result: SourceCheck) -> None:
    tol, dt = config.sanity, config.sim.dt
    dx = [config.sim.domain_size / n for n in config.sim.resolution]
    budgets = {}
    for sim in result.sims:
        u = trajectories[sim]['velocity']  # (time, *spatial, vector)
        spatial_axes = tuple(range(1, u.ndim - 1))
        energy = .5 * (u ** 2).sum(-1).mean(spatial_axes)
        growth = np.diff(energy) / np.maximum(energy[:-1], np.finfo(np.float64).tiny)
        result.curves['energy'].append(energy.tolist())
        _note(result, 'energy', float(growth.max(initial=-np.inf)), tol.energy_rtol)
        for t in np.flatnonzero(~(growth <= tol.energy_rtol)):
            result.problems['energy'].append(f"sim {sim} frame {t}->{t + 1}: kinetic energy grew by a relative "
                                             f"{growth[t]:.3g} (> sanity.energy_rtol={tol.energy_rtol:g})")
        divergence = sum((np.roll(u[..., i], -1, axis) - np.roll(u[..., i], 1, axis)) / (2 * dx[i])
                         for i, axis in enumerate(spatial_axes))
        source = (u * divergence[..., None]).mean(spatial_axes)  # <u div u>: (time, vector)
        mean = u.mean(spatial_axes)
        budgets[sim] = np.abs(np.diff(mean, axis=0) / dt - .5 * (source[1:] + source[:-1])).max(-1), source
        result.curves['mean velocity'].append(np.linalg.norm(mean, axis=-1).tolist())
    # the scale of the momentum exchange in this run; semi-Lagrangian advection itself moves the mean by ~15 % of it
    scale = max((float(np.abs(source).max()) for _, source in budgets.values()), default=0.0)
    bound = tol.momentum_atol + tol.momentum_rtol * scale
    for sim, (residual, _) in budgets.items():
        _note(result, 'mean velocity', float(residual.max(initial=0)), bound)
        for t in np.flatnonzero(~(residual <= bound)):
            result.problems['mean velocity'].append(
                f"sim {sim} frame {t}->{t + 1}: the mean velocity moved {residual[t]:.3g}/unit time beyond its budget "
                f"<u div u> (bound {bound:.3g} = sanity.momentum_atol + sanity.momentum_rtol * {scale:.3g}, the largest "
                f"|<u div u>|)")


def _smoke(config: ScenarioConfig, constants, trajectories: Mapping[int, Mapping[str, np.ndarray]],
           result: SourceCheck) -> None:
    for sim in result.sims:
        _smoke_sim(config, constants, sim, trajectories[sim], result)


def _smoke_sim(config: ScenarioConfig, constants, sim: int, fields: Mapping[str, np.ndarray], result: SourceCheck) -> None:
    tol = config.sanity
    density, velocity = fields['density'], fields['velocity']  # (time, x, y), (time, x, y, vector)
    dx = [config.sim.domain_size / n for n in config.sim.resolution]
    worst_div = closed_box_divergence(velocity, dx)
    result.curves['divergence'].append(worst_div.tolist())
    _note(result, 'divergence', float(worst_div.max()), tol.max_divergence)
    for t in np.flatnonzero(~(worst_div <= tol.max_divergence)):
        result.problems['divergence'].append(f"sim {sim} frame {t}: max |div v| = {worst_div[t]:.3g} "
                                             f"(> sanity.max_divergence={tol.max_divergence:g}): not incompressible")
    mass = density.sum(axis=(1, 2)) * constants['cell_volume']
    inflow = constants['inflow_mass_per_step']
    error = np.abs(np.diff(mass) - inflow) / inflow
    result.curves['mass'].append(mass.tolist())
    _note(result, 'mass', float(error.max(initial=0)), tol.mass_rtol)
    for t in np.flatnonzero(~(error <= tol.mass_rtol)):
        result.problems['mass'].append(f"sim {sim} frame {t}->{t + 1}: mass changed by {mass[t + 1] - mass[t]:.4g}, "
                                       f"the inflow adds {inflow:.4g} (relative error {error[t]:.3g} > "
                                       f"sanity.mass_rtol={tol.mass_rtol:g})")


def closed_box_divergence(velocity: np.ndarray, dx: Sequence[float]) -> np.ndarray:
    """Max |div v| per frame of a closed-box velocity stored at cell centres `(time, x, y, vector)`.

    Each centre value is the mean of its two faces along the component's axis, and the wall faces are zero, so the
    faces follow row by row: `f[0] = 0`, `f[i+1] = 2 c[i] - f[i]`. The last face, at the far wall, must come out zero
    too; the divergence of the last cell uses it, so flow through a wall counts as divergence.
    """
    total = 0
    for axis in range(velocity.ndim - 2):
        component = np.moveaxis(velocity[..., axis], axis + 1, -1)  # (time, other, along)
        faces = np.zeros(component.shape[:-1] + (component.shape[-1] + 1,))
        for i in range(component.shape[-1]):
            faces[..., i + 1] = 2 * component[..., i] - faces[..., i]
        total = total + np.moveaxis(np.diff(faces, axis=-1) / dx[axis], -1, axis + 1)
    return np.abs(total).reshape(total.shape[0], -1).max(axis=1)
