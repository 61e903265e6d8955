"""The one-line change a team makes after a GO: the scenario's `data.pipeline` flipped to the native pipeline."""
from __future__ import annotations

import re

from harness.config import CONFIG_DIR


def default_flip(scenario: str) -> dict | None:
    """The one-line change of `harness/configs/<scenario>.yaml` that makes the native pipeline the training default.

    Returns:
        `{'file', 'line', 'before', 'after', 'current', 'command'}` (`line` counts from 1; `command` is a `sed` that
        makes exactly that change), or None when the scenario has no YAML file or no `data.pipeline` line.
    """
    path = CONFIG_DIR / f'{scenario}.yaml'
    if not path.is_file():
        return None
    section = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line[:1].strip() and not line.startswith('#'):
            section = line.split(':', 1)[0]
        match = re.match(r'^\s+pipeline: (\w+)', line)
        if section == 'data' and match:
            current = match.group(1)
            after = line.replace(f"pipeline: {current}", "pipeline: phiml", 1)  # what `command` does
            return {'file': f"harness/configs/{scenario}.yaml", 'line': number, 'before': line, 'after': after,
                    'current': current,
                    'command': f"sed -i '{number}s/pipeline: {current}/pipeline: phiml/' harness/configs/{scenario}.yaml"}
    return None
