"""Where a result came from: package versions, machine, git commit, seed and the resolved config."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from harness.config import ScenarioConfig

PACKAGES = ('phiml', 'phiflow', 'torch', 'numpy', 'pandas', 'matplotlib', 'jinja2', 'omegaconf')


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(config: ScenarioConfig, argv: list[str] | None = None) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        'packages': versions, 'python': sys.version.split()[0], 'platform': platform.platform(),
        'cpu': cpu_model(), 'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(), 'git_commit': git_commit(), 'seed': config.seed,
        'config': config.to_dict(), 'argv': argv, 'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
