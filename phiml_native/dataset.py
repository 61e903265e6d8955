"""The PhiML-native dataset: sliding windows over the cached sims. The window `(sim, t0)` is frame rows `t0 ... t0 + R`
of one sim's field. Loaded, all sims of a field share one array and a batch is one `np.take` of its windows' rows (large
windows: one `torch.stack`, on torch's threads); mapped, each sim is memory-mapped in its file and each window copied
from its map. Initial states and targets are two views of the gathered array. Avoided: PhiML indexing with a batch-type
index tensor (copies the whole dataset per batch), `math.wrap` per batch (its checks cost more than a small gather)."""
from __future__ import annotations

import functools
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
import torch
from phiml import math
from phiml.backend import choose_backend
from phiml.math._tensors import Dense  # math.wrap's class: built here with shapes made once per batch size
from phiml.math import Shape

from harness.config import MEMORY_MODES
from harness.errors import CacheError
from harness.pipeline import BatchPlan, WindowKey
from .data_manager import PhiMLDataManager, field_names

_TORCH = choose_backend(torch.zeros(0))
# Windows of at least this many bytes are copied by `torch.stack` of views (the copy dwarfs a view's cost); smaller
# ones by one `np.take`, which costs less per window but runs on one thread.
STACK_BYTES = 2 ** 20


