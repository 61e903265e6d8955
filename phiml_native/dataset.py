"""The PhiML-native dataset: every sim read once into one array per field, each batch gathered with one copy per field.

The migration plan's sketch (`phiml_native.naive`) loads a whole sim file per sample and stacks samples one by one;
that is 60-70x slower than the legacy path (`pytest --benchmark-only`). Here all sims of a field live in one C-contiguous array
`(sim, time, *spatial, [vector])`, seen as a table of frame rows `(sim * n_frames + t, frame)`. A window `(sim, t0)` is
the run of rows `r ... r + R` with `r = sim * n_frames + t0`: its initial state and its `R` targets, adjacent in memory.
A batch is one gather per field of those runs into a fresh `(batch, 1 + R, *frame)` array; the initial states and
the targets are two views of it, which `torch.from_numpy` and a cached PhiML shape wrap without another copy. The
network then sees that very memory (`math.native_call` only permutes dims).

One gather of whole windows beats two (initial rows, then target rows) by 15-40 % on a 2-core VM: each window's rows
are read once, in order, and one array is allocated instead of two. Each window is one copy (`phiml_native.gather`,
compiled; `np.take` where that is not built); batches of a few MB and more are shared out over the CPUs, and those of
4 MiB and more are written with streaming stores (1.2-1.3x faster for 10.5 MB batches). The arrays are placed for the
copy into them from the page cache, without which a copy could run 10x slower (`phiml_native.aligned`).

What is deliberately avoided: PhiML indexing with a batch-type index tensor (copies the whole dataset per batch),
`math.wrap` per batch (~50-100 µs of shape checks, more than the gather of a 32x32 batch), torch's `index_select`
(slower than `np.take` here, and its OpenMP threads spin), and reused output buffers (a consumer holding a batch would
see it overwritten).
"""
from __future__ import annotations

import itertools
import logging
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from phiml import math
from phiml.backend import choose_backend
from phiml.math import Shape

from harness.errors import CacheError
from harness.pipeline import BatchPlan, WindowKey
from .data_manager import PhiMLDataManager
from .tensors import dense

logger = logging.getLogger(__name__)
_TORCH = choose_backend(torch.zeros(0))


