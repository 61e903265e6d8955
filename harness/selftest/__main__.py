"""`python -m harness.selftest`: see `harness.cli.selftest`."""
import sys

from harness.cli import launch

sys.exit(launch('selftest'))
