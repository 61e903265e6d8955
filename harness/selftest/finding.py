"""What a self-test judge returns (`harness.selftest.run.JUDGES`), in a module of its own so that a judge defined
beside its bugs (`bugs_<family>.py`) needs nothing of the run that imports it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """What one judge found for one (clean or bug-injected) pipeline: the checks that failed (none: not caught) and
    the diagnosis, its kind first."""
    failed: list[str]
    kind: str
    summary: str
