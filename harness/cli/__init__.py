"""The command-line layer: one module per command (`compare`, `selftest`, `bench`, `migrate`, `train`) and the
registry of the default pipelines, the only place in the harness that names `legacy` and `phiml_native`.

`launch` is what `python -m harness.<command>` runs: Ctrl-C at any time, during the imports too, is one line and exit
code 130.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading

INTERRUPTED = 130


def launch(command: str) -> int:
    """Imports `harness.cli.<command>` and runs its `main()`; returns the exit code (130 after Ctrl-C)."""
    message = f"python -m harness.{command}: interrupted\n".encode()

    def interrupted_while_importing(signum, frame):
        # no KeyboardInterrupt into a library's import: some swallow it and leave a half-imported module behind
        os.write(2, message)
        os._exit(INTERRUPTED)

    previous = signal.signal(signal.SIGINT, interrupted_while_importing)
    try:
        module = importlib.import_module(f'harness.cli.{command}')
    finally:
        signal.signal(signal.SIGINT, previous)
    sys.unraisablehook = _redeliver_swallowed_interrupt
    code = module.main()  # its guard turns a later Ctrl-C into one line and INTERRUPTED
    if code == INTERRUPTED:
        # not a normal exit: after an interrupt inside Python code run by an extension (a traced function) the
        # interpreter kills itself with SIGINT at exit, whatever exit code was asked for
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    return code


def _redeliver_swallowed_interrupt(unraisable) -> None:
    """A Ctrl-C that lands in code whose exceptions Python only reports (an at-fork callback such as logging's, run
    when a DataLoader starts its workers; a `__del__`) would be printed as 'Exception ignored' and lost, and the
    command would run on to exit code 0: deliver it again, so that it is raised in the main program."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        # from another thread, a moment later: a signal raised here would be handled here, and swallowed again
        main = threading.main_thread().ident
        threading.Timer(0.01, signal.pthread_kill, (main, signal.SIGINT)).start()
    else:
        sys.__unraisablehook__(unraisable)
