"""`python -m harness.bench`: see `harness.cli.bench`."""
import sys

from harness.cli import launch

sys.exit(launch('bench'))
