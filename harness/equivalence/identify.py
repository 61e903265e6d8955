"""Identifies the window a delivered batch element came from, by the content of its frames.

The harness holds the simulated trajectories, so it can tell which `(sim, t0)` a pipeline actually delivered without
trusting the pipeline: each frame's bytes are digested once; a batch element is the window `(sim, t0)` when its
initial state digests to frame `t0` of `sim` and its targets to frames `t0+1 ... t0+R`. Given the planned windows, an
element that is its planned window is named so even where another sim holds the same frames; any other element is
named by the first sim and frame its content matches, so a window served from the wrong sim names the sim it came from.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from phiml.math import Tensor

from harness.pipeline import WindowKey
from harness.data.simulate import Simulation


def frame_digest(frame: np.ndarray) -> bytes:
    """The digest of a frame's bytes in C order (hashed from the array's own buffer, without a copy where it is
    contiguous)."""
    return hashlib.blake2b(memoryview(np.ascontiguousarray(frame)).cast('B'), digest_size=16).digest()


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

    def identify(self, batch: dict, planned: Sequence[WindowKey] | None = None) -> list[WindowKey | None]:
        """The window of each element along `batch`, or None where the content matches no simulated window.

        Args:
            planned: The window each element should be (the plan's keys of this batch): an element whose frames are
                those of its planned window is that window.
        """
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
            digests = [frame_digest(first[b]), *(frame_digest(frame) for frame in rest[b])]
            plan = WindowKey(*planned[b]) if planned is not None and b < len(planned) else None
            if plan is not None and self.window(plan, len(digests)) == digests:
                keys.append(plan)
                continue
            found = self.by_digest.get(digests[0])
            keys.append(WindowKey(*found) if found is not None and self.window(WindowKey(*found), len(digests)) == digests
                        else None)
        return keys

    def window(self, key: WindowKey, n_frames: int) -> list[bytes] | None:
        """The digests of frames `t0 ... t0 + n_frames - 1` of `key.sim`; None for a sim not indexed or too few frames."""
        frames = self.frames.get(key.sim)
        if frames is None or key.t0 < 0 or key.t0 + n_frames > len(frames):
            return None
        return frames[key.t0:key.t0 + n_frames]


def field_of(value, field_name: str) -> Tensor:
    return value if isinstance(value, Tensor) else value[field_name]
