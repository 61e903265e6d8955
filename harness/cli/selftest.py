"""`python -m harness.selftest SCENARIO`: inject each known migration bug into the native pipeline and show that the
comparison catches and diagnoses it, and that the clean pipeline passes.

Exit code: 0 when every bug is caught with the expected diagnosis and the clean pipeline passes, 1 otherwise, 2 for
bad usage.
"""
from __future__ import annotations

from typing import Sequence

from harness.cli.common import OneLineParser, guarded, setup_logging
from harness.cli.registry import add_pipeline_flags, configure_pipelines
from harness.config import load_config, quick_overrides
from harness.selftest.run import run_selftest

PROG = 'python -m harness.selftest'


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', help="scenario name (harness/configs/<scenario>.yaml) or the path of a .yaml config of your own")
    parser.add_argument('overrides', nargs='*', metavar='key=value', help="config overrides")
    parser.add_argument('--quick', action='store_true', help="a tiny scenario (seconds)")
    add_pipeline_flags(parser, native="the pipeline being judged; every bug of the catalogue is injected into it")
    parser.add_argument('-v', '--verbose', action='store_true')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the self-test; 0 when it passes, 1 when not, 2 with one line on stderr for bad usage."""
    return guarded(_main, PROG, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = make_parser().parse_intermixed_args(argv)
    setup_logging(args.verbose)
    config = load_config(args.scenario, [*(quick_overrides(args.scenario) if args.quick else ()), *args.overrides])
    config, classes = configure_pipelines(config, args.legacy, args.native)
    result = run_selftest(config, *classes)
    print(result.table())
    bad = [r.bug for r in result.rows if not r.ok]
    skipped = f" ({len(result.skipped)} more not applicable here)" if result.skipped else ''
    print(f"self-test: {'PASSED' if result else 'FAILED'}: {len(result.rows) - 1} injected bugs{skipped}"
          + (f"; wrong for: {', '.join(bad)}" if bad else ", all caught and diagnosed; clean pipeline passes"))
    return 0 if result else 1
