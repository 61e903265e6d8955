"""Batch plans: the harness derives each epoch's batches of window keys once, from `(seed, epoch)`."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.pipeline import BatchPlan, WindowKey


def make_plan(keys: Sequence[WindowKey], batch_size: int, *, seed: int, epoch: int, drop_last: bool = False) -> BatchPlan:
    """Shuffles `keys` with `numpy.random.default_rng([seed, epoch])` and cuts them into batches.

    Args:
        keys: All windows of the epoch, in canonical order (sorted by `(sim, t0)` before shuffling).
        batch_size: Windows per batch; the last batch is smaller unless `drop_last`.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` (={batch_size}) must be >= 1")
    ordered = sorted(WindowKey(*k) for k in keys)
    order = np.random.default_rng([seed, epoch]).permutation(len(ordered))
    shuffled = [ordered[i] for i in order]
    stop = len(shuffled) - len(shuffled) % batch_size if drop_last else len(shuffled)
    batches = tuple(tuple(shuffled[i:i + batch_size]) for i in range(0, stop, batch_size))
    return BatchPlan(seed=seed, epoch=epoch, batches=batches)


def make_plans(keys: Sequence[WindowKey], batch_size: int, *, seed: int, epochs: int) -> list[BatchPlan]:
    return [make_plan(keys, batch_size, seed=seed, epoch=e) for e in range(epochs)]


def window_keys(sims: Sequence[int], windows_per_sim: int) -> list[WindowKey]:
    """Every window of `sims` in canonical order: `(sim, t0)` for `t0` in `range(windows_per_sim)`."""
    return [WindowKey(sim, t0) for sim in sims for t0 in range(windows_per_sim)]


def sequential_plan(keys: Sequence[WindowKey], batch_size: int, *, seed: int, epoch: int = -1) -> BatchPlan:
    """`keys` in their order, cut into batches (no shuffle): the plan of a validation pass."""
    keys = list(keys)
    return BatchPlan(seed, epoch, tuple(tuple(keys[i:i + batch_size]) for i in range(0, len(keys), batch_size)))
