"""The command-line layer: one module per command (`compare`, `selftest`, `bench`, `migrate`) and the registry of the
default pipelines, the only place in the harness that names `legacy` and `phiml_native`.

`launch` is what `python -m harness.<command>` runs. It imports the command inside its guard, so Ctrl-C at any time,
during the imports too, is one line and exit code 130.
"""
from __future__ import annotations

import importlib
import os
import sys

INTERRUPTED = 130


def launch(command: str) -> int:
    """Imports `harness.cli.<command>` and runs its `main()`; returns the exit code (130 after Ctrl-C)."""
    try:
        code = importlib.import_module(f'harness.cli.{command}').main()
    except KeyboardInterrupt:  # during the imports: once the command runs, its own guard answers Ctrl-C
        print(f"python -m harness.{command}: interrupted", file=sys.stderr)
        code = INTERRUPTED
    if code == INTERRUPTED:
        # not a normal exit: after an interrupt inside Python code run by an extension (torch's import, a traced
        # function) the interpreter kills itself with SIGINT at exit, whatever exit code was asked for
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    return code