class PhiMLDataset:
    """Sliding windows over the cached sims, served as float32 PhiML batches backed by torch.

    Attributes:
        memory: The mode that runs: `'load'` or `'map'` (`'auto'` resolved).
        arrays: Loaded: field name -> float32 array `(sim, time, *spatial, [vector])`, sims in the order of
            `sim_indices`. Batches are gathered from whatever array is stored here at the time (in mapped mode too).
        maps: Mapped: field name -> one read-only array `(time, frame values)` per sim, mapped in its file.
        shapes: Field name -> the PhiML shape of one sim's field `(time, *spatial, [vector])`.

    Args:
        data_manager: Where the `.npz` files are.
        sim_indices: Sims to serve, in order.
        rollout_steps: Target frames per window.
        memory: `'load'`, `'map'`, or `'auto'`: load when the cache files fit `memory_budget`, map otherwise.
        memory_budget: Fraction of the RAM the cache files may take for `'auto'` to load them.
        prefetch: Default of `iterate_batches`: build the next batch on a thread while the caller uses this one.
        cast_float32: Accept float16 and float64 caches and serve them cast to float32 (else they are refused).
    """

    def __init__(self, data_manager: PhiMLDataManager, sim_indices: Sequence[int], rollout_steps: int, *,
                 memory: str = 'auto', memory_budget: float = 0.5, prefetch: bool = True, cast_float32: bool = False):
        if not sim_indices:
            raise CacheError(f"{data_manager.cache_dir}: no sims to open (expected at least one sim index)")
        if memory not in MEMORY_MODES:
            raise ValueError(f"`memory` (={memory!r}) must be one of {MEMORY_MODES}")
        self.data_manager, self.sim_indices, self.rollout_steps = data_manager, list(sim_indices), rollout_steps
        self.prefetch, self.cast_float32 = prefetch, cast_float32
        self.memory = memory if memory != 'auto' else self._auto_mode(memory_budget)
        self.arrays, self.maps, self.shapes = {}, {}, {}
        self._load()
        self.n_frames = self.shapes[self.field_names[0]].get_size('time')
        if self.n_frames <= rollout_steps:
            raise CacheError(f"{data_manager.get_cached_path(self.sim_indices[0])}: {self.n_frames} frames per sim, "
                             f"but `rollout_steps` (={rollout_steps}) needs more than that")
        self._positions = {sim: position for position, sim in reversed(list(enumerate(self.sim_indices)))}
        self._run = np.arange(1 + rollout_steps)

    def _auto_mode(self, budget: float) -> str:
        """`'load'` where the cache files (estimated from the first: the sims of a cache are alike, or refused when
        opened) take at most `budget` of the RAM, else `'map'`."""
        try:
            cached = os.stat(self.data_manager.get_cached_path(self.sim_indices[0])).st_size * len(self.sim_indices)
        except OSError:  # missing: named when it is read
            cached = 0
        return 'load' if cached <= budget * os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') else 'map'

    def _load(self) -> None:
        """Reads (or maps) each sim once, validated by the data manager. Loaded, each sim after the first (which tells
        the sizes) is read straight into its slot of `arrays` where its dtype is float32."""
        first, mapped = self.data_manager.get_cached_path(self.sim_indices[0]), self.memory == 'map'
        for position, sim in enumerate(self.sim_indices):
            slots = {name: array[position] for name, array in self.arrays.items()}
            data = self.data_manager.load_cache(sim, mmap=mapped, allow_any_float=self.cast_float32, out=slots)
            signature = {name: data[name].shape for name in field_names(data)}
            if not self.shapes:
                self.shapes = signature
                self.maps = {name: [] for name in signature} if mapped else {}
                self.arrays = {} if mapped else {name: np.empty((len(self.sim_indices), *shape.sizes), np.float32)
                                                 for name, shape in signature.items()}
                slots = {name: array[position] for name, array in self.arrays.items()}
            elif signature != self.shapes:
                raise CacheError(f"{self.data_manager.get_cached_path(sim)}: fields/shape {list(signature.items())} "
                                 f"differ from {first.name} {list(self.shapes.items())}; one cache must hold sims of one "
                                 f"resolution and one set of fields")
            for name, shape in signature.items():
                if getattr(data[name], '_native', None) is slots.get(name, ()):  # the reader filled the slot
                    continue
                with math.precision(data[name].dtype.bits if self.cast_float32 else 32):  # cast on copy or gather
                    values = data[name].numpy(shape.names)  # the stored array itself (mapped: its map) unless compact
                if mapped:
                    self.maps[name].append(values.reshape(shape.get_size('time'), -1))
                else:
                    np.copyto(slots[name], values)

    @property
    def field_names(self) -> list[str]:
        return sorted(self.shapes)

    @property
    def windows_per_sim(self) -> int:
        return self.n_frames - self.rollout_steps

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 data gathered from (all fields, all sims), loaded or mapped."""
        return sum(shape.volume * 4 for shape in self.shapes.values()) * len(self.sim_indices)

    def __len__(self) -> int:
        return len(self.sim_indices) * self.windows_per_sim

    def window_keys(self) -> list[WindowKey]:
        return [WindowKey(sim, t0) for sim in self.sim_indices for t0 in range(self.windows_per_sim)]

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
        keys = self.window_keys()  # the epoch's order is drawn from `(seed, epoch)` only
        rows = self.rows_of([keys[i] for i in np.random.default_rng([seed, epoch]).permutation(len(keys))] if shuffle
                            else keys)
        parts = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]
        return _prefetched(self._gather_rows, parts) if (self.prefetch if prefetch is None else prefetch) else \
            map(self._gather_rows, parts)

    def iterate_plan(self, plan: BatchPlan) -> Iterator[dict]:
        """One batch per batch of window keys in `plan` (all keys are looked up and checked before the first batch)."""
        rows, sizes = self.rows_of(plan.keys()), [len(keys) for keys in plan.batches]
        return map(self._gather_rows, np.split(rows, np.cumsum(sizes)[:-1]) if sizes else [])

    def gather(self, keys: Sequence[WindowKey]) -> dict:
        return self._gather_rows(self.rows_of(keys))  # the batch of the windows `keys` (errors: see `rows_of`)

    def rows_of(self, keys: Sequence[WindowKey]) -> np.ndarray:
        """The frame row of each window's initial state, `position(sim) * n_frames + t0`, as int64.

        Raises:
            KeyError: a key's sim is not served by this dataset, or its `t0` has no full window.
        """
        count = len(keys)
        pairs = np.fromiter(itertools.chain.from_iterable(keys), np.int64, 2 * count).reshape(count, 2)
        if count and (pairs[:, 1].min() < 0 or pairs[:, 1].max() >= self.windows_per_sim):
            raise KeyError(f"t0 out of range [0, {self.windows_per_sim}) in {list(keys)}")
        try:
            positions = np.fromiter(map(self._positions.__getitem__, pairs[:, 0].tolist()), np.int64, count)
        except KeyError as err:
            raise KeyError(f"sim {err.args[0]} is not among the dataset's sims {self.sim_indices}") from None
        return positions * self.n_frames + pairs[:, 1]

    def _gather_rows(self, rows: np.ndarray) -> dict:
        """The batch of the windows starting at the frame rows `rows` (from `rows_of`, so in range): float32 torch
        views of one fresh array per field, or dicts of those keyed by field name."""
        count, run = len(rows), len(self._run)
        initial, targets = {}, {}
        for name in self.field_names:
            initial_shape, targets_shape, frame = _batch_shapes(self.shapes[name], self.rollout_steps, count)
            if name in self.arrays:
                table = self.arrays[name].reshape(len(self.sim_indices) * self.n_frames, -1)
                if count and table.shape[1] * table.itemsize * run >= STACK_BYTES and table.flags.writeable:
                    source = torch.from_numpy(table)  # on torch's intra-op threads, as legacy's collate copies
                    windows = torch.stack([source[row:row + run] for row in rows.tolist()]).numpy()
                else:
                    windows = np.take(table, (rows[:, None] + self._run).ravel(), 0, mode='clip')
            else:  # mapped: each window copied from its sim's map, cast to float32 (`cast_float32`)
                maps, (positions, starts) = self.maps[name], divmod(rows, self.n_frames)
                windows = np.stack([maps[p][t:t + run] for p, t in zip(positions.tolist(), starts.tolist())],
                                   dtype=np.float32) if count else np.empty((0, run, 1), np.float32)
            windows = windows.reshape(count, run, *frame)
            initial[name] = Dense(torch.from_numpy(windows[:, 0]), initial_shape.names, initial_shape, _TORCH)
            targets[name] = Dense(torch.from_numpy(windows[:, 1:]), targets_shape.names, targets_shape, _TORCH)
        single = len(initial) == 1
        return {'initial_state': initial.popitem()[1] if single else initial,
                'targets': targets.popitem()[1] if single else targets}


@functools.lru_cache(maxsize=256)
def _batch_shapes(shape: Shape, rollout_steps: int, count: int) -> tuple[Shape, Shape, tuple]:
    """Shapes of the initial states and targets of `count` windows over a field of `shape`; sizes of one frame."""
    frame, lead = shape.without('time'), math.batch(batch=count)
    return math.concat_shapes(lead, frame), math.concat_shapes(lead, math.batch(time=rollout_steps), frame), frame.sizes


def _prefetched(build, parts: list) -> Iterator[dict]:
    """`map(build, parts)`, each result built on a worker thread while the caller holds the one before. At most one
    batch waits; the generator keeps no reference to a batch it has handed out."""
    with ThreadPoolExecutor(1, thread_name_prefix='phiml-prefetch') as pool:
        pending = pool.submit(build, parts[0]) if parts else None
        for part in parts[1:] + [None]:
            ready = [pending.result()]
            pending = pool.submit(build, part) if part is not None else None
            yield ready.pop()


def create_phiml(config, sim_indices: Sequence[int], cache_dir) -> PhiMLDataset:
    """The migration plan's factory: the native dataset (no DataLoader wrapper) over `sim_indices` of the cache in
    `cache_dir` (a `harness.config.ScenarioConfig`), loaded or mapped and prefetching as `config.data` says."""
    data = config.data
    return PhiMLDataset(PhiMLDataManager(cache_dir), sim_indices, data.rollout_steps, memory=data.memory,
                        memory_budget=data.memory_budget, prefetch=data.prefetch, cast_float32=data.cast_float32)
