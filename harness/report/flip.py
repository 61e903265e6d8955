"""The one-line change a team makes after a GO: the scenario's `data.pipeline` flipped to the native pipeline."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from harness.config import scenario_path
from harness.errors import ConfigError


def default_flip(scenario: str) -> dict | None:
    """The one-line change of the scenario's YAML file (`harness.config.scenario_path`: the shipped one for a name, the
    file itself for a path) that makes the native pipeline the training default.

    Returns:
        `{'file', 'line', 'before', 'after', 'current', 'command'}` (`file` relative to the working folder where it
        lies below it, as in a checkout, else absolute, as where the harness is installed; `line` counts from 1;
        `command` is a `sed` that makes exactly that change, run from the working folder), or None when the scenario
        has no YAML file or no `data.pipeline` line.
    """
    try:
        path = scenario_path(scenario)
    except ConfigError:
        return None
    section = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line[:1].strip() and not line.startswith('#'):
            section = line.split(':', 1)[0]
        match = re.match(r'^\s+pipeline: (\w+)', line)
        if section == 'data' and match:
            current = match.group(1)
            after = line.replace(f"pipeline: {current}", "pipeline: phiml", 1)  # what `command` does
            here, full = Path.cwd().resolve(), path.resolve()
            shown = str(full.relative_to(here) if full.is_relative_to(here) else full)
            return {'file': shown, 'line': number, 'before': line, 'after': after, 'current': current,
                    'command': f"sed -i '{number}s/pipeline: {current}/pipeline: phiml/' {shlex.quote(shown)}"}
    return None
