"""What every command-line entry point shares: one-line errors with exit code 2, the verdict's exit codes, and logging
set-up."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from harness.errors import HarnessError

USAGE_ERROR = 2
VERDICT_EXIT_CODES = {'go': 0, 'no-go': 1, 'inconclusive': 3}  # 2 is bad usage


def verdict_exit_code(verdict: str) -> int:
    """The exit code of a verdict: 0 go, 1 no-go, 3 inconclusive.

    Raises:
        ValueError: not a verdict.
    """
    try:
        return VERDICT_EXIT_CODES[verdict]
    except KeyError:
        raise ValueError(f"verdict {verdict!r} is not one of {list(VERDICT_EXIT_CODES)}") from None


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """`--workers N` / `--scheduler ADDRESS`: where the work runs (see `harness.scale.open_executor`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--workers', type=int, metavar='N', help="run the work by chunks of sims on a Dask LocalCluster "
                       "of N single-threaded worker processes on this machine (default: all in this process)")
    group.add_argument('--scheduler', metavar='ADDRESS', help="run the work by chunks of sims on the workers of a "
                       "running Dask scheduler, e.g. tcp://10.0.0.5:8786 (see the README for SLURM)")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format='%(levelname)s %(name)s: %(message)s')


def guarded(main: Callable[[Sequence[str] | None], int], prog: str, argv: Sequence[str] | None = None) -> int:
    """Runs `main(argv)`; a `HarnessError` or an OS error on a user-given path becomes one line and exit code 2."""
    try:
        return main(argv)
    except HarnessError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
    except OSError as err:
        where = f" {err.filename!r}" if err.filename else ''
        print(f"{prog}: error: cannot use{where}: {err.strerror or err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return USAGE_ERROR
