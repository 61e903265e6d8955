"""A team's own files, written the way a team's code writes them (plain `torch.save`, plain files; nothing of the
project's writers), and a byte-for-byte record of a folder tree to prove the harness left them alone."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

TEAM_META = {'team': 'ocean', 'solver': 'spectral-v3', 'dt': 0.05, 'notes': ['run 7', 'restart']}


def write_team_pt(folder: Path, sim: int, *, legacy_keys: bool = True, shape=(2, 27, 48, 32)) -> Path:
    """`folder/sim_XXXXXX.pt` as a team writes it: 48x32 cells, 27 frames, free-form metadata.

    Args:
        legacy_keys: Also carry the keys the legacy reader wants (`sim_index`, `n_frames`, `spatial_dims`,
            `field_channels`), so that the file loads; without them it holds free-form metadata only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(1000 + sim)
    meta = dict(TEAM_META, run=sim)
    if legacy_keys:
        meta.update(sim_index=sim, n_frames=shape[1], spatial_dims=['x', 'y'], field_channels={'velocity': ['x', 'y']})
    path = folder / f'sim_{sim:06d}.pt'
    torch.save({'tensor_data': {'velocity': torch.randn(*shape, generator=generator)}, 'metadata': meta}, path)
    return path


def tree_state(*folders: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (and `<dir>` for every folder) under `folders`."""
    state = {}
    for root in folders:
        if not root.exists():
            continue
        for path in sorted(root.rglob('*')):
            key = f"{root.name}/{path.relative_to(root)}"
            state[key] = '<dir>' if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state
