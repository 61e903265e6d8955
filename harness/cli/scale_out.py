"""`python -m harness.scale_out --legacy MODULE:CLASS --native MODULE:CLASS --out FILE`: how much `--workers N` buys
on this machine (see `harness.bench.scale_out`); writes every figure to FILE as JSON and prints the ratios.

Exit code: 0 after a run, 2 with one line on stderr for bad usage.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from harness.bench.scale_out import measure, scenario
from harness.cli.common import OneLineParser, guarded
from harness.errors import ConfigError
from harness.pipeline import load_pipeline
from harness.provenance import provenance

PROG = 'python -m harness.scale_out'
SHOWN = ('ratios', 'cluster', 'builds', 'crossover', 'machine_before', 'machine_after')


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Both caches built and the legacy cache migrated in this process "
                                                  "and on a LocalCluster, with the cluster's fixed costs and the crossover.")
    parser.add_argument('--legacy', required=True, metavar='MODULE:CLASS')
    parser.add_argument('--native', required=True, metavar='MODULE:CLASS')
    parser.add_argument('--sims', type=int, default=64)
    parser.add_argument('--resolution', type=int, default=64)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--crossover-sims', default='4,8,16,32', metavar='N,N,...',
                        help="smaller numbers of sims also built both ways, for the crossover (default 4,8,16,32)")
    parser.add_argument('--out', type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the measurement; returns 0, or 2 with one line on stderr for bad usage."""
    return guarded(_main, PROG, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = make_parser().parse_args(argv)
    try:
        sizes = [int(n) for n in args.crossover_sims.split(',') if n.strip()]
    except ValueError:
        raise ConfigError(f"--crossover-sims (={args.crossover_sims!r}) must be whole numbers separated by commas") from None
    if any(n < 1 for n in sizes) or args.sims < 1:
        raise ConfigError(f"--sims (={args.sims}) and --crossover-sims (={args.crossover_sims!r}) must be at least 1")
    config = scenario(args.sims, args.resolution)
    folder = Path(tempfile.mkdtemp(prefix='scale-out-'))
    try:
        result = measure(config, load_pipeline(args.legacy, '--legacy'), load_pipeline(args.native, '--native'),
                         args.workers, folder, sizes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result['provenance'] = {k: v for k, v in provenance(config).items() if k != 'config'}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in SHOWN}, indent=2))
    return 0
