"""`python -m harness.bench SCENARIO [key=value ...]`: how fast and how lean each pipeline is, stage by stage, against
the memory-bandwidth floor, and how that scales; writes `bench.json` and prints a table (see `harness.bench.run`).

Exit code: 0 after a run (targets missed are reported, not failed: timings on a shared machine are evidence, not
assertions), 2 for bad usage or a bad config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.bench.run import REPEATS, format_table, run_bench
from harness.cli.common import OneLineParser, guarded, setup_logging
from harness.cli.registry import add_pipeline_flags, configure_pipelines, pipeline_argv, report_folder
from harness.config import load_config
from harness.errors import ConfigError

PROG = 'python -m harness.bench'


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', help="scenario name (harness/configs/<scenario>.yaml) or the path of a .yaml config of your own")
    parser.add_argument('overrides', nargs='*', metavar='key=value', help="config overrides, e.g. data.n_sims=16")
    parser.add_argument('--out', type=Path, help="output folder for bench.json (default: as for harness.compare)")
    parser.add_argument('--repeats', type=int, default=REPEATS, help=f"timed repetitions per figure (median; an odd number is rounded up: "
                        f"the pipelines' order alternates; default {REPEATS})")
    parser.add_argument('--warmup', type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument('--skip', action='append', default=[], choices=['scaling', 'memory', 'mapped', 'variants'],
                        help="leave out a part (repeatable)")
    add_pipeline_flags(parser)
    parser.add_argument('-v', '--verbose', action='store_true', help="log what each step does")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; 0 after a run, 2 with one line on stderr for bad usage."""
    return guarded(_main, PROG, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = make_parser().parse_intermixed_args(argv)
    setup_logging(args.verbose)
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError(f"`--repeats` (={args.repeats}) must be >= 1 and `--warmup` (={args.warmup}) >= 0")
    config = load_config(args.scenario, args.overrides)
    config, classes = configure_pipelines(config, args.legacy, args.native)
    out = args.out or report_folder(config, classes)
    result = run_bench(config, *classes, out, repeats=args.repeats, warmup=args.warmup,
                       scaling='scaling' not in args.skip, memory='memory' not in args.skip,
                       mapped='mapped' not in args.skip, variants='variants' not in args.skip,
                       argv=[args.scenario, *pipeline_argv(args.legacy, args.native), *args.overrides])
    print(format_table(result))
    print(f"bench.json: {(out / 'bench.json').resolve()}")
    return 0
