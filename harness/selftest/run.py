"""The self-test: inject each known migration bug into the native pipeline being judged and show that the comparison
catches and diagnoses it, and that the clean pipeline passes."""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from harness.cache.build import write_cache
from harness.config import ScenarioConfig
from harness.data.simulate import simulate
from harness.equivalence.batches import compare_pipelines
from harness.equivalence.diagnose import diagnose_epoch
from harness.equivalence.expected import Expected
from harness.pipeline import AbstractPipeline
from harness.report.verdict import coverage_check, equivalence_check, window_keys_check
from harness.selftest.bugs import CATALOGUE



@dataclass
class SelftestRow:
    bug: str
    caught: bool
    check: str
    diagnosis: str
    kind: str
    expected_kind: str

    @property
    def ok(self) -> bool:
        """A bug must be caught with the expected kind; the clean pipeline must not be flagged."""
        if self.expected_kind == 'none':
            return not self.caught
        return self.caught and self.kind == self.expected_kind


@dataclass
class SelftestResult:
    """One row per bug injected (the clean pipeline first); `skipped`: bug -> why it cannot occur in this scenario."""
    rows: list[SelftestRow]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    def __bool__(self) -> bool:
        return self.passed

    def to_dicts(self) -> list[dict]:
        """The rows, then each skipped bug as a row with `kind` 'n/a' (`ok`: nothing to catch)."""
        return [{**asdict(r), 'ok': r.ok} for r in self.rows] + [
            {'bug': bug, 'caught': False, 'check': '-', 'diagnosis': f"not applicable: {why}", 'kind': 'n/a',
             'expected_kind': 'n/a', 'ok': True} for bug, why in self.skipped.items()]

    def table(self) -> str:
        header = f"{'bug':32} {'caught':7} {'check that named it':38} {'ok':3} diagnosis"
        lines = [header, '-' * len(header)]
        for r in self.rows:
            lines.append(f"{r.bug:32} {'yes' if r.caught else 'no':7} {r.check[:38]:38} {'ok' if r.ok else 'BAD':3} "
                         f"{r.kind}: {r.diagnosis}")
        lines += [f"{bug:32} {'-':7} {'-':38} {'n/a':3} not applicable: {why}" for bug, why in self.skipped.items()]
        return '\n'.join(lines)


def run_selftest(config: ScenarioConfig, legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline],
                 simulation=None, legacy_dir: Path | None = None, native_dir: Path | None = None, *,
                 expected: Expected | None = None) -> SelftestResult:
    """Runs the comparison of one epoch for the clean native pipeline and every bug of `harness.selftest.bugs.CATALOGUE`.

    Args:
        legacy_cls: The reference pipeline.
        native_cls: The pipeline being judged; every bug wraps an instance of it.
        simulation: Reused if given, else simulated from `config`.
        legacy_dir, native_dir: Existing caches of `simulation` to reuse; written into a temporary folder if None.
        expected: The run's windows, plans, frames and tolerances (built from `config` and `simulation` if None);
            the self-test judges the first epoch.
    """
    simulation = simulation or simulate(config)
    r = config.data.rollout_steps
    with tempfile.TemporaryDirectory(prefix='selftest-') as tmp:
        if legacy_dir is None or native_dir is None:
            legacy_dir, native_dir = Path(tmp) / 'legacy', Path(tmp) / 'phiml'
            write_cache(legacy_cls(legacy_dir, r), simulation, config.train_sims)
            write_cache(native_cls(native_dir, r), simulation, config.train_sims)
        legacy = legacy_cls(legacy_dir, r)
        legacy.open(config.train_sims)
        expected = expected or Expected.of(config, simulation)
        plan, frames, tolerances = expected.plans[0], expected.frames, expected.tolerances
        rows, skipped = [], {}
        shapes = {name: f.values.shape.without(('sim', 'time')) for name, f in simulation.fields.items()}
        for bug, wrap in [('none (clean native pipeline)', None), *CATALOGUE.items()]:
            why = wrap.not_applicable(shapes, plan) if wrap is not None else None
            if why:
                skipped[bug] = why
                continue
            native = native_cls(native_dir, r) if wrap is None else wrap(native_cls(native_dir, r))
            native.open(config.train_sims)
            equivalence = compare_pipelines(legacy, native, [plan], tolerances, frames)
            checks = [window_keys_check(expected.keys, {native.name: native.window_keys()}),
                      equivalence_check(equivalence, config), coverage_check(equivalence)]
            failed = [c.name for c in checks if not c]
            diagnosis = diagnose_epoch(legacy, native, plan, frames, tolerances)
            rows.append(SelftestRow(bug, caught=bool(failed), check=', '.join(failed) or '-', diagnosis=diagnosis.summary,
                                    kind=diagnosis.kind, expected_kind=getattr(wrap, 'expected_kind', 'none')))
    return SelftestResult(rows, skipped)
