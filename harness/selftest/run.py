"""The self-test: inject each known migration bug into the native pipeline being judged and show that the comparison
catches and diagnoses it, and that the clean pipeline passes."""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from harness.cache.build import write_cache
from harness.config import ScenarioConfig
from harness.data.simulate import simulate
from harness.equivalence.batches import compare_pipelines
from harness.equivalence.diagnose import diagnose_epoch
from harness.equivalence.expected import Expected
from harness.pipeline import AbstractPipeline
from harness.report.verdict import coverage_check, equivalence_check, window_keys_check
from harness.selftest.bugs import CATALOGUE, InjectedBug
from harness.selftest.bugs_evidence import CATALOGUE as EVIDENCE_CATALOGUE, judge_metadata, judge_sizes
from harness.selftest.bugs_everyday import CATALOGUE as EVERYDAY_CATALOGUE, judge_everyday
from harness.selftest.bugs_speed import CATALOGUE as SPEED_CATALOGUE, judge_speed

CLEAN = 'none (clean native pipeline)'


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
    """One row per bug injected (the clean pipeline first); `skipped`: bug -> why it cannot occur in this scenario;
    `sims`: `'K of N'` where the self-test judged K of the N training sims, else empty."""
    rows: list[SelftestRow]
    skipped: dict[str, str] = field(default_factory=dict)
    sims: str = ''

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


@dataclass(frozen=True)
class SelftestContext:
    """What every judge of the self-test needs: the run's config, the opened legacy pipeline (the reference), the
    classes and cache folders, the simulation and the expected windows, plans, frames and tolerances."""
    config: ScenarioConfig
    legacy: AbstractPipeline
    legacy_cls: type[AbstractPipeline]
    native_cls: type[AbstractPipeline]
    legacy_dir: Path
    native_dir: Path
    simulation: object
    expected: Expected


@dataclass(frozen=True)
class Finding:
    """What one judge found for one (clean or bug-injected) pipeline: the checks that failed (none: not caught) and
    the diagnosis, its kind first."""
    failed: list[str]
    kind: str
    summary: str


def judge_batches(ctx: SelftestContext, native: AbstractPipeline) -> Finding:
    """The plan-driven comparison of the first epoch: window enumeration, batch equality, coverage, diagnosis."""
    plan = ctx.expected.plans[0]
    equivalence = compare_pipelines(ctx.legacy, native, [plan], ctx.expected.tolerances, ctx.expected.frames)
    checks = [window_keys_check(ctx.expected.keys, {native.name: native.window_keys()}),
              equivalence_check(equivalence, ctx.config), coverage_check(equivalence)]
    diagnosis = diagnose_epoch(ctx.legacy, native, plan, ctx.expected.frames, ctx.expected.tolerances)
    return Finding([c.name for c in checks if not c], diagnosis.kind, diagnosis.summary)


# judge family -> how a pipeline is judged in it; each bug names its family (`InjectedBug.judged_by`); the clean
# pipeline goes through every family and must pass them all
JUDGES: dict[str, Callable[[SelftestContext, AbstractPipeline], Finding]] = {
    'batches': judge_batches,
    'metadata': lambda ctx, native: Finding(*judge_metadata(ctx, native)),
    'sizes': lambda ctx, native: Finding(*judge_sizes(ctx, native)),
    'everyday': lambda ctx, native: Finding(*judge_everyday(ctx, native)),
    'speed': lambda ctx, native: Finding(*judge_speed(ctx, native)),
}


def catalogue() -> dict[str, type[InjectedBug]]:
    """Every injected bug, by name, in the order the self-test runs them."""
    return {**CATALOGUE, **EVIDENCE_CATALOGUE, **EVERYDAY_CATALOGUE, **SPEED_CATALOGUE}


