"""`python -m harness.selftest SCENARIO`: inject each known migration bug into the native pipeline and show that the
comparison catches and diagnoses it, and that the clean pipeline passes.

Exit code: 0 when every bug is caught with the expected diagnosis and the clean pipeline passes, 1 otherwise, 2 for
bad usage.
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .cli import OneLineParser, guarded, setup_logging
from .config import ScenarioConfig, load_config
from .diff import ToleranceMap
from .identify import FrameIndex
from .pipeline import WindowKey

PROG = 'python -m harness.selftest'


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
    rows: list[SelftestRow]

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    def __bool__(self) -> bool:
        return self.passed

    def to_dicts(self) -> list[dict]:
        return [{**asdict(r), 'ok': r.ok} for r in self.rows]

    def table(self) -> str:
        header = f"{'bug':32} {'caught':7} {'check that named it':38} {'ok':3} diagnosis"
        lines = [header, '-' * len(header)]
        for r in self.rows:
            lines.append(f"{r.bug:32} {'yes' if r.caught else 'no':7} {r.check[:38]:38} {'ok' if r.ok else 'BAD':3} "
                         f"{r.kind}: {r.diagnosis}")
        return '\n'.join(lines)


def run_selftest(config: ScenarioConfig, simulation=None, legacy_dir: Path | None = None,
                 native_dir: Path | None = None) -> SelftestResult:
    """Runs the comparison of one epoch for the clean native pipeline and every bug of `harness.bugs.CATALOGUE`.

    Args:
        simulation: Reused if given, else simulated from `config`.
        legacy_dir, native_dir: Existing caches of `simulation` to reuse; written into a temporary folder if None.
    """
    from legacy import LegacyPipeline
    from phiml_native import NativePipeline
    from .bugs import CATALOGUE
    from .cache import write_cache
    from .diagnose import diagnose_epoch
    from .equivalence import compare_pipelines
    from .plan import make_plan
    from .simulate import simulate
    from .verdict import coverage_check, equivalence_check, window_keys_check

    simulation = simulation or simulate(config)
    r, cmp = config.data.rollout_steps, config.compare
    with tempfile.TemporaryDirectory(prefix='selftest-') as tmp:
        if legacy_dir is None or native_dir is None:
            legacy_dir, native_dir = Path(tmp) / 'legacy', Path(tmp) / 'phiml'
            write_cache(LegacyPipeline(legacy_dir, r), simulation, config.train_sims)
            write_cache(NativePipeline(native_dir, r), simulation, config.train_sims)
        legacy = LegacyPipeline(legacy_dir, r)
        legacy.open(config.train_sims)
        expected = [WindowKey(s, t0) for s in config.train_sims for t0 in range(config.windows_per_sim)]
        plan = make_plan(expected, config.data.batch_size, seed=config.seed, epoch=0)
        frames = FrameIndex(simulation, config.train_sims)
        tolerances = ToleranceMap(cmp.tier, cmp.rtol, cmp.atol, cmp.fields, sorted(simulation.fields))
        rows = []
        for bug, cls in [('none (clean native pipeline)', NativePipeline), *CATALOGUE.items()]:
            native = cls(native_dir, r)
            native.open(config.train_sims)
            equivalence = compare_pipelines(legacy, native, [plan], tolerances, frames)
            checks = [window_keys_check(expected, {native.name: native.window_keys()}),
                      equivalence_check(equivalence, config), coverage_check(equivalence)]
            failed = [c.name for c in checks if not c]
            diagnosis = diagnose_epoch(legacy, native, plan, frames, tolerances)
            rows.append(SelftestRow(bug, caught=bool(failed), check=', '.join(failed) or '-', diagnosis=diagnosis.summary,
                                    kind=diagnosis.kind, expected_kind=getattr(cls, 'expected_kind', 'none')))
    return SelftestResult(rows)


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', help="scenario name: harness/configs/<scenario>.yaml")
    parser.add_argument('overrides', nargs='*', metavar='key=value', help="config overrides")
    parser.add_argument('--quick', action='store_true', help="a tiny scenario (seconds)")
    parser.add_argument('-v', '--verbose', action='store_true')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .compare import QUICK
    args = make_parser().parse_intermixed_args(argv)
    setup_logging(args.verbose)
    config = load_config(args.scenario, [*(QUICK if args.quick else ()), *args.overrides])
    result = run_selftest(config)
    print(result.table())
    bad = [r.bug for r in result.rows if not r.ok]
    print(f"self-test: {'PASSED' if result else 'FAILED'}: {len(result.rows) - 1} injected bugs"
          + (f"; wrong for: {', '.join(bad)}" if bad else ", all caught and diagnosed; clean pipeline passes"))
    return 0 if result else 1


if __name__ == '__main__':
    sys.exit(guarded(main, PROG))
