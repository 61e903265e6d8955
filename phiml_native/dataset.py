"""The PhiML-native dataset: sliding windows over the cached sims, each batch one `np.take` per field.

A field of one sim is a table of frame rows `(time, frame values)`; the window `(sim, t0)` is rows `t0 ... t0 + R`,
adjacent in memory. Loaded (`memory='load'`), all sims of a field live in one array `(sim, time, ...)` and a batch is
one `np.take` of its windows' rows into a fresh array; mapped (`'map'`), each sim's stored array is memory-mapped in
its file and each window is copied from its map, so an epoch's anonymous memory does not grow with the dataset. The
initial states and targets are two views of the gathered array, wrapped for torch without another copy.
Avoided: PhiML indexing with a batch-type index tensor (copies the whole dataset per batch), `math.wrap` per batch
(its shape checks cost more than a small gather) and reused output buffers (a consumer holding a batch would see it
overwritten).
"""
from __future__ import annotations

import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import psutil
import torch
from phiml import math
from phiml.backend import choose_backend
from phiml.math._tensors import Dense  # math.wrap's class: built here with a shape made once per batch size
from phiml.math import Shape

from harness.config import MEMORY_MODES
from harness.errors import CacheError
from harness.pipeline import BatchPlan, WindowKey
from .data_manager import PhiMLDataManager

logger = logging.getLogger(__name__)
_TORCH = choose_backend(torch.zeros(0))