class PhiMLDataset:
    """Sliding windows over the cached sims, served as PhiML batches backed by torch.

    Attributes:
        arrays: Field name -> float32 array `(sim, time, *spatial, [vector])`, sims in the order of `sim_indices`.
            Batches are gathered from whatever array is stored here at the time.
        shapes: Field name -> the PhiML shape of one sim's field `(time, *spatial, [vector])`.

    Args:
        data_manager: Where the `.npz` files are.
        sim_indices: Sims to serve, in order.
        rollout_steps: Target frames per window.
    """

    def __init__(self, data_manager: PhiMLDataManager, sim_indices: Sequence[int], rollout_steps: int):
        if not sim_indices:
            raise CacheError(f"{data_manager.cache_dir}: no sims to open (expected at least one sim index)")
        self.data_manager = data_manager
        self.sim_indices = list(sim_indices)
        self.rollout_steps = rollout_steps
        self.arrays: dict[str, np.ndarray] = {}
        self.shapes: dict[str, Shape] = {}
        self._load()
        self.n_frames = next(iter(self.arrays.values())).shape[1]
        if self.n_frames <= rollout_steps:
            raise CacheError(f"{data_manager.get_cached_path(self.sim_indices[0])}: {self.n_frames} frames per sim, "
                             f"but `rollout_steps` (={rollout_steps}) needs more than that")
        self._sim_order = np.argsort(np.asarray(self.sim_indices, np.int64), kind='stable')
        self._sorted_sims = np.asarray(self.sim_indices, np.int64)[self._sim_order]
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # field -> (array, its frame-row view)
        self._run = np.arange(1 + rollout_steps)
        self._batch_shapes: dict[tuple[str, int], _BatchShapes] = {}

    def _load(self) -> None:
        """Reads each sim once, validated by the data manager, straight into its slot of `arrays` (one copy, page cache
        -> dataset array, as `np.load` makes); the first sim, which tells the sizes, is copied into its slot."""
        first = self.sim_indices[0]
        expected = None
        for position, sim in enumerate(self.sim_indices):
            slots = {name: array[position] for name, array in self.arrays.items()}
            data = self.data_manager.load_cache(sim, out=slots)
            fields = sorted(data['metadata']['fields'])
            signature = [(name, data[name].shape) for name in fields]
            if expected is None:
                if not fields:
                    raise CacheError(f"{self.data_manager.get_cached_path(first)}: no fields listed in its metadata")
                expected = signature
                self.shapes = dict(signature)
                self.arrays = {name: np.empty((len(self.sim_indices), *shape.sizes), np.float32) for name, shape in signature}
                slots = {name: array[position] for name, array in self.arrays.items()}
            elif signature != expected:
                raise CacheError(f"{self.data_manager.get_cached_path(sim)}: fields/shape {signature} differ from "
                                 f"{self.data_manager.get_cached_path(first).name} {expected}; one cache must hold "
                                 f"sims of one resolution and one set of fields")
            for name in fields:  # the reader filled the slot itself unless the field is small or compact
                values = data[name].numpy(self.shapes[name].names)
                if not np.may_share_memory(values, slots[name]):
                    np.copyto(slots[name], values, casting='no')

    @property
    def field_names(self) -> list[str]:
        return sorted(self.arrays)

    @property
    def windows_per_sim(self) -> int:
        return self.n_frames - self.rollout_steps

    @property
    def nbytes(self) -> int:
        """Bytes of the data held for gathering (all fields, all sims)."""
        return sum(array.nbytes for array in self.arrays.values())

    def __len__(self) -> int:
        return len(self.sim_indices) * self.windows_per_sim

    def window_keys(self) -> list[WindowKey]:
        return [WindowKey(sim, t0) for sim in self.sim_indices for t0 in range(self.windows_per_sim)]

    def epoch_order(self, *, seed: int, epoch: int = 0, shuffle: bool = True) -> list[WindowKey]:
        """The window order of one epoch of `iterate_batches`, drawn from `(seed, epoch)` only."""
        keys = self.window_keys()
        if not shuffle:
            return keys
        order = np.random.default_rng([seed, epoch]).permutation(len(keys))
        return [keys[i] for i in order]

    def iterate_batches(self, batch_size: int, shuffle: bool = True, *, seed: int = 0, epoch: int = 0
                        ) -> Iterator[dict]:
        """Yields `{'initial_state': Tensor(batch, *spatial, vector), 'targets': Tensor(batch, time, *spatial, vector)}`.

        Args:
            batch_size: Windows per batch; the last batch may be smaller.
            shuffle: Shuffle the windows with a generator seeded by `(seed, epoch)`.
        """
        if batch_size < 1:
            raise ValueError(f"`batch_size` (={batch_size}) must be >= 1")
        keys = self.epoch_order(seed=seed, epoch=epoch, shuffle=shuffle)
        return self._iterate_rows(self.rows_of(keys), range(0, len(keys), batch_size), batch_size)

    def iterate_plan(self, plan: BatchPlan) -> Iterator[dict]:
        """One batch per batch of window keys in `plan` (all keys are looked up and checked before the first batch)."""
        sizes = [len(keys) for keys in plan.batches]
        rows = self.rows_of(plan.keys())
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int) if sizes else []
        return (self._gather_rows(rows[start:start + size]) for start, size in zip(starts, sizes))

    def _iterate_rows(self, rows: np.ndarray, starts: range, batch_size: int) -> Iterator[dict]:
        for start in starts:
            yield self._gather_rows(rows[start:start + batch_size])

    def gather(self, keys: Sequence[WindowKey]) -> dict:
        """The batch of the windows `keys`.

        Raises:
            KeyError: a key's sim is not served by this dataset, or its `t0` has no full window.
        """
        return self._gather_rows(self.rows_of(keys))

    def rows_of(self, keys: Sequence[WindowKey]) -> np.ndarray:
        """The frame row of each window's initial state, `position(sim) * n_frames + t0`, as int64.

        Raises:
            KeyError: a key's sim is not served by this dataset, or its `t0` has no full window.
        """
        count = len(keys)
        pairs = np.fromiter(itertools.chain.from_iterable(keys), np.int64, 2 * count).reshape(count, 2)
        sims, t0 = pairs[:, 0], pairs[:, 1]
        slots = np.searchsorted(self._sorted_sims, sims).clip(max=len(self._sorted_sims) - 1)
        unknown = self._sorted_sims[slots] != sims
        if unknown.any():
            raise KeyError(f"sim {int(sims[unknown.argmax()])} is not among the dataset's sims {self.sim_indices}")
        if count and (t0.min() < 0 or t0.max() >= self.windows_per_sim):
            raise KeyError(f"t0 out of range [0, {self.windows_per_sim}) in {list(keys)}")
        return self._sim_order[slots] * self.n_frames + t0

    def _gather_rows(self, rows: np.ndarray) -> dict:
        """The batch whose initial states are the frame rows `rows` (from `rows_of`, so known to be in range).

        Returns:
            `{'initial_state': Tensor(batch, *spatial, [vector]), 'targets': Tensor(batch, time, *spatial, [vector])}`,
            float32, backed by torch views of one fresh array per field, or dicts of those keyed by field name.
        """
        count = len(rows)
        initial, targets = {}, {}
        for name, array in self.arrays.items():
            shapes = self._shapes_for(name, count)
            table = self._frame_rows(name, array)
            windows = np.take(table, (rows[:, None] + self._run).ravel(), 0, mode='clip').reshape(shapes.windows)
            initial[name] = dense(torch.from_numpy(windows[:, 0]), shapes.initial, _TORCH, shapes.initial_sizes)
            targets[name] = dense(torch.from_numpy(windows[:, 1:]), shapes.targets, _TORCH, shapes.targets_sizes)
        if len(initial) == 1:
            name = next(iter(initial))
            return {'initial_state': initial[name], 'targets': targets[name]}
        return {'initial_state': initial, 'targets': targets}

    def _frame_rows(self, name: str, array: np.ndarray) -> np.ndarray:
        """`array` as a table of frames `(sim * time, frame values)`, a view rebuilt only when `arrays` is replaced."""
        cached = self._rows.get(name)
        if cached is None or cached[0] is not array:
            if array.shape[:2] != (len(self.sim_indices), self.n_frames) or array.dtype != np.float32:
                raise ValueError(f"`arrays[{name!r}]` has shape {array.shape} and dtype {array.dtype}, expected "
                                 f"({len(self.sim_indices)}, {self.n_frames}, ...) float32")
            rows = np.ascontiguousarray(array).reshape(array.shape[0] * array.shape[1], -1)
            cached = (array, rows)
            self._rows[name] = cached
        return cached[1]

    def _shapes_for(self, name: str, count: int) -> _BatchShapes:
        """The shapes of a batch of `count` windows of field `name`, built once per batch size."""
        key = (name, count)
        if key not in self._batch_shapes:
            frame = self.shapes[name].without('time')
            initial = math.concat_shapes(math.batch(batch=count), frame)
            targets = math.concat_shapes(math.batch(batch=count), math.batch(time=self.rollout_steps), frame)
            self._batch_shapes[key] = _BatchShapes(initial, initial.sizes, targets, targets.sizes,
                                                   (count, 1 + self.rollout_steps, *frame.sizes))
        return self._batch_shapes[key]


class _BatchShapes(NamedTuple):
    """The shapes of one batch size: of the initial states and targets (with their sizes, which PhiML would build anew
    on each access), and `windows`, the sizes `(batch, 1 + rollout_steps, *frame)` of the array both are views of."""
    initial: Shape
    initial_sizes: tuple
    targets: Shape
    targets_sizes: tuple
    windows: tuple
