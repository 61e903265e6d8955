"""`python -m harness.migrate LEGACY_DIR NPZ_DIR`: convert a legacy `.pt` cache into the native `.npz` cache without
re-simulating (see `harness.cache.migrate`); `--legacy` / `--native MODULE:CLASS` name other source / target pipelines.

Exit code: 0 after a migration, 2 with one line on stderr for bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from harness.cli.common import OneLineParser, add_scale_arguments, guarded, setup_logging
from harness.cli.registry import DEFAULTS
from harness.pipeline import load_pipeline
from harness.scale import open_executor
from harness.scale.migrate import migrate_cache

PROG = 'python -m harness.migrate'


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG,
                           description="Convert a legacy .pt cache into the native .npz cache without re-simulating; "
                                       "every file is verified bitwise against its source, LEGACY_DIR is only read, "
                                       "and a rerun resumes.")
    parser.add_argument('legacy_dir', type=Path, metavar='LEGACY_DIR', help="folder of the source cache (sim_XXXXXX.pt "
                        "files of the default --legacy)")
    parser.add_argument('npz_dir', type=Path, metavar='NPZ_DIR', help="folder for the target cache and its manifest.json "
                        "(sim_XXXXXX.npz files of the default --native)")
    parser.add_argument('--legacy', metavar='MODULE:CLASS', default=DEFAULTS['legacy'],
                        help=f"the source pipeline, which reads LEGACY_DIR (default {DEFAULTS['legacy']})")
    parser.add_argument('--native', metavar='MODULE:CLASS', default=DEFAULTS['native'],
                        help=f"the target pipeline, which writes NPZ_DIR (default {DEFAULTS['native']})")
    add_scale_arguments(parser)
    parser.add_argument('--no-progress', action='store_true', help="no progress bar")
    parser.add_argument('-v', '--verbose', action='store_true', help="log what is done")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the migration; returns 0, or 2 with one line on stderr for bad input."""
    return guarded(_main, PROG, argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as done:  # usage error (one line already on stderr) or --help
        return int(done.code or 0)
    setup_logging(args.verbose)
    legacy_cls, native_cls = load_pipeline(args.legacy, '--legacy'), load_pipeline(args.native, '--native')
    from tqdm import tqdm
    bar = tqdm(unit='file', desc='migrate', disable=True if args.no_progress else None, file=sys.stderr, leave=False)
    with open_executor(args.workers, args.scheduler) as executor, bar:
        report = migrate_cache(executor, args.legacy_dir, args.npz_dir, bar.update, legacy_cls=legacy_cls,
                               native_cls=native_cls)
    print(report.summary())
    return 0
