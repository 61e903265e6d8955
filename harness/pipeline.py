"""The one interface both data pipelines implement, and the plain types they exchange with the harness.

Data contract (see DESIGN.md): a window is keyed by `(sim, t0)`; its `initial_state` is frame `t0` and its `targets`
are frames `t0+1 ... t0+rollout_steps`. A batch handed to the model is

    {'initial_state': Tensor(batch, x, y, vector), 'targets': Tensor(batch, time, x, y, vector)}

float32 with item names `vector='x,y'`; with several fields per simulation each value is a dict keyed by field name.
"""
from __future__ import annotations

import abc
import collections
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping, NamedTuple, Sequence, Union

from phiml.math import Tensor

from harness import model
from harness.errors import ConfigError

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


SPATIAL_DIMS = ('x', 'y', 'z')


@dataclass(frozen=True)
class FieldLayout:
    """One stored field of a cache file: dims in the file's own layout, their sizes, the dtype name and the channel
    item names, e.g. `('channel', 'time', 'x', 'y')` for a legacy `[C, T, H, W]` tensor, `('time', 'x', 'y', 'vector')`
    for a native one."""
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    item_names: tuple[str, ...] = ()

    @property
    def n_frames(self) -> int:
        return self.shape[self.dims.index('time')]

    @property
    def resolution(self) -> list[int]:
        """Cells along x[, y[, z]]."""
        return [size for dim, size in zip(self.dims, self.shape) if dim in SPATIAL_DIMS]


