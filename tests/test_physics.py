"""Physics sanity: the laws hold on correct simulations and on what both pipelines serve, and fail, naming sim and frame,
on deliberately broken ones."""
import logging

import numpy as np
import pytest

from conftest import PIPELINE_IDS, open_pipeline
from harness.config import load_config, quick_overrides
from harness.data.physics import check_physics, closed_box_divergence
from harness.data.simulate import Simulation, simulate
from harness.report.verdict import physics_check

from conftest import SMOKE_TINY as SMOKE


def _changed(simulation, name: str, change) -> Simulation:
    """A copy of `simulation` whose field `name` went through `change`, a numpy function of (sim, time, *spatial, [vector])."""
    from phiml import math
    field = simulation.fields[name]
    values = field.values
    order = ['sim', 'time', *values.shape.spatial.names] + (['vector'] if 'vector' in values.shape else [])
    array = change(values.numpy(order).copy())
    changed = math.tensor(array, math.concat_shapes(*[values.shape.only(n) for n in order]))
    return Simulation(simulation.config, {**simulation.fields, name: field.with_values(changed)}, simulation.constants)


def _with_velocity(simulation, change) -> Simulation:
    return _changed(simulation, 'velocity', change)


def test_burgers_laws_hold_on_the_simulation_and_both_pipelines(tiny_sim, cache_dirs, tiny_config):
    pipelines = {name: open_pipeline(name, cache_dirs, tiny_config) for name in PIPELINE_IDS}
    report = check_physics(tiny_sim, pipelines)
    assert report, report.detail
    assert [s.source for s in report.sources] == ['simulation', 'legacy', 'phiml']
    assert [s.sims for s in report.sources] == [[0, 1, 2, 3], [0, 1, 2], [0, 1, 2]]
    simulated = report.sources[0]
    assert len(simulated.curves['energy']) == 4 and all(len(c) == 9 for c in simulated.curves['energy'])
    assert simulated.worst['energy'] < 0  # energy falls in every step
    for served in report.sources[1:]:  # bitwise the same data: bitwise the same curves
        assert served.curves == {q: curves[:3] for q, curves in simulated.curves.items()}
    assert physics_check(report).passed and physics_check(report).name == 'physics sanity'


def test_energy_growth_is_caught(tiny_sim):
    def inflate(u):
        u[1, 5] *= 1.1  # sim 1, frame 5: 21 % more kinetic energy than frame 4
        return u
    report = check_physics(_with_velocity(tiny_sim, inflate))
    assert not report
    problems = report.sources[0].problems['energy']
    assert len(problems) == 1 and problems[0].startswith("sim 1 frame 4->5: kinetic energy grew by a relative 0.")
    assert '(> sanity.energy_rtol=0.0001)' in problems[0]
    check = physics_check(report)
    assert not check and 'fix the simulation' in check.detail


def test_mean_velocity_drift_is_caught(tiny_sim):
    def drift(u):
        u[2, 3:] += .5  # sim 2 from frame 3 on: a jump of the mean velocity, no source behind it
        return u
    report = check_physics(_with_velocity(tiny_sim, drift))
    problems = report.sources[0].problems['mean velocity']
    assert [p.split(':')[0] for p in problems] == ['sim 2 frame 2->3']
    assert report.sources[0].problems['energy'] == [] or all(p.startswith('sim 2') for p in report.sources[0].problems['energy'])


def test_burgers1d_conserves_the_mean():
    config = load_config('burgers1d', [*quick_overrides('burgers1d'), 'sim.n_steps=20'])
    report = check_physics(simulate(config))
    assert report, report.detail
    assert report.sources[0].worst['mean velocity'] < 1e-4  # Rusanov fluxes: conserved to float32 rounding
    assert report.notes == []


def test_smoke_laws_hold(smoke_sim, tmp_path):
    from legacy import LegacyPipeline
    from phiml_native import NativePipeline
    config = smoke_sim.config
    pipelines = {}
    for cls in (LegacyPipeline, NativePipeline):
        pipeline = cls(tmp_path / cls.name, config.data.rollout_steps)
        for sim in config.train_sims:
            pipeline.write_cache(sim, smoke_sim.sim_fields(sim), smoke_sim.metadata(sim))
        pipeline.open(config.train_sims)
        pipelines[cls.name] = pipeline
    report = check_physics(smoke_sim, pipelines)
    assert report, report.detail
    assert report.quantities == ('divergence', 'mass')
    for source in report.sources:
        assert source.worst['divergence'] < 1e-3 and source.worst['mass'] < 1e-4
    mass = report.sources[0].curves['mass'][0]
    inflow = smoke_sim.constants['inflow_mass_per_step']
    assert len(mass) == 7 and np.allclose(np.diff(mass), inflow, rtol=1e-4)
    assert report.sources[1].curves == {q: c[:3] for q, c in report.sources[0].curves.items()}


def test_smoke_without_pressure_solve_is_caught(monkeypatch, caplog):
    """A deliberately broken simulation: the pressure solve does nothing (as a failed solve under jit_compile)."""
    import phi.physics.fluid as fluid
    monkeypatch.setattr(fluid, 'make_incompressible', lambda velocity, obstacles=(), solve=None, **kwargs: (velocity, None))
    config = load_config('smoke', [*quick_overrides('smoke'), *SMOKE, 'sim.noise_amplitude=1.0'])
    with caplog.at_level(logging.WARNING, logger='harness.data.simulate'):
        broken = simulate(config)
    assert 'the pressure solve failed' in caplog.text
    report = check_physics(broken)
    assert not report
    divergence = report.sources[0].problems['divergence']
    assert divergence[0].startswith('sim 0 frame 0: max |div v| = ') and 'not incompressible' in divergence[0]
    assert report.sources[0].problems['mass'] == []  # the density flux stays conservative


def test_smoke_mass_loss_is_caught(smoke_sim):
    def lose(density):
        density[3, 4:] *= .9  # sim 3 loses a tenth of its smoke at frame 4
        return density
    broken = _changed(smoke_sim, 'density', lose)
    problems = check_physics(broken).sources[0].problems['mass']
    assert problems[0].startswith('sim 3 frame 3->4: mass changed by -') and 'sanity.mass_rtol=0.001' in problems[0]
    assert all(p.startswith('sim 3 ') for p in problems)  # later steps scaled too: 0.9 of the inflow


def test_closed_box_divergence_is_exact():
    """Faces from a stream function (zero on the walls) are divergence-free; a source cell shows its exact divergence."""
    nx, ny, h = 6, 5, .25
    rng = np.random.default_rng(0)
    psi = np.zeros((nx + 1, ny + 1))
    psi[1:-1, 1:-1] = rng.normal(size=(nx - 1, ny - 1))
    u_faces = (psi[:, 1:] - psi[:, :-1]) / h   # x-faces (nx + 1, ny)
    v_faces = -(psi[1:, :] - psi[:-1, :]) / h  # y-faces (nx, ny + 1)
    centres = np.stack([(u_faces[1:] + u_faces[:-1]) / 2, (v_faces[:, 1:] + v_faces[:, :-1]) / 2], -1)[None]
    assert closed_box_divergence(centres, [h, h])[0] < 1e-12
    u_faces[3, :] += 1.0  # one column of faces pushed: cells left of it lose, right of it gain 1/h each
    centres = np.stack([(u_faces[1:] + u_faces[:-1]) / 2, (v_faces[:, 1:] + v_faces[:, :-1]) / 2], -1)[None]
    assert closed_box_divergence(centres, [h, h])[0] == pytest.approx(1 / h)