def run_selftest(config: ScenarioConfig, legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline],
                 simulation=None, legacy_dir: Path | None = None, native_dir: Path | None = None, *,
                 expected: Expected | None = None) -> SelftestResult:
    """Judges the clean native pipeline and every bug of `catalogue()`, each by its judge family (`JUDGES`), on the
    training sims of `judged_sims` (a team's large cache: its first sims, so the self-test's time does not grow with it).

    Args:
        legacy_cls: The reference pipeline.
        native_cls: The pipeline being judged; every bug wraps an instance of it.
        simulation: Reused if given, else simulated from `config`.
        legacy_dir, native_dir: Existing caches of `simulation` to reuse; written into a temporary folder if None.
        expected: The run's windows, plans, frames and tolerances (built from `config` and `simulation` if None, or
            where fewer sims are judged); the self-test judges the first epoch.
    """
    simulation = simulation or simulate(config)
    r, total, judged = config.data.rollout_steps, len(config.train_sims), len(judged_sims(config))
    if judged < total:  # the validation sims it needs: the next ones
        data = replace(config.data, n_sims=judged, n_val_sims=min(config.data.n_val_sims, total - judged))
        config, expected = replace(config, data=data), None
    with tempfile.TemporaryDirectory(prefix='selftest-') as tmp:
        if legacy_dir is None or native_dir is None:
            legacy_dir, native_dir = Path(tmp) / 'legacy', Path(tmp) / 'phiml'
            write_cache(legacy_cls(legacy_dir, r), simulation, config.train_sims)
            write_cache(native_cls(native_dir, r), simulation, config.train_sims)
        legacy = legacy_cls(legacy_dir, r)
        legacy.open(config.train_sims)
        ctx = SelftestContext(config, legacy, legacy_cls, native_cls, Path(legacy_dir), Path(native_dir), simulation,
                              expected or Expected.of(config, simulation))
        rows, skipped = [], {}
        shapes = {name: f.values.shape.without(('sim', 'time')) for name, f in simulation.fields.items()}
        rows.append(_judge_clean(ctx))
        for bug, wrap in catalogue().items():
            why = wrap.not_applicable(shapes, ctx.expected.plans[0]) or wrap.not_judged(config)
            if why:
                skipped[bug] = why
                continue
            native = wrap(native_cls(native_dir, r))
            native.open(config.train_sims)
            found = JUDGES[wrap.judged_by](ctx, native)
            rows.append(SelftestRow(bug, caught=bool(found.failed), check=', '.join(found.failed) or '-',
                                    diagnosis=found.summary, kind=found.kind, expected_kind=wrap.expected_kind))
    return SelftestResult(rows, skipped, f"{judged} of {total}" if judged < total else '')


def judged_sims(config: ScenarioConfig) -> list[int]:
    """The training sims the self-test judges: the first `compare.selftest_sims` (0: all), more where fewer would
    leave under three batches, or where the whole epoch ends in a partial batch and theirs would not."""
    sims, b, per_sim = config.train_sims, config.data.batch_size, config.windows_per_sim
    if not config.compare.selftest_sims:
        return sims
    k = max(config.compare.selftest_sims, -(-(2 * b + 1) // per_sim))
    while k < len(sims) and len(sims) * per_sim % b and k * per_sim % b == 0:
        k += 1
    return sims[:k]


def _judge_clean(ctx: SelftestContext) -> SelftestRow:
    """The clean native pipeline through every judge: caught when any judge fails it (named by the first that does)."""
    findings = []
    for judge in JUDGES.values():
        native = ctx.native_cls(ctx.native_dir, ctx.config.data.rollout_steps)
        native.open(ctx.config.train_sims)
        findings.append(judge(ctx, native))
    failed = [name for f in findings for name in f.failed]
    first = next((f for f in findings if f.failed), findings[0])
    summary = first.summary if failed else findings[0].summary
    return SelftestRow(CLEAN, caught=bool(failed), check=', '.join(failed) or '-', diagnosis=summary,
                       kind=first.kind if failed else 'none', expected_kind='none')
