"""The migration plan's naive batch loader: a reference for benchmarks and tests, not part of the native pipeline.

The plan sketched the native dataset as: for each sample, load its sim's cache file (`PhiMLDataManager.load_cache`,
the safe stand-in for `phiml.math.load`), slice the window out with PhiML indexing, and build each batch by stacking
the samples one by one with `phiml.math.stack`. Every sample re-reads a whole file, so one epoch reads the cache
`windows_per_sim` times over, and every batch pays PhiML's per-sample stacking. `PhiMLDataset` is what replaced it;
`tests/benchmarks/test_stages.py` times the two side by side so the table shows what the design avoids.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from phiml import math
from phiml.backend.torch import TORCH
from phiml.math import batch

from harness.pipeline import BatchPlan, WindowKey
from phiml_native import PhiMLDataManager


class NaiveWindowLoader:
    """Loads each window from its file and stacks windows sample by sample (the plan's sketch, kept for comparison).

    Args:
        data_manager: Where the `.npz` files are.
        rollout_steps: Target frames per window.
    """

    def __init__(self, data_manager: PhiMLDataManager, rollout_steps: int):
        self.data_manager = data_manager
        self.rollout_steps = rollout_steps

    def sample(self, key: WindowKey) -> dict:
        """One window, read from its file: `{'initial_state': (x, y, vector), 'targets': (time, x, y, vector)}` per field."""
        data = self.data_manager.load_cache(key.sim)
        fields = sorted(data['metadata']['fields'])
        window = {name: data[name].time[key.t0:key.t0 + 1 + self.rollout_steps] for name in fields}
        return {'initial_state': {name: w.time[0] for name, w in window.items()},
                'targets': {name: w.time[1:] for name, w in window.items()}}

    def batch(self, keys: Sequence[WindowKey]) -> dict:
        """The batch of `keys`, stacked along a new `batch` dim and handed over as torch tensors (the data contract)."""
        samples = [self.sample(key) for key in keys]
        result = {}
        for part in ('initial_state', 'targets'):
            names = sorted(samples[0][part])
            stacked = {name: _stack([s[part][name] for s in samples]) for name in names}
            result[part] = stacked[names[0]] if len(names) == 1 else stacked
        return result

    def iterate_plan(self, plan: BatchPlan) -> Iterator[dict]:
        """One batch per batch of window keys in `plan`, in order."""
        for keys in plan.batches:
            yield self.batch(keys)


def _stack(samples: list) -> math.Tensor:
    """`math.stack` along `batch`, with `batch` first (phiml puts it last for a single sample), as a torch tensor."""
    stacked = math.stack(samples, batch('batch'))
    shape = stacked.shape.only(['batch', *samples[0].shape.names], reorder=True)
    return math.convert(math.wrap(stacked.native(shape.names), shape), TORCH)
