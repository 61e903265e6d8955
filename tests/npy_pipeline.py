"""A third pipeline, written against `harness.pipeline.AbstractPipeline` alone, that shares no code with `legacy/` or
`phiml_native/`: it proves that the harness judges any pipeline class (`--native tests.npy_pipeline:NpyPipeline`).

Cache: one `traj_NNNNN.npz` per sim written by `numpy.savez` (stored uncompressed, no pickles), one member per field
in the layout `(time, *spatial, [vector])` and two JSON strings: `__metadata__` (the metadata as given) and
`__layout__` (per field its dims and `vector` item names). Batches are gathered with numpy fancy indexing from one
`(sim, time, *spatial, [vector])` array per field and wrapped as PhiML tensors (torch views, no copy) in `to_phiml`.
Its everyday loop: a numpy permutation per epoch from `(seed, epoch)`; its trainer calls `phiml.nn.update_weights`
with the shared rollout loss.

`Incomplete` is a class that forgets most of the interface, for the tests of `load_pipeline`'s refusal.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from phiml import math, nn
from phiml.math import Tensor, batch, channel, spatial

from harness import model
from harness.atomic import atomic_path
from harness.errors import CacheError
from harness.pipeline import AbstractPipeline, Batch, BatchPlan, FieldLayout, WindowKey

METADATA, LAYOUT = '__metadata__', '__layout__'
FLOATS = ('float16', 'float32', 'float64')
SPATIAL = ('x', 'y', 'z')


class NpyPipeline(AbstractPipeline):
    """Plain numpy `.npz` files -> one array per field -> numpy fancy indexing -> PhiML batches."""
    name = 'npy'
    file_suffix = '.npz'

    def __init__(self, cache_dir: Path, rollout_steps: int):
        super().__init__(cache_dir, rollout_steps)
        self._data: dict[str, np.ndarray] = {}   # field -> (sim, time, *spatial, [vector]) float32
        self._layout: dict[str, dict] = {}
        self._row: dict[int, int] = {}           # sim -> position along the first axis of `_data`
        self._windows = 0

    # --- files -------------------------------------------------------------------------------------------------

    @classmethod
    def file_name(cls, sim: int) -> str:
        return f"traj_{sim:05d}{cls.file_suffix}"

    @classmethod
    def sim_of_file(cls, name: str) -> int | None:
        digits = name.removeprefix('traj_').removesuffix(cls.file_suffix)
        return int(digits) if digits.isdigit() and name == cls.file_name(int(digits)) else None

    def write_cache(self, sim: int, fields: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
        arrays, layout = {}, {}
        for name, field in fields.items():
            values = field.values
            dims = ['time', *values.shape.spatial.names] + (['vector'] if 'vector' in values.shape else [])
            arrays[name] = np.asarray(values.numpy(dims), dtype=np.float32)
            layout[name] = {'dims': dims, 'item_names': list(values.shape.get_item_names('vector') or ())
                            if 'vector' in values.shape else []}
        return self._save(sim, arrays, layout, metadata)

    def write_fields(self, sim: int, fields: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
        arrays, layout = {}, {}
        for name, values in fields.items():
            shape = values.shape
            dims = ['time', *shape.spatial.names] + (['vector'] if 'vector' in shape else [])
            odd = [n for n in shape.names if n not in dims]
            if 'time' not in shape or odd or not shape.spatial or values.dtype.kind is not float:
                raise CacheError(f"{self.cache_file(sim)}: field {name!r} has dims {shape} and dtype {values.dtype}; "
                                 f"expected (time, x[, y[, z]][, vector]) floats")
            with math.precision(values.dtype.bits):
                arrays[name] = values.numpy(dims)
            layout[name] = {'dims': dims, 'item_names': list(shape.get_item_names('vector') or ()) if 'vector' in shape
                            else []}
        return self._save(sim, arrays, layout, metadata)

    def _save(self, sim: int, arrays: dict[str, np.ndarray], layout: dict, metadata: Mapping[str, Any]) -> Path:
        path = self.cache_file(sim)
        try:
            text = json.dumps(dict(metadata), allow_nan=True)
        except TypeError as err:
            raise CacheError(f"{path}: metadata cannot be stored as JSON ({err})") from None
        if {METADATA, LAYOUT} & set(arrays):
            raise CacheError(f"{path}: field names {sorted(arrays)} clash with {METADATA!r} / {LAYOUT!r}")
        with atomic_path(path, self.file_suffix) as tmp:
            np.savez(tmp, **arrays, **{METADATA: np.array(text), LAYOUT: np.array(json.dumps(layout))})
        return path

    def _load(self, sim: int) -> tuple[dict[str, np.ndarray], dict, dict]:
        """Arrays, layout and metadata of one file, read with `allow_pickle=False`.

        Raises:
            CacheError: naming the file.
        """
        path = self.cache_file(sim)
        if not path.is_file():
            raise CacheError(f"{path}: missing (expected the npy cache file of sim {sim})")
        try:
            with np.load(path, allow_pickle=False) as stored:
                members = {key: stored[key] for key in stored.files}
            layout = json.loads(str(members.pop(LAYOUT)))
            metadata = json.loads(str(members.pop(METADATA)))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
            raise CacheError(f"{path}: not a readable npy cache file ({type(err).__name__}: {err})") from None
        if sorted(members) != sorted(layout):
            raise CacheError(f"{path}: arrays {sorted(members)} differ from the fields of its layout {sorted(layout)}")
        for name, array in members.items():
            dims = layout[name]['dims']
            if array.dtype.name not in FLOATS or array.ndim != len(dims):
                raise CacheError(f"{path}: field {name!r} is {array.dtype} of shape {array.shape}, expected floats "
                                 f"with dims {dims}")
        return members, layout, metadata

    def describe_file(self, sim: int) -> tuple[dict[str, FieldLayout], dict]:
        arrays, layout, metadata = self._load(sim)
        return {name: FieldLayout(tuple(layout[name]['dims']), a.shape, a.dtype.name, tuple(layout[name]['item_names']))
                for name, a in arrays.items()}, metadata

    def read_fields(self, sim: int) -> tuple[dict[str, Tensor], dict]:
        arrays, layout, metadata = self._load(sim)
        return {name: _wrap(a, layout[name]['dims'], layout[name], torch_view=False) for name, a in arrays.items()}, metadata

    # --- serving -----------------------------------------------------------------------------------------------

    def open(self, sims: Sequence[int]) -> None:
        if not sims:
            raise CacheError(f"{self.cache_dir}: no sims to open (expected at least one sim index)")
        loaded = [self._load(sim) for sim in sims]
        first = {name: (a.shape, layout['item_names']) for (arrays, lay, _) in loaded[:1]
                 for name, a in arrays.items() for layout in [lay[name]]}
        for sim, (arrays, lay, _) in zip(sims, loaded):
            found = {name: (a.shape, lay[name]['item_names']) for name, a in arrays.items()}
            if found != first:
                raise CacheError(f"{self.cache_file(sim)}: fields {found} differ from {self.file_name(sims[0])} {first}")
            bad = [f"{name}: {a.dtype}" for name, a in arrays.items() if a.dtype != np.float32]
            if bad:
                raise CacheError(f"{self.cache_file(sim)}: training needs float32, found {', '.join(bad)}")
        n_frames = next(iter(first.values()))[0][0]
        if n_frames <= self.rollout_steps:
            raise CacheError(f"{self.cache_file(sims[0])}: {n_frames} frames per sim, but `rollout_steps` "
                             f"(={self.rollout_steps}) needs more")
        self._layout = loaded[0][1]
        self._data = {name: np.stack([arrays[name] for arrays, _, _ in loaded]) for name in first}
        self._row = {sim: i for i, sim in enumerate(sims)}
        self._windows = n_frames - self.rollout_steps

    def window_keys(self) -> list[WindowKey]:
        return [WindowKey(sim, t0) for sim in self._row for t0 in range(self._windows)]

    def everyday_epochs(self, batch_size: int, *, seed: int, epochs: int) -> Iterator[Iterator[Batch]]:
        if batch_size < 1:
            raise ValueError(f"`batch_size` (={batch_size}) must be >= 1")
        keys = self.window_keys()
        for epoch in range(epochs):
            order = np.random.default_rng((seed, epoch, 0x4e5059)).permutation(len(keys))
            batches = tuple(tuple(keys[i] for i in order[start:start + batch_size])
                            for start in range(0, len(keys), batch_size))
            yield map(self.to_phiml, self.load_batches(BatchPlan(seed, epoch, batches)))

    def load_batches(self, plan: BatchPlan) -> Iterator[dict]:
        if not self._data:
            raise RuntimeError("NpyPipeline.open(sims) must be called before loading batches")
        steps = np.arange(1, self.rollout_steps + 1)
        for keys in plan.batches:
            try:
                rows = np.array([self._row[k.sim] for k in keys], dtype=np.intp)
            except KeyError as err:
                raise KeyError(f"sim {err.args[0]} is not among the opened sims {list(self._row)}") from None
            t0 = np.array([k.t0 for k in keys], dtype=np.intp)
            if len(t0) and (t0.min() < 0 or t0.max() >= self._windows):
                raise KeyError(f"t0 out of range [0, {self._windows}) in {list(keys)}")
            yield {'initial_state': {name: a[rows, t0] for name, a in self._data.items()},
                   'targets': {name: a[rows[:, None], t0[:, None] + steps] for name, a in self._data.items()}}

    def to_phiml(self, raw: dict) -> Batch:
        frame = {name: ['batch', *(d for d in layout['dims'] if d != 'time')] for name, layout in self._layout.items()}
        initial = {name: _wrap(a, frame[name], self._layout[name], torch_view=True)
                   for name, a in raw['initial_state'].items()}
        targets = {name: _wrap(a, ['batch', *self._layout[name]['dims']], self._layout[name], torch_view=True)
                   for name, a in raw['targets'].items()}
        if len(initial) == 1:
            (name,) = initial
            return {'initial_state': initial[name], 'targets': targets[name]}
        return {'initial_state': initial, 'targets': targets}

    def train(self, plans: Sequence[BatchPlan], network, optimizer) -> list[float]:
        return self._fit((self.to_phiml(raw) for plan in plans for raw in self.load_batches(plan)), network, optimizer)

    def everyday_train(self, network, optimizer, batch_size: int, *, seed: int, epochs: int) -> list[float]:
        return self._fit((b for batches in self.everyday_epochs(batch_size, seed=seed, epochs=epochs) for b in batches),
                         network, optimizer)

    @staticmethod
    def _fit(batches, network, optimizer) -> list[float]:
        losses = []
        for batch_ in batches:
            loss = nn.update_weights(network, optimizer, model.rollout_loss, network, batch_['initial_state'],
                                     batch_['targets'])
            losses.append(float(loss.native().detach()))
        return losses

def _wrap(array: np.ndarray, dims: Sequence[str], layout: dict, torch_view: bool) -> Tensor:
    """`array` with axes `dims` as a PhiML tensor: `batch`/`time` batch dims, x/y/z spatial, `vector` channel with the
    item names of `layout`; a torch view of it (what the model takes) or the numpy array itself."""
    native = torch.from_numpy(array) if torch_view else array
    shape = []
    for name, size in zip(dims, array.shape):
        if name == 'vector':
            shape.append(channel(vector=tuple(layout['item_names'])))
        elif name in SPATIAL:
            shape.append(spatial(**{name: size}))
        else:
            shape.append(batch(**{name: size}))
    return math.wrap(native, *shape)


class Incomplete(AbstractPipeline):
    """Implements only part of the interface: `load_pipeline` must refuse it."""
    name = 'incomplete'
    file_suffix = '.npz'

    def open(self, sims: Sequence[int]) -> None:
        pass

    def window_keys(self) -> list[WindowKey]:
        return []