class PhiMLDataset:
    """Sliding windows over the cached sims, served as PhiML batches backed by torch.

    Attributes:
        memory: The mode that runs: `'load'` or `'map'` (`'auto'` resolved).
        arrays: Loaded mode: field name -> float32 array `(sim, time, *spatial, [vector])`, sims in the order of
            `sim_indices`. Batches are gathered from whatever array is stored here at the time (in mapped mode too,
            for a field stored here).
        maps: Mapped mode: field name -> one read-only array `(time, *spatial, [vector])` per sim, mapped in its file.
        shapes: Field name -> the PhiML shape of one sim's field `(time, *spatial, [vector])`.

    Args:
        data_manager: Where the `.npz` files are.
        sim_indices: Sims to serve, in order.
        rollout_steps: Target frames per window.
        memory: `'load'`, `'map'`, or `'auto'`: load when the cache files fit `memory_budget`, map otherwise.
        memory_budget: Fraction of the RAM the cache files may take for `'auto'` to load them.
        prefetch: Default of `iterate_batches`: build the next batch on a thread while the caller uses this one.
    """

    def __init__(self, data_manager: PhiMLDataManager, sim_indices: Sequence[int], rollout_steps: int, *,
                 memory: str = 'auto', memory_budget: float = 0.5, prefetch: bool = True):
        if not sim_indices:
            raise CacheError(f"{data_manager.cache_dir}: no sims to open (expected at least one sim index)")
        if memory not in MEMORY_MODES:
            raise ValueError(f"`memory` (={memory!r}) must be one of {MEMORY_MODES}")
        self.data_manager = data_manager
        self.sim_indices = list(sim_indices)
        self.rollout_steps = rollout_steps
        self.prefetch = prefetch
        self.memory = memory if memory != 'auto' else self._auto_mode(memory_budget)
        self.arrays: dict[str, np.ndarray] = {}
        self.maps: dict[str, list[np.ndarray]] = {}
        self.shapes: dict[str, Shape] = {}
        self._load()
        self.n_frames = self.shapes[self.field_names[0]].get_size('time')
        if self.n_frames <= rollout_steps:
            raise CacheError(f"{data_manager.get_cached_path(self.sim_indices[0])}: {self.n_frames} frames per sim, "
                             f"but `rollout_steps` (={rollout_steps}) needs more than that")
        self._sim_order = np.argsort(np.asarray(self.sim_indices, np.int64), kind='stable')
        self._sorted_sims = np.asarray(self.sim_indices, np.int64)[self._sim_order]
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # field -> (array, its frame-row view)
        self._run = np.arange(1 + rollout_steps)
        self._batch_shapes: dict[tuple[str, int], _BatchShapes] = {}

    def _auto_mode(self, budget: float) -> str:
        cached = sum(os.path.getsize(self.data_manager.get_cached_path(sim)) for sim in self.sim_indices
                     if os.path.isfile(self.data_manager.get_cached_path(sim)))
        mode = 'load' if cached <= budget * psutil.virtual_memory().total else 'map'
        logger.debug("native dataset: %.3g GB of cache files, budget %.3g of the RAM: %s", cached / 1e9, budget, mode)
        return mode

    def _load(self) -> None:
        """Reads (or maps) each sim once, validated by the data manager. Loaded, each sim is read straight into its
        slot of `arrays` (one copy, page cache -> dataset array); the first sim, which tells the sizes, is copied."""
        first, expected, mapped = self.sim_indices[0], None, self.memory == 'map'
        for position, sim in enumerate(self.sim_indices):
            slots = {name: array[position] for name, array in self.arrays.items()}
            data = self.data_manager.load_cache(sim, mmap=mapped, out=slots)
            fields = sorted(data['metadata']['fields'])
            signature = [(name, data[name].shape) for name in fields]
            if expected is None:
                if not fields:
                    raise CacheError(f"{self.data_manager.get_cached_path(first)}: no fields listed in its metadata")
                expected, self.shapes = signature, dict(signature)
                if mapped:
                    self.maps = {name: [] for name in fields}
                else:
                    self.arrays = {name: np.empty((len(self.sim_indices), *shape.sizes), np.float32)
                                   for name, shape in signature}
                    slots = {name: array[position] for name, array in self.arrays.items()}
            elif signature != expected:
                raise CacheError(f"{self.data_manager.get_cached_path(sim)}: fields/shape {signature} differ from "
                                 f"{self.data_manager.get_cached_path(first).name} {expected}; one cache must hold "
                                 f"sims of one resolution and one set of fields")
            for name in fields:
                values = data[name].numpy(self.shapes[name].names)  # the stored array itself unless it is compact
                if mapped:
                    self.maps[name].append(values.reshape(self.shapes[name].get_size('time'), -1))
                elif not np.may_share_memory(values, slots[name]):  # the reader filled the slot unless it is small
                    np.copyto(slots[name], values, casting='no')

    @property
    def field_names(self) -> list[str]:
        return sorted(self.shapes)

    @property
    def windows_per_sim(self) -> int:
        return self.n_frames - self.rollout_steps

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame of all fields together."""
        return sum(shape.without('time').volume * 4 for shape in self.shapes.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the data gathered from (all fields, all sims), loaded or mapped."""
        return self.frame_bytes * self.n_frames * len(self.sim_indices)

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

    def iterate_batches(self, batch_size: int, shuffle: bool = True, *, seed: int = 0, epoch: int = 0,
                        prefetch: bool | None = None) -> Iterator[dict]:
        """Yields `{'initial_state': Tensor(batch, *spatial, vector), 'targets': Tensor(batch, time, *spatial, vector)}`.

        Args:
            batch_size: Windows per batch; the last batch may be smaller.
            shuffle: Shuffle the windows with a generator seeded by `(seed, epoch)`.
            prefetch: Build the next batch on a thread while the caller uses this one (default: `self.prefetch`);
                the batches are the same either way.
        """
        if batch_size < 1:
            raise ValueError(f"`batch_size` (={batch_size}) must be >= 1")
        rows = self.rows_of(self.epoch_order(seed=seed, epoch=epoch, shuffle=shuffle))
        parts = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]
        return _prefetched(self._gather_rows, parts) if (self.prefetch if prefetch is None else prefetch) else \
            map(self._gather_rows, parts)

    def iterate_plan(self, plan: BatchPlan) -> Iterator[dict]:
        """One batch per batch of window keys in `plan` (all keys are looked up and checked before the first batch)."""
        sizes = [len(keys) for keys in plan.batches]
        rows = self.rows_of(plan.keys())
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int) if sizes else []
        return (self._gather_rows(rows[start:start + size]) for start, size in zip(starts, sizes))

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
        for name in self.field_names:
            shapes = self._shapes_for(name, count)
            if name in self.arrays:
                table = self._frame_rows(name, self.arrays[name])
                windows = np.take(table, (rows[:, None] + self._run).ravel(), 0, mode='clip').reshape(shapes.windows)
            else:
                windows = np.empty(shapes.windows, np.float32)
                flat, sims, run = windows.reshape(count, len(self._run), -1), self.maps[name], len(self._run)
                for i, (position, t0) in enumerate(zip(*divmod(rows, self.n_frames))):
                    flat[i] = sims[position][t0:t0 + run]
            initial[name] = Dense(torch.from_numpy(windows[:, 0]), shapes.initial.names, shapes.initial, _TORCH)
            targets[name] = Dense(torch.from_numpy(windows[:, 1:]), shapes.targets.names, shapes.targets, _TORCH)
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
            cached = (array, np.ascontiguousarray(array).reshape(array.shape[0] * array.shape[1], -1))
            self._rows[name] = cached
        return cached[1]

    def _shapes_for(self, name: str, count: int) -> _BatchShapes:
        """The shapes of a batch of `count` windows of field `name`, built once per batch size."""
        key = (name, count)
        if key not in self._batch_shapes:
            frame = self.shapes[name].without('time')
            initial = math.concat_shapes(math.batch(batch=count), frame)
            targets = math.concat_shapes(math.batch(batch=count), math.batch(time=self.rollout_steps), frame)
            self._batch_shapes[key] = _BatchShapes(initial, targets, (count, 1 + self.rollout_steps, *frame.sizes))
        return self._batch_shapes[key]


class _BatchShapes(NamedTuple):
    """The shapes of one batch size: of the initial states, of the targets, and `windows`, the sizes
    `(batch, 1 + rollout_steps, *frame)` of the array both are views of."""
    initial: Shape
    targets: Shape
    windows: tuple


def _prefetched(build, parts: list) -> Iterator[dict]:
    """`map(build, parts)`, each result built on a worker thread while the caller holds the one before. At most one
    batch waits; the generator keeps no reference to a batch it has handed out."""
    with ThreadPoolExecutor(1, thread_name_prefix='phiml-prefetch') as pool:
        pending = pool.submit(build, parts[0]) if parts else None
        for part in parts[1:] + [None]:
            ready = [pending.result()]
            pending = pool.submit(build, part) if part is not None else None
            yield ready.pop()
