"""The command-line layer: one module per command (`compare`, `selftest`, `bench`, `migrate`) and the registry of the
default pipelines, the only place in the harness that names `legacy` and `phiml_native`.

`launch` is what `python -m harness.<command>` runs. It imports the command inside its guard, so Ctrl-C at any time,
during the imports too, is one line and exit code 130.
"""
from __future__ import annotations

import importlib
import sys

INTERRUPTED = 130


def launch(command: str) -> int:
    """Imports `harness.cli.<command>` and runs its `main()`; returns the exit code."""
    prog = f"python -m harness.{command}"
    try:
        return importlib.import_module(f'harness.cli.{command}').main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
