"""A catalogue of real migration bugs, injected into the native pipeline for the self-test.

Each entry is a `NativePipeline` subclass that reproduces one bug the way it appears in migrations like this one;
the self-test runs the comparison on each and checks that it is caught and correctly diagnosed.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from phiml import math
from phiml.math import Tensor, channel

from phiml_native import NativePipeline
from .pipeline import BatchPlan, WindowKey


def _map(batch: dict, f) -> dict:
    return {key: f(key, value) if isinstance(value, Tensor) else {n: f(key, v) for n, v in value.items()}
            for key, value in batch.items()}


def _native(t: Tensor) -> tuple[np.ndarray, tuple]:
    return t.numpy(t.shape.names), t.shape


def _rewrap(array: np.ndarray, shape) -> Tensor:
    return math.wrap(torch.from_numpy(np.ascontiguousarray(array)), shape)


class TransposedXY(NativePipeline):
    """x and y swapped in the data (the classic `[H, W]` vs `(x, y)` mix-up); names kept."""
    expected_kind = 'layout'

    def to_phiml(self, raw):
        def swap(key, t):
            a, shape = _native(t)
            names = list(shape.names)
            return _rewrap(np.swapaxes(a, names.index('x'), names.index('y')), shape)
        return _map(raw, swap)


class SwappedVector(NativePipeline):
    """Vector components stored in reverse order (`vector='x,y'` holding y, x)."""
    expected_kind = 'layout'

    def to_phiml(self, raw):
        def swap(key, t):
            a, shape = _native(t)
            return _rewrap(np.flip(a, axis=list(shape.names).index('vector')), shape)
        return _map(raw, swap)


class RelabelledVector(NativePipeline):
    """Vector item names written as `'y,x'` while the data stays x, y (a wrong `channel(vector=...)`)."""
    expected_kind = 'structure'

    def to_phiml(self, raw):
        return _map(raw, lambda key, t: math.rename_dims(t, 'vector', channel(vector='y,x')) if 'vector' in t.shape else t)


class TargetsShifted(NativePipeline):
    """Targets taken from frames `t0+2 ... t0+R+1`: slicing `t0 + 1 + 1` instead of `t0 + 1`."""
    expected_kind = 'time offset'

    def load_batches(self, plan: BatchPlan) -> Iterator[dict]:
        data = self._require_open()
        for keys in plan.batches:
            good = data.gather(keys)
            shifted = data.gather([WindowKey(k.sim, min(k.t0 + 1, data.windows_per_sim - 1)) for k in keys])
            yield {'initial_state': good['initial_state'], 'targets': shifted['targets']}


class WindowsOffByOne(NativePipeline):
    """Every window starts one frame late: `t0 + 1` used as the window start (an off-by-one in `t0`)."""
    expected_kind = 'time offset'

    def load_batches(self, plan: BatchPlan) -> Iterator[dict]:
        data = self._require_open()
        for keys in plan.batches:
            yield data.gather([WindowKey(k.sim, min(k.t0 + 1, data.windows_per_sim - 1)) for k in keys])


class RolloutShort(NativePipeline):
    """One target frame too few: `range(t0 + 1, t0 + R)` instead of `t0 + R + 1`."""
    expected_kind = 'structure'

    def to_phiml(self, raw):
        return _map(raw, lambda key, t: t.time[:-1] if key == 'targets' else t)


class UpcastFloat64(NativePipeline):
    """Data silently upcast to float64 (e.g. `np.load` of data saved from Python floats)."""
    expected_kind = 'structure'

    def to_phiml(self, raw):
        return _map(raw, lambda key, t: _rewrap(_native(t)[0].astype(np.float64), t.shape))


class DropLastPartial(NativePipeline):
    """The last, smaller batch of an epoch is dropped (`drop_last=True` left on)."""
    expected_kind = 'batch count'

    def load_batches(self, plan: BatchPlan) -> Iterator[dict]:
        full = len(plan.batches[0]) if plan.batches else 0
        for keys in plan.batches:
            if len(keys) == full:
                yield self._require_open().gather(keys)


class OwnShuffleOrder(NativePipeline):
    """The plan ignored: windows served in the pipeline's own shuffled order (same windows, other batches)."""
    expected_kind = 'reorder'

    def load_batches(self, plan: BatchPlan) -> Iterator[dict]:
        keys = plan.keys()
        order = np.random.default_rng([plan.seed, plan.epoch, 1]).permutation(len(keys))
        shuffled = [keys[i] for i in order]
        start = 0
        for batch in plan.batches:
            yield self._require_open().gather(shuffled[start:start + len(batch)])
            start += len(batch)


class NormalisedTwice(NativePipeline):
    """Normalisation applied again to already-normalised data: x -> (x - mean) / std with the cache's statistics."""
    expected_kind = 'value transform'

    def open(self, sims):
        super().open(sims)
        data = self._require_open()
        for name, array in data.arrays.items():
            mean, std = float(array.mean()), float(array.std())
            data.arrays[name] = ((array - mean) / std).astype(np.float32)


class SlightDrift(NativePipeline):
    """Values off by a relative ~1e-6 (e.g. a unit conversion done in float64 and rounded back): numerical drift."""
    expected_kind = 'numerical drift'

    def open(self, sims):
        super().open(sims)
        data = self._require_open()
        for name, array in data.arrays.items():
            noisy = array.astype(np.float64) * (1 + 1e-6)  # far below any physics, far above bitwise
            data.arrays[name] = noisy.astype(np.float32)


CATALOGUE: dict[str, type[NativePipeline]] = {
    'x and y transposed': TransposedXY,
    'vector components swapped': SwappedVector,
    'vector item names swapped': RelabelledVector,
    'targets shifted by one frame': TargetsShifted,
    'windows start one frame late': WindowsOffByOne,
    'rollout one step short': RolloutShort,
    'data upcast to float64': UpcastFloat64,
    'last partial batch dropped': DropLastPartial,
    'different shuffle order': OwnShuffleOrder,
    'data normalised twice': NormalisedTwice,
    'tiny numerical drift': SlightDrift,
}
