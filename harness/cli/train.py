"""`python -m harness.train SCENARIO [key=value ...]`: train the scenario's model on the pipeline its config names
(`data.pipeline: legacy | phiml`; the migration plan's `use_phiml_data=true` is accepted too), with validation each
epoch, `train_log.csv`, `loss.png` and a checkpoint per epoch in `--out`; `--resume` continues from the last one.

Exit code: 0 when training finished, 2 for bad usage or a bad config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.cli.common import OneLineParser, add_scale_arguments, guarded, setup_logging
from harness.cli.registry import pipeline_class
from harness.config import load_config, quick_overrides
from harness.scale import open_executor
from harness.training_run import LOG_NAME, PLOT_NAME, run_training

PROG = 'python -m harness.train'


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', help="scenario name (harness/configs/<scenario>.yaml) or the path of a .yaml config of your own")
    parser.add_argument('overrides', nargs='*', metavar='key=value',
                        help="config overrides, e.g. data.pipeline=phiml trainer.epochs=10 trainer.device=cpu")
    parser.add_argument('--out', type=Path, help="output folder (default: runs/<scenario>-<pipeline>/)")
    parser.add_argument('--cache-dir', type=Path, help="the chosen pipeline's cache folder, built or completed as "
                        "needed (default: <out>/cache/<pipeline>)")
    parser.add_argument('--resume', action='store_true', help="continue from the last checkpoint in <out>/checkpoints")
    add_scale_arguments(parser)
    parser.add_argument('--quick', action='store_true', help="a tiny scenario (seconds)")
    parser.add_argument('--no-progress', action='store_true', help="no progress bar")
    parser.add_argument('-v', '--verbose', action='store_true', help="log each epoch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Trains; returns 0 when training finished, or 2 with one line on stderr for bad usage."""
    return guarded(_main, PROG, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = make_parser().parse_intermixed_args(argv)
    setup_logging(args.verbose)
    config = load_config(args.scenario, [*(quick_overrides(args.scenario) if args.quick else ()), *args.overrides])
    out = args.out or Path('runs') / f"{config.name}-{config.data.pipeline}"
    with open_executor(args.workers, args.scheduler) as executor:  # the cache build; training runs here
        result = run_training(config, out, pipeline_class(config.data.pipeline), cache_dir=args.cache_dir,
                              resume=args.resume, progress=not args.no_progress, executor=executor)
    last = result.history[-1]
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ''
    print(f"trained {config.name} on the {result.pipeline} pipeline ({result.device}) for {last.epoch} epoch(s){resumed}: "
          f"training loss {last.train_loss:.6g}, validation loss {last.val_loss:.6g}")
    print(f"log: {(out / LOG_NAME).resolve()}, plot: {(out / PLOT_NAME).resolve()}")
    return 0