class AbstractPipeline(abc.ABC):
    """A data pipeline from simulated fields to model-ready PhiML batches.

    Stages the harness times: `write_cache`, `open`, `load_batches`, `to_phiml`, and one step of `train`. Besides
    this plan-driven path the harness judges the everyday one a user runs: `everyday_epochs` and `everyday_train`.

    Args:
        cache_dir: Folder holding this pipeline's cache files, created on first write.
        rollout_steps: Target frames per window.
    """
    name: ClassVar[str]
    file_suffix: ClassVar[str]

    def __init__(self, cache_dir: Path, rollout_steps: int):
        """Creating a pipeline reads and writes nothing (the harness creates one per folder to describe its files)."""
        self.cache_dir = Path(cache_dir)
        self.rollout_steps = rollout_steps

    @classmethod
    def file_name(cls, sim: int) -> str:
        """The name of the cache file of `sim` inside `cache_dir`."""
        return f"sim_{sim:06d}{cls.file_suffix}"

    @classmethod
    def sim_of_file(cls, name: str) -> int | None:
        """The sim whose cache file is called `name`, or None when `name` is not one of this pipeline's file names
        (how the harness finds the sims of a folder; override it together with `file_name`)."""
        digits = name[4:-len(cls.file_suffix)]
        if name.startswith('sim_') and name.endswith(cls.file_suffix) and digits.isdigit() \
                and name == cls.file_name(int(digits)):
            return int(digits)
        return None

    def cache_file(self, sim: int) -> Path:
        return self.cache_dir / self.file_name(sim)

    def describe_file(self, sim: int) -> tuple[dict[str, FieldLayout], dict]:
        """Reads the cache file of `sim` with this pipeline's own safe reader (any float dtype accepted) and describes it.
        The default describes the canonical tensors `read_fields` returns; a pipeline that stores another layout (the
        legacy `[C, T, *spatial]`) describes that.

        Returns:
            Field name -> `FieldLayout`, and the file's metadata.

        Raises:
            CacheError: naming the file: missing, unreadable, unsafe or not this pipeline's layout.
        """
        fields, metadata = self.read_fields(sim)
        return {name: FieldLayout(t.shape.names, t.shape.sizes, f"{t.dtype.kind.__name__}{t.dtype.bits}",
                                  tuple(t.shape.get_item_names('vector') or ()) if 'vector' in t.shape else ())
                for name, t in fields.items()}, metadata

    @abc.abstractmethod
    def read_fields(self, sim: int) -> tuple[dict[str, Tensor], dict]:
        """The stored fields of `sim` as PhiML tensors with the canonical dims `time` (batch), the spatial dims x[, y[,
        z]] and, for a vector field, `vector` (channel), in the stored dtype; and the file's metadata as stored.

        Raises:
            CacheError: naming the file (see `describe_file`).
        """

    @abc.abstractmethod
    def write_fields(self, sim: int, fields: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
        """Writes canonical tensors (as `read_fields` returns them, e.g. from another pipeline's cache) as the cache file
        of `sim`, atomically, values and dtype kept; returns its path.

        Raises:
            CacheError: this pipeline's cache cannot hold them (dtype, dims, channel names), before anything is written.
        """

    @classmethod
    def configured(cls, config) -> type['AbstractPipeline']:
        """This pipeline class with the options `config` sets for it (e.g. `data.channels` for a reader); itself when
        there are none."""
        return cls

    @classmethod
    def with_options(cls, **options) -> type['AbstractPipeline']:
        """A subclass whose class attributes `options` replace; `cls` itself where each already has its value."""
        if all(getattr(cls, key) == value for key, value in options.items()):
            return cls
        return type(cls.__name__, (cls,), {**options, '__module__': cls.__module__, '__qualname__': cls.__qualname__})

    @classmethod
    def forget_read_caches(cls) -> None:
        """Drops whatever the reader remembers between opens, so the next open is as cold as a new process's."""

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
    def train(self, plans: Sequence[BatchPlan], network, optimizer) -> list[float]:
        """Trains `network` on the batches of `plans` in order; returns the loss of every step."""

    @abc.abstractmethod
    def everyday_epochs(self, batch_size: int, *, seed: int, epochs: int, **variant) -> Iterator[Iterator[Batch]]:
        """The PhiML batches a user's own loop gets from this pipeline, without a plan: one loader of the opened sims
        iterated for `epochs` epochs, with the pipeline's own shuffling (drawn from `seed` and the epoch), batching (the
        last batch of an epoch may be smaller) and conversion.

        Args:
            batch_size: Windows per batch.
            variant: Loader options, one of `loader_variants()`; every variant must serve bit-identical batches.

        Returns:
            One iterator of batches per epoch; each is consumed before the next one is taken.
        """

    def everyday_train(self, network, optimizer, batch_size: int, *, seed: int, epochs: int) -> list[float]:
        """Trains `network` for `epochs` epochs with this pipeline's own trainer on its own everyday loader (as
        `everyday_epochs` serves it with the default variant); returns the loss of every step.

        The default is one `harness.model.train_step` per batch of `everyday_epochs`; a pipeline with a trainer of its
        own overrides it.
        """
        return [model.train_step(network, optimizer, batch)
                for batches in self.everyday_epochs(batch_size, seed=seed, epochs=epochs) for batch in batches]

    def loader_variants(self) -> list[dict]:
        """The loader options (`**variant` of `everyday_epochs`) a user may choose, e.g. worker processes or
        prefetching, the default first. The default: only `{}`."""
        return [{}]

    def batches(self, plan: BatchPlan) -> Iterator[Batch]:
        """PhiML batches for `plan`: `load_batches` followed by `to_phiml` (no reference kept to a batch handed out)."""
        return map(self.to_phiml, self.load_batches(plan))


def drain(batches: Iterable[Any]) -> None:
    """Builds every batch of `batches` and lets each go before the next is built: one epoch of batch loading as the
    benchmarks time and measure it (a `for` loop would hold the previous batch while building the next)."""
    collections.deque(batches, maxlen=0)


Pipeline = AbstractPipeline


def class_spec(cls: type) -> str:
    """`'module:QualName'` of a class, as `load_pipeline` takes it."""
    return f"{cls.__module__}:{cls.__qualname__}"


def load_pipeline(spec: str, role: str = 'pipeline') -> type[AbstractPipeline]:
    """The class `spec` (`'package.module:ClassName'`) names, checked to implement `AbstractPipeline`.

    Args:
        spec: `MODULE:CLASS`.
        role: Named in errors, e.g. `'--native'`.

    Raises:
        ConfigError: `spec` is malformed, cannot be imported, or names something that is not a concrete pipeline class.
    """
    module_name, sep, class_name = spec.partition(':')
    if not sep or not module_name or not all(part.isidentifier() for part in class_name.split('.')):
        raise ConfigError(f"{role} (={spec!r}) must be MODULE:CLASS, e.g. 'my_project.data:MyPipeline'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure to import a user's module is a usage error
        reason = str(err).splitlines()[0] if str(err) else ''
        raise ConfigError(f"{role} (={spec!r}): cannot import module {module_name!r} ({type(err).__name__}: "
                          f"{reason}); expected a module importable from sys.path (run from the folder above it, or "
                          f"install it)") from None
    cls = module
    for part in class_name.split('.'):
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, AbstractPipeline)):
        found = 'not defined' if cls is None else f"a {type(cls).__name__}, not a pipeline class"
        raise ConfigError(f"{role} (={spec!r}): {module_name}.{class_name} is {found}; expected a subclass of "
                          f"harness.pipeline.AbstractPipeline")
    missing = sorted(getattr(cls, '__abstractmethods__', ()))
    if missing:
        raise ConfigError(f"{role} (={spec!r}): {cls.__name__} does not implement {missing} of the Pipeline interface; "
                          f"expected a class implementing every abstract method of harness.pipeline.AbstractPipeline")
    name, suffix = getattr(cls, 'name', None), getattr(cls, 'file_suffix', None)
    if not (isinstance(name, str) and name and isinstance(suffix, str) and suffix.startswith('.') and len(suffix) > 1):
        raise ConfigError(f"{role} (={spec!r}): {cls.__name__} has `name` (={name!r}) and `file_suffix` (={suffix!r}); "
                          f"expected class attributes such as name = 'mine', file_suffix = '.npz'")
    try:
        inspect.signature(cls).bind(Path('cache'), 1)
    except TypeError as err:
        raise ConfigError(f"{role} (={spec!r}): {cls.__name__}(cache_dir, rollout_steps) cannot be called ({err}); "
                          f"expected the constructor of harness.pipeline.AbstractPipeline") from None
    return cls
