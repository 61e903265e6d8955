"""A catalogue of real migration bugs, each a wrapper that injects one bug into ANY pipeline for the self-test.

`bug(inner)` behaves like `inner` (the pipeline being judged) except for the one bug, reproduced the way it appears
in migrations like this one; it reaches `inner` only through the `Pipeline` interface. The self-test runs the
comparison on each and checks that it is caught and correctly diagnosed (`expected_kind`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from phiml import math
from phiml.math import Shape, Tensor, channel

from harness.pipeline import AbstractPipeline, Batch, BatchPlan, FieldLayout, WindowKey


def _map(batch: dict, f: Callable[[str, Tensor], Tensor]) -> dict:
    return {key: f(key, value) if isinstance(value, Tensor) else {n: f(key, v) for n, v in value.items()}
            for key, value in batch.items()}


def _native(t: Tensor) -> tuple[np.ndarray, Any]:
    return t.numpy(t.shape.names), t.shape


def _rewrap(array: np.ndarray, shape) -> Tensor:
    return math.wrap(torch.from_numpy(np.ascontiguousarray(array)), shape)


class InjectedBug(AbstractPipeline):
    """`inner` with one bug. Subclasses override `batch` (the PhiML batch of one batch of keys) or `load_batches`; the
    everyday path (`everyday_epochs`, `everyday_train`, `loader_variants`) is `inner`'s unless a bug overrides it.

    Args:
        inner: The pipeline being judged; it owns the cache.
    """
    expected_kind: str = 'none'
    judged_by: str = 'batches'  # the self-test judge family that must catch it (`harness.selftest.run.JUDGES`)

    @classmethod
    def not_applicable(cls, frames: Mapping[str, Shape], plan: BatchPlan) -> str | None:
        """Why this bug cannot occur in a scenario whose fields have these frame shapes (spatial [+ `vector`]) with
        this plan, e.g. an x/y transposition in 1-D; None where it can."""
        return None

    @classmethod
    def not_judged(cls, config) -> str | None:
        """Why the run's config cannot catch this bug (e.g. its check is turned off); None where it can."""
        return None

    def __init__(self, inner: AbstractPipeline):
        super().__init__(inner.cache_dir, inner.rollout_steps)
        self.inner = inner
        self.name = inner.name
        self.file_suffix = inner.file_suffix

    def write_cache(self, sim: int, fields: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
        return self.inner.write_cache(sim, fields, metadata)

    def describe_file(self, sim: int) -> tuple[dict[str, FieldLayout], dict]:
        return self.inner.describe_file(sim)

    def read_fields(self, sim: int) -> tuple[dict[str, Tensor], dict]:
        return self.inner.read_fields(sim)

    def write_fields(self, sim: int, fields: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
        return self.inner.write_fields(sim, fields, metadata)

    def open(self, sims: Sequence[int]) -> None:
        self.inner.open(sims)

    def window_keys(self) -> list[WindowKey]:
        return self.inner.window_keys()


    def load_batches(self, plan: BatchPlan) -> Iterator[Batch]:
        for keys in plan.batches:
            yield self.batch(plan, keys)

    def batch(self, plan: BatchPlan, keys: Sequence[WindowKey]) -> Batch:
        return self.transform(self.served(plan, keys))

    def served(self, plan: BatchPlan, keys: Sequence[WindowKey]) -> Batch:
        """What `inner` serves for `keys`, as a PhiML batch."""
        return next(self.inner.batches(BatchPlan(plan.seed, plan.epoch, (tuple(keys),))))

    def transform(self, batch: Batch) -> Batch:
        return batch

    def to_phiml(self, raw: Batch) -> Batch:
        return raw

    def train(self, plans: Sequence[BatchPlan], network, optimizer) -> list[float]:
        return self.inner.train(plans, network, optimizer)

    def everyday_epochs(self, batch_size: int, *, seed: int, epochs: int, **variant) -> Iterator[Iterator[Batch]]:
        return self.inner.everyday_epochs(batch_size, seed=seed, epochs=epochs, **variant)

    def everyday_train(self, network, optimizer, batch_size: int, *, seed: int, epochs: int) -> list[float]:
        return self.inner.everyday_train(network, optimizer, batch_size, seed=seed, epochs=epochs)

    def loader_variants(self) -> list[dict]:
        return self.inner.loader_variants()

    def last_t0(self) -> int:
        """The last window start of a sim (windows per sim - 1)."""
        return max(key.t0 for key in self.inner.window_keys())


class TransposedXY(InjectedBug):
    """x and y swapped in the data (the classic `[H, W]` vs `(x, y)` mix-up); names kept."""
    expected_kind = 'layout'

    @classmethod
    def not_applicable(cls, frames, plan):
        if not any('x' in f and 'y' in f and f.get_size('x') == f.get_size('y') for f in frames.values()):
            return "needs x and y dims of one size (a 1-D scenario has no y)"
        return None

    def transform(self, batch):
        def swap(key, t):
            a, shape = _native(t)
            names = list(shape.names)
            swapped = shape.with_dim_size('x', shape.get_size('y')).with_dim_size('y', shape.get_size('x'))
            return _rewrap(np.swapaxes(a, names.index('x'), names.index('y')), swapped)
        return _map(batch, swap)


def _vector_fields(frames: Mapping[str, Shape]) -> str | None:
    if not any('vector' in f and f.get_size('vector') > 1 for f in frames.values()):
        return "needs a vector field of 2 or more components (1-D velocity has one)"
    return None


class SwappedVector(InjectedBug):
    """Vector components stored in reverse order (`vector='x,y'` holding y, x); scalar fields untouched."""
    expected_kind = 'layout'

    @classmethod
    def not_applicable(cls, frames, plan):
        return _vector_fields(frames)

    def transform(self, batch):
        def swap(key, t):
            if 'vector' not in t.shape:
                return t
            a, shape = _native(t)
            return _rewrap(np.flip(a, axis=list(shape.names).index('vector')), shape)
        return _map(batch, swap)


class RelabelledVector(InjectedBug):
    """Vector item names written reversed (`'y,x'`) while the data stays x, y (a wrong `channel(vector=...)`)."""
    expected_kind = 'structure'

    @classmethod
    def not_applicable(cls, frames, plan):
        return _vector_fields(frames)

    def transform(self, batch):
        def relabel(key, t):
            if 'vector' not in t.shape:
                return t
            names = ','.join(reversed(t.shape.get_item_names('vector')))
            return math.rename_dims(t, 'vector', channel(vector=names))
        return _map(batch, relabel)


class TargetsShifted(InjectedBug):
    """Targets taken from frames `t0+2 ... t0+R+1`: slicing `t0 + 1 + 1` instead of `t0 + 1`."""
    expected_kind = 'time offset'

    def batch(self, plan, keys):
        last = self.last_t0()
        shifted = self.served(plan, [WindowKey(k.sim, min(k.t0 + 1, last)) for k in keys])
        return {'initial_state': self.served(plan, keys)['initial_state'], 'targets': shifted['targets']}


class WindowsOffByOne(InjectedBug):
    """Every window starts one frame late: `t0 + 1` used as the window start (an off-by-one in `t0`)."""
    expected_kind = 'time offset'

    def batch(self, plan, keys):
        last = self.last_t0()
        return self.served(plan, [WindowKey(k.sim, min(k.t0 + 1, last)) for k in keys])


class RolloutShort(InjectedBug):
    """One target frame too few: `range(t0 + 1, t0 + R)` instead of `t0 + R + 1`."""
    expected_kind = 'structure'

    def transform(self, batch):
        return _map(batch, lambda key, t: t.time[:-1] if key == 'targets' else t)


class UpcastFloat64(InjectedBug):
    """Data silently upcast to float64 (e.g. `np.load` of data saved from Python floats)."""
    expected_kind = 'structure'

    def transform(self, batch):
        return _map(batch, lambda key, t: _rewrap(_native(t)[0].astype(np.float64), t.shape))


class DropLastPartial(InjectedBug):
    """The last, smaller batch of an epoch is dropped (`drop_last=True` left on)."""
    expected_kind = 'batch count'

    @classmethod
    def not_applicable(cls, frames, plan):
        if not plan.batches or len(plan.batches[-1]) == len(plan.batches[0]):
            return "the plan has no partial batch (the windows divide by data.batch_size)"
        return None

    def load_batches(self, plan):
        full = len(plan.batches[0]) if plan.batches else 0
        for keys in plan.batches:
            if len(keys) == full:
                yield self.batch(plan, keys)


class OwnShuffleOrder(InjectedBug):
    """The plan ignored: windows served in the pipeline's own shuffled order (same windows, other batches)."""
    expected_kind = 'reorder'

    def load_batches(self, plan):
        keys = plan.keys()
        order = np.random.default_rng([plan.seed, plan.epoch, 1]).permutation(len(keys))
        shuffled = [keys[i] for i in order]
        start = 0
        for batch in plan.batches:
            yield self.batch(plan, shuffled[start:start + len(batch)])
            start += len(batch)


class NormalisedTwice(InjectedBug):
    """Normalisation applied again to already-normalised data: x -> (x - mean) / std with the data's statistics."""
    expected_kind = 'value transform'

    def open(self, sims):
        super().open(sims)
        keys = tuple(self.inner.window_keys())
        frames = self.served(BatchPlan(0, 0, ()), keys)['initial_state']
        values = frames if isinstance(frames, dict) else {None: frames}
        self.stats = {name: (float(_native(t)[0].mean()), float(_native(t)[0].std())) for name, t in values.items()}

    def transform(self, batch):
        def normalise(name):
            mean, std = self.stats[name]
            return lambda key, t: _rewrap(((_native(t)[0] - mean) / std).astype(np.float32), t.shape)
        return {key: normalise(None)(key, value) if isinstance(value, Tensor) else
                {n: normalise(n)(key, v) for n, v in value.items()} for key, value in batch.items()}


class SlightDrift(InjectedBug):
    """Values off by a relative ~1e-6 (e.g. a unit conversion done in float64 and rounded back): numerical drift."""
    expected_kind = 'numerical drift'

    def transform(self, batch):
        # far below any physics, far above bitwise
        return _map(batch, lambda key, t: _rewrap((_native(t)[0].astype(np.float64) * (1 + 1e-6)).astype(np.float32), t.shape))


CATALOGUE: dict[str, type[InjectedBug]] = {
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
