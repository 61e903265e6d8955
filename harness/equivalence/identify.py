"""Identifies the window a delivered batch element came from, by the content of its frames.

The harness holds the simulated trajectories, so it can tell which `(sim, t0)` a pipeline actually delivered without
trusting the pipeline: each frame's bytes are digested once; a batch element is the window `(sim, t0)` when its
initial state digests to frame `t0` of `sim` and its targets to frames `t0+1 ... t0+R`.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from phiml.math import Tensor

from harness.pipeline import WindowKey
from harness.data.simulate import Simulation


def frame_digest(frame: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(frame).tobytes(), digest_size=16).digest()


class FrameIndex:
    """Frame digests of one field of a simulation.

    Args:
        simulation: The trajectories both pipelines were built from.
        sims: The sims whose frames to index.
        field_name: The field to identify windows by (default: the first, alphabetically).
    """

    def __init__(self, simulation: Simulation, sims: Sequence[int], field_name: str | None = None):
        self.field_name = field_name or sorted(simulation.fields)[0]
        self.by_digest: dict[bytes, tuple[int, int]] = {}
        self.frames: dict[int, list[bytes]] = {}
        for sim in sims:
            values = simulation.sim_fields(sim)[self.field_name].values
            order = ['time', *values.shape.spatial.names] + (['vector'] if values.shape.channel else [])
            array = values.numpy(order).astype(np.float32, copy=False)
            self.frames[sim] = [frame_digest(frame) for frame in array]
            for t, d in enumerate(self.frames[sim]):
                self.by_digest.setdefault(d, (sim, t))

    def identify(self, batch: dict) -> list[WindowKey | None]:
        """The window of each element along `batch`, or None where the content matches no simulated window."""
        initial, targets = field_of(batch['initial_state'], self.field_name), field_of(batch['targets'], self.field_name)
        spatial = initial.shape.spatial.names
        vector = ['vector'] if 'vector' in initial.shape else []
        if 'batch' not in initial.shape or 'time' not in targets.shape:
            return [None] * (initial.shape.get_size('batch') if 'batch' in initial.shape else 1)
        try:
            first = initial.numpy(['batch', *spatial, *vector]).astype(np.float32, copy=False)
            rest = targets.numpy(['batch', 'time', *spatial, *vector]).astype(np.float32, copy=False)
        except (AssertionError, ValueError, KeyError):
            return [None] * initial.shape.get_size('batch')
        keys = []
        for b in range(first.shape[0]):
            found = self.by_digest.get(frame_digest(first[b]))
            if found is None:
                keys.append(None)
                continue
            sim, t0 = found
            expected = self.frames[sim][t0 + 1:t0 + 1 + rest.shape[1]]
            actual = [frame_digest(frame) for frame in rest[b]]
            keys.append(WindowKey(sim, t0) if actual == expected else None)
        return keys


def field_of(value, field_name: str) -> Tensor:
    return value if isinstance(value, Tensor) else value[field_name]
