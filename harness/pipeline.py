"""The one interface both data pipelines implement, and the plain types they exchange with the harness.

Data contract (see DESIGN.md): a window is keyed by `(sim, t0)`; its `initial_state` is frame `t0` and its `targets`
are frames `t0+1 ... t0+rollout_steps`. A batch handed to the model is

    {'initial_state': Tensor(batch, x, y, vector), 'targets': Tensor(batch, time, x, y, vector)}

float32 with item names `vector='x,y'`; with several fields per simulation each value is a dict keyed by field name.
"""
from __future__ import annotations

import abc
import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping, NamedTuple, Sequence, Union

from phiml.math import Tensor

FieldTensors = Union[Tensor, dict]
Batch = dict  # {'initial_state': FieldTensors, 'targets': FieldTensors}
BATCH_KEYS = ('initial_state', 'targets')


class WindowKey(NamedTuple):
    """Identifies one training window: simulation index and the frame index of its initial state."""
    sim: int
    t0: int

    def __str__(self) -> str:
        return f"(sim={self.sim}, t0={self.t0})"


@dataclass(frozen=True)
class BatchPlan:
    """The batches of window keys of one epoch, derived by the harness from `(seed, epoch)`.

    Both pipelines are driven by the same plan when they are compared.
    """
    seed: int
    epoch: int
    batches: tuple[tuple[WindowKey, ...], ...]

    @property
    def n_windows(self) -> int:
        return sum(len(b) for b in self.batches)

    def keys(self) -> list[WindowKey]:
        return [key for batch in self.batches for key in batch]

    def __len__(self) -> int:
        return len(self.batches)


class AbstractPipeline(abc.ABC):
    """A data pipeline from simulated fields to model-ready PhiML batches.

    Stages the harness times: `write_cache`, `open`, `load_batches`, `to_phiml`, and one step of `train`.

    Args:
        cache_dir: Folder holding this pipeline's cache files, created on first write.
        rollout_steps: Target frames per window.
    """
    name: ClassVar[str]
    file_suffix: ClassVar[str]

    def __init__(self, cache_dir: Path, rollout_steps: int):
        self.cache_dir = Path(cache_dir)
        self.rollout_steps = rollout_steps

    @abc.abstractmethod
    def write_cache(self, sim: int, fields: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
        """Converts one simulation's PhiFlow fields (dims `time` + spatial [+ `vector`]) its own way and caches them."""

    @abc.abstractmethod
    def open(self, sims: Sequence[int]) -> None:
        """Reads and validates the cache of `sims`; afterwards windows of these sims can be loaded."""

    @abc.abstractmethod
    def window_keys(self) -> list[WindowKey]:
        """This pipeline's own enumeration of the windows of the opened sims."""

    @abc.abstractmethod
    def load_batches(self, plan: BatchPlan) -> Iterator[Any]:
        """Yields one raw batch (this pipeline's native format) per batch of `plan`, in order."""

    @abc.abstractmethod
    def to_phiml(self, raw: Any) -> Batch:
        """Converts a raw batch to the model's PhiML batch (identity for the native pipeline)."""

    @abc.abstractmethod
    def own_epoch(self, seed: int, epoch: int, batch_size: int) -> list[list[WindowKey]]:
        """The window keys, batch by batch, that this pipeline's own everyday shuffling serves in `epoch`."""

    @abc.abstractmethod
    def train(self, plans: Sequence[BatchPlan], network, optimizer) -> list[float]:
        """Trains `network` on the batches of `plans` in order; returns the loss of every step."""

    def batches(self, plan: BatchPlan) -> Iterator[Batch]:
        """PhiML batches for `plan`: `load_batches` followed by `to_phiml` (no reference kept to a batch handed out)."""
        return map(self.to_phiml, self.load_batches(plan))


def drain(batches: Iterable[Any]) -> None:
    """Builds every batch of `batches` and lets each go before the next is built: one epoch of batch loading as the
    benchmarks time and measure it (a `for` loop would hold the previous batch while building the next)."""
    collections.deque(batches, maxlen=0)


Pipeline = AbstractPipeline
