"""Data health scan before training: frames a model should never be trained on, reported per sim and frame.

Checks, per sim, frame (index along `time`, 0 = initial state) and field:

- `nonfinite`: the frame holds NaN or ±Inf values.
- `out-of-bounds`: some finite |value| exceeds `HealthConfig.max_abs_value`.
- `constant`: every component holds one value in every cell (a dead or blown-away field).
- `repeated`: the frame is bitwise equal to the frame before (a stalled solver or a copy bug).

Each finding is allowed or not by the scenario's `health` section (`allow_nonfinite`, `allow_constant`,
`allow_repeated`; the bound is never waived, set it to `.inf` to disable it).

The scan also runs on what each pipeline reads (its `read_fields`) and serves (its batches, every sim reassembled from
its windows): a finding there that the simulation does not have is the pipeline's doing and is never allowed
(`with_pipeline_data`). Usage:

    report = scan_simulation(simulation, config.health)      # or scan_tensors / scan_dataset
    report = with_pipeline_data(report, {'phiml reads': scan_read(...), 'phiml serves': scan_served(...)})
    bool(report)        # == report.passed: no finding that the config does not allow; no-go otherwise
    report.detail       # one human-readable line for the verdict
    report.rows         # HealthFinding(sim, frame, field, check, detail, allowed), sorted by sim, frame, field
    report.by_sim()     # {sim: [findings]}
    report.counts       # {check: number of frames}
    report.to_dict()    # for summary.json
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from phiml import math
from phiml.math import Shape, Tensor

from harness.config import HealthConfig
from harness.data.physics import served_trajectories

logger = logging.getLogger(__name__)
CHECKS = ('nonfinite', 'out-of-bounds', 'constant', 'repeated')


@dataclass(frozen=True)
class HealthFinding:
    """One unhealthy frame of one field of one sim.

    Attributes:
        sim: Simulation index.
        frame: Index along `time` (0 = initial state).
        field: Field name.
        check: One of `CHECKS`.
        detail: What was found, e.g. `'3 NaN, 0 Inf of 512 values'`.
        allowed: Whether the config lets it through.
        source: What was scanned: `'simulation'`, or e.g. `'phiml serves'` for a finding only in a pipeline's data.
    """
    sim: int
    frame: int
    field: str
    check: str
    detail: str
    allowed: bool
    source: str = 'simulation'

    def __str__(self) -> str:
        where = '' if self.source == 'simulation' else f"{self.source}, not in the simulation: "
        return f"{where}sim {self.sim} frame {self.frame} {self.field!r}: {self.check} ({self.detail})"


@dataclass
class HealthReport:
    """The health of a set of trajectories; `__bool__` is `passed`.

    Attributes:
        config: The thresholds used.
        sims: Sim indices scanned.
        n_frames: Frames per sim.
        fields: Field names scanned.
        rows: Every finding, allowed or not, sorted by (sim, frame, field, check).
        sources: What else was scanned besides the simulation, e.g. `['legacy reads', 'phiml serves']`.
    """
    config: HealthConfig
    sims: list[int]
    n_frames: int
    fields: list[str]
    rows: list[HealthFinding] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[HealthFinding]:
        """Findings the config does not allow."""
        return [r for r in self.rows if not r.allowed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    @property
    def counts(self) -> dict[str, int]:
        """Frames flagged per check (allowed ones included)."""
        return {check: sum(r.check == check for r in self.rows) for check in CHECKS}

    def by_sim(self) -> dict[int, list[HealthFinding]]:
        result: dict[int, list[HealthFinding]] = {}
        for row in self.rows:
            result.setdefault(row.sim, []).append(row)
        return result

    @property
    def detail(self) -> str:
        """One line: what was scanned and, per check, how many frames failed and the first of them."""
        scanned = f"{len(self.sims)} sims x {self.n_frames} frames of {', '.join(map(repr, self.fields))}"
        if self.sources:
            scanned += f" and what the pipelines read and serve ({', '.join(self.sources)})"
        if not self.rows:
            return (f"healthy: {scanned}; no NaN/Inf, constant or repeated frames, no |value| > "
                    f"{self.config.max_abs_value:g}")
        parts = []
        for check in CHECKS:
            rows = [r for r in self.rows if r.check == check and r.source == 'simulation']
            if rows:
                verdict = 'allowed by config' if rows[0].allowed else 'not allowed'
                parts.append(f"{check} in {len(rows)} frame(s), {verdict} (first: {rows[0]})")
        for source in self.sources:
            rows = [r for r in self.rows if r.source == source]
            if rows:
                checks = sorted({r.check for r in rows}, key=CHECKS.index)
                parts.append(f"{source} {', '.join(checks)} the simulation does not have, in {len(rows)} frame(s) "
                             f"(first: sim {rows[0].sim} frame {rows[0].frame} {rows[0].field!r}: {rows[0].detail}): "
                             f"the pipeline's doing")
        head = 'unhealthy' if self.failures else 'healthy (findings allowed by config)'
        return f"{head}: {scanned}; " + '; '.join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {'passed': self.passed, 'detail': self.detail, 'counts': self.counts, 'config': asdict(self.config),
                'sims': self.sims, 'n_frames': self.n_frames, 'fields': self.fields, 'sources': self.sources,
                'rows': [asdict(r) for r in self.rows]}


def scan_simulation(simulation, health: HealthConfig) -> HealthReport:
    """Scans every sim of a `harness.simulate.Simulation` (fields with dims sim, time, *spatial, [vector])."""
    return scan_tensors({name: f.values for name, f in simulation.fields.items()}, health)


def scan_read(fields_per_sim: Iterable[Mapping[str, Tensor]], sims: Sequence[int], health: HealthConfig) -> HealthReport:
    """Scans what a pipeline reads, one sim at a time: `read_fields` of each sim of `sims` (fields with dims time,
    *spatial, [vector]), e.g. a generator reading them (every check is one of a sim's frames)."""
    rows, n_frames, names = [], 0, []
    for sim, fields in zip(sims, fields_per_sim):
        part = scan_tensors({name: math.expand(t, math.batch(sim=1)) for name, t in fields.items()}, health, [sim])
        rows, n_frames, names = rows + part.rows, part.n_frames, part.fields
    return HealthReport(health, list(sims), n_frames, names, rows)


def scan_served(pipeline, sims: Sequence[int], frames: Mapping[str, Shape], health: HealthConfig) -> HealthReport:
    """Scans what an opened pipeline serves: each sim of `sims` reassembled from its windows
    (`harness.data.physics.served_trajectories`, through the pipeline's own loading and conversion).

    Args:
        frames: Field name -> the shape of its trajectory (time, *spatial, [vector]), for the dims of the arrays.
    """
    n_frames = next(iter(frames.values())).get_size('time')
    served = served_trajectories(pipeline, sims, n_frames)
    return scan_tensors({name: math.wrap(np.stack([served[sim][name] for sim in sims]), math.batch('sim'), shape)
                         for name, shape in frames.items()}, health, sims)


def with_pipeline_data(report: HealthReport, scans: Mapping[str, HealthReport]) -> HealthReport:
    """`report` (of the simulation) with every finding of `scans` (source label -> scan of what a pipeline reads or
    serves) that the simulation does not have: never allowed, since the pipeline put it there."""
    known = {(r.sim, r.frame, r.field, r.check) for r in report.rows}
    rows = list(report.rows)
    for source, scan in scans.items():
        rows += [dataclasses.replace(r, allowed=False, source=source) for r in scan.rows
                 if (r.sim, r.frame, r.field, r.check) not in known]
    rows.sort(key=lambda r: (r.sim, r.frame, r.field, CHECKS.index(r.check)))
    return dataclasses.replace(report, rows=rows, sources=[*report.sources, *scans])


def scan_pipelines(report: HealthReport, pipelines: Sequence, read: Mapping[str, HealthReport],
                   served_sims: Sequence[int], simulation, health: HealthConfig) -> HealthReport:
    """`report` (of the simulation) with the scans of what each pipeline reads and serves (`with_pipeline_data`).

    Args:
        pipelines: Opened on `served_sims`.
        read: Pipeline name -> the scan of what it reads (`scan_read`).
        simulation: For the dims of the served trajectories.
    """
    frames = {name: f.values.shape.without('sim') for name, f in simulation.fields.items()}
    scans, unscanned = {}, []
    for pipeline in pipelines:
        scans[f"{pipeline.name} reads"] = read[pipeline.name]
        try:
            scans[f"{pipeline.name} serves"] = scan_served(pipeline, served_sims, frames, health)
        except (ValueError, KeyError, IndexError, AssertionError) as err:  # served dims unlike the simulation's
            reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            logger.warning("health scan of what %s serves: not scanned (%s)", pipeline.name, reason)
            unscanned.append(f"{pipeline.name} serves (not scanned: {reason})")
    combined = with_pipeline_data(report, scans)
    return dataclasses.replace(combined, sources=[*combined.sources, *unscanned])


def scan_dataset(dataset, health: HealthConfig) -> HealthReport:
    """Scans what a `phiml_native.PhiMLDataset` serves: its arrays `(sim, time, *spatial, [vector])`."""
    tensors = {name: math.wrap(array, math.batch('sim'), dataset.shapes[name]) for name, array in dataset.arrays.items()}
    return scan_tensors(tensors, health, dataset.sim_indices)


def scan_tensors(tensors: Mapping[str, Tensor], health: HealthConfig, sims: Sequence[int] | None = None) -> HealthReport:
    """Scans trajectories given as PhiML tensors.

    Args:
        tensors: Field name -> Tensor with dims `sim` (batch), `time` (batch), spatial dims and an optional channel dim.
        health: Thresholds and allowances.
        sims: The sim index of each entry along `sim`; default `0, 1, ...`.

    Raises:
        ValueError: a tensor lacks `sim` or `time`, or the fields disagree on the number of sims or frames.
    """
    rows: list[HealthFinding] = []
    n_sims = n_frames = None
    for name, tensor in sorted(tensors.items()):
        if 'sim' not in tensor.shape or 'time' not in tensor.shape:
            raise ValueError(f"field {name!r} has dims {tensor.shape.names}, expected `sim` and `time` among them")
        sizes = tensor.shape.get_size('sim'), tensor.shape.get_size('time')
        if n_sims is not None and sizes != (n_sims, n_frames):
            raise ValueError(f"field {name!r} has {sizes[0]} sims x {sizes[1]} frames, other fields {n_sims} x {n_frames}")
        n_sims, n_frames = sizes
        rows += _scan_field(name, tensor, health, list(range(n_sims)) if sims is None else list(sims))
    sims = list(range(n_sims or 0)) if sims is None else list(sims)
    rows.sort(key=lambda r: (r.sim, r.frame, r.field, CHECKS.index(r.check)))
    report = HealthReport(health, sims, n_frames or 0, sorted(tensors), rows)
    logger.info("health scan: %s", report.detail)
    return report


def _scan_field(name: str, tensor: Tensor, health: HealthConfig, sims: list[int]) -> list[HealthFinding]:
    spatial = tensor.shape.spatial.names
    channel = tensor.shape.channel.names
    order = ['sim', 'time', *spatial, *channel]
    with math.precision(tensor.dtype.bits):  # numpy(order) casts to the default precision otherwise
        values = tensor.numpy(order)
    if len(sims) != values.shape[0]:
        raise ValueError(f"`sims` has {len(sims)} entries, field {name!r} has {values.shape[0]} sims")
    s, t = values.shape[:2]
    cells = values.reshape(s, t, -1, values.shape[-1] if channel else 1)  # (sim, time, cell, component)
    items = tensor.shape.get_item_names(channel[0]) if channel else None
    rows = []

    def add(check: str, sim_pos: int, frame: int, detail: str, allowed: bool):
        rows.append(HealthFinding(sims[sim_pos], int(frame), name, check, detail, allowed))

    finite = np.isfinite(cells)
    n_nan, n_inf = np.isnan(cells).sum((2, 3)), np.isinf(cells).sum((2, 3))
    for i, f in zip(*np.nonzero(n_nan + n_inf)):
        add('nonfinite', i, f, f"{n_nan[i, f]} NaN, {n_inf[i, f]} Inf of {cells[i, f].size} values", health.allow_nonfinite)
    magnitude = np.where(finite, np.abs(cells), 0)
    peak = magnitude.max((2, 3))
    for i, f in zip(*np.nonzero(peak > health.max_abs_value)):
        cell, comp = np.unravel_index(int(np.argmax(magnitude[i, f])), magnitude.shape[2:])
        where = dict(zip(spatial, np.unravel_index(cell, values.shape[2:2 + len(spatial)])))
        if channel:
            where[channel[0]] = items[comp] if items else comp
        at = ', '.join(f"{k}={v}" for k, v in where.items())
        add('out-of-bounds', i, f, f"|value| {float(peak[i, f]):.6g} at {at} exceeds `health.max_abs_value` "
                                  f"(={health.max_abs_value:g})", False)
    constant = (cells.max(2) == cells.min(2)).all(-1)  # NaN compares unequal: a NaN frame is reported as nonfinite
    for i, f in zip(*np.nonzero(constant)):
        held = ', '.join(f"{v:.6g}" for v in cells[i, f, 0])
        add('constant', i, f, f"every cell holds ({held})" if channel else f"every cell holds {held}",
            health.allow_constant)
    bits = cells.view(f'u{cells.dtype.itemsize}')  # bitwise: NaN equals the same NaN, -0.0 differs from 0.0
    repeated = (bits[:, 1:] == bits[:, :-1]).all((2, 3))
    for i, f in zip(*np.nonzero(repeated)):
        add('repeated', i, f + 1, f"bitwise equal to frame {f}", health.allow_repeated)
    return rows
