"""The manifest of a cache folder: what each sim file must be, so that a damaged file is found before it is used.

`<cache folder>/manifest.json` marks the folder as the harness's (`"writer": "phiml-migration-harness"`) and holds
one record per sim file: its name, sim index, byte size, SHA-256, the dims,
shape, dtype and item names of every field, the file's metadata and a digest of the config that produced it
(`None` for migrated files). It is rewritten atomically after every file that lands, so after an interruption it
describes exactly the files that were completely written and recorded. Before a write starts, the names about to be
written are listed as `pending`: a file that landed but was not recorded yet is still known to be the harness's.

A file the manifest neither records nor lists as pending is not the harness's: it is never overwritten, renamed or
deleted. A `manifest.json` without the harness's `writer` is a user's file and is never overwritten either.

Field dims are named in the file's own layout: `('channel', 'time', 'x', 'y')` for the legacy `[C, T, H, W]`
tensors, `('time', 'x', 'y', 'vector')` for the native ones.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import atomic_path
from harness.config import ScenarioConfig
from harness.errors import CacheError
from harness.pipeline import AbstractPipeline, FieldLayout

logger = logging.getLogger(__name__)
MANIFEST_NAME = 'manifest.json'
FORMAT_VERSION = 1
WRITER = 'phiml-migration-harness'


FieldRecord = FieldLayout  # one field of a sim file, as the manifest records it


@dataclass(frozen=True)
class FileRecord:
    """What one sim file must be.

    Attributes:
        name: File name inside the cache folder, e.g. `sim_000003.npz`.
        sim: Simulation index.
        size: Bytes.
        sha256: Hex digest of the whole file.
        fields: Field name -> `FieldRecord`.
        metadata: The metadata stored in the file.
        config_digest: `config_digest` of the scenario that produced it; `None` when unknown (migrated files).
        source: For migrated files, `{'name', 'size', 'sha256'}` of the legacy file it was converted from.
        health: For migrated files, the findings of the data health scan (`{'sim', 'frame', 'field', 'check',
            'detail'}` each; `[]` when healthy); None when not scanned (caches built from a scanned simulation).
    """
    name: str
    sim: int
    size: int
    sha256: str
    fields: dict[str, FieldRecord]
    metadata: dict[str, Any]
    config_digest: str | None = None
    source: dict[str, Any] | None = None
    health: list[dict[str, Any]] | None = None

    @property
    def signature(self) -> tuple:
        """Fields with their frames and resolution: equal for every file of one cache."""
        return tuple((name, f.n_frames, tuple(f.resolution)) for name, f in sorted(self.fields.items()))

    def to_json(self) -> dict[str, Any]:
        fields = {name: {'dims': list(f.dims), 'shape': list(f.shape), 'dtype': f.dtype, 'item_names': list(f.item_names)}
                  for name, f in self.fields.items()}
        return {'name': self.name, 'sim': self.sim, 'size': self.size, 'sha256': self.sha256, 'fields': fields,
                'metadata': self.metadata, 'config_digest': self.config_digest, 'source': self.source,
                'health': self.health}

    @staticmethod
    def from_json(values: dict[str, Any]) -> 'FileRecord':
        fields = {name: FieldRecord(tuple(f['dims']), tuple(f['shape']), f['dtype'], tuple(f['item_names']))
                  for name, f in values['fields'].items()}
        return FileRecord(values['name'], int(values['sim']), int(values['size']), values['sha256'], fields,
                          values['metadata'], values.get('config_digest'), values.get('source'), values.get('health'))


@dataclass
class Manifest:
    """The records of one cache folder.

    Attributes:
        pipeline: The `name` of the pipeline whose files the folder holds (`'legacy'`, `'phiml'`, ...).
        files: File name -> record.
        pending: Names of files being written and not recorded yet (the harness's, whatever their state).
    """
    pipeline: str
    files: dict[str, FileRecord] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)

    def owns(self, name: str) -> bool:
        """Whether the file `name` of the folder was written by the harness (recorded or pending)."""
        return name in self.files or name in self.pending

    @staticmethod
    def path(folder: Path) -> Path:
        return Path(folder) / MANIFEST_NAME

    @classmethod
    def load(cls, folder: Path) -> 'Manifest | None':
        """The folder's manifest, or `None` when it has none.

        Raises:
            CacheError: the manifest exists but is unreadable, or was not written by the harness.
        """
        path = cls.path(folder)
        if not path.exists() and not path.is_symlink():
            return None
        if path.is_symlink() or not path.is_file():
            raise CacheError(f"{path}: not a cache manifest of the harness (not a plain file)")
        try:
            values = json.loads(path.read_text(encoding='utf-8'))
            if not isinstance(values, dict) or values.get('writer') != WRITER:
                found = f"writer {values.get('writer')!r}" if isinstance(values, dict) else type(values).__name__
                raise CacheError(f"{path}: not a cache manifest of the harness ({found}, expected writer {WRITER!r}; "
                                 f"an earlier version of the harness wrote none: delete such a folder to rebuild it)")
            if values.get('format_version') != FORMAT_VERSION:
                raise ValueError(f"format_version {values.get('format_version')!r}, expected {FORMAT_VERSION}")
            if not isinstance(values.get('pipeline'), str):
                raise ValueError(f"pipeline {values.get('pipeline')!r}, expected the name of a pipeline")
            files = {name: FileRecord.from_json(record) for name, record in values['files'].items()}
            pending = values.get('pending', [])
            if not isinstance(pending, list) or not all(isinstance(name, str) for name in pending):
                raise ValueError(f"pending {pending!r}, expected a list of file names")
        except CacheError:
            raise
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CacheError(f"{path}: not a readable cache manifest ({type(err).__name__}: {err})") from None
        return cls(values['pipeline'], files, set(pending))

    def save(self, folder: Path) -> Path:
        """Writes `manifest.json` atomically (a reader sees the old or the new manifest, never a mix)."""
        path = self.path(folder)
        # compact: json's C encoder (an indent selects the pure-Python one); rewritten after every file of a build
        text = json.dumps({'writer': WRITER, 'format_version': FORMAT_VERSION, 'pipeline': self.pipeline,
                           'files': {name: self.files[name].to_json() for name in sorted(self.files)},
                           'pending': sorted(self.pending)},
                          default=_json_default, separators=(',', ':'))
        with atomic_path(path, '.json') as tmp:
            tmp.write_text(text, encoding='utf-8')
        return path

    def by_sim(self) -> dict[int, FileRecord]:
        return {record.sim: record for record in self.files.values()}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a whole file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def config_digest(config: ScenarioConfig) -> str:
    """Digest of everything that determines the simulated data: name, physics, seed, `sim` and the number of sims.

    The number of sims matters: the initial noise is drawn for all sims at once.
    """
    values = {'name': config.name, 'physics': config.physics, 'seed': config.seed,
              'sim': dataclasses.asdict(config.sim), 'n_total_sims': len(config.all_sims)}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheKind:
    """How one pipeline's files are named, read and described: learnt from the pipeline class itself.

    Attributes:
        pipeline: The pipeline class (`name`, `file_suffix`, `file_name`, `describe_file`).
    """
    pipeline: type[AbstractPipeline]

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def suffix(self) -> str:
        return self.pipeline.file_suffix

    def file_name(self, sim: int) -> str:
        return self.pipeline.file_name(sim)

    def sim_of(self, name: str) -> int | None:
        """The sim whose file is called `name`; None when `name` is not a sim file name of this kind."""
        return self.pipeline.sim_of_file(name)

    def describe(self, folder: Path, sim: int) -> tuple[dict[str, FieldRecord], dict]:
        """Reads one file with the pipeline's own safe reader and describes it.

        Raises:
            CacheError: naming the file and what is wrong with it.
        """
        return self.pipeline(Path(folder), 1).describe_file(sim)


def dtype_name(dtype) -> str:
    """`phiml.math.DType(float, 32)` -> `'float32'`."""
    return f"{dtype.kind.__name__}{dtype.bits}"


def cache_kind(pipeline: type[AbstractPipeline] | AbstractPipeline | CacheKind) -> CacheKind:
    """The `CacheKind` of a pipeline class or instance.

    Raises:
        TypeError: `pipeline` is not a pipeline.
    """
    if isinstance(pipeline, CacheKind):
        return pipeline
    cls = pipeline if isinstance(pipeline, type) else type(pipeline)
    if not issubclass(cls, AbstractPipeline):
        raise TypeError(f"`pipeline` (={pipeline!r}) must be a pipeline class or instance (harness.pipeline.AbstractPipeline)")
    return CacheKind(cls)


def sims_on_disk(folder: Path, kind: CacheKind) -> list[int]:
    """The sims whose files (`sim_XXXXXX<suffix>`, or the pipeline's own `file_name`s) are in `folder`, sorted."""
    return sorted(sim for path in folder.glob(f"*{kind.suffix}") if (sim := kind.sim_of(path.name)) is not None)


def record_file(kind: CacheKind, folder: Path, sim: int, *, digest: str | None = None,
                source: dict[str, Any] | None = None) -> FileRecord:
    """Reads a freshly written sim file back with its pipeline's reader and describes it for the manifest.

    Raises:
        CacheError: the file does not load (a write that did not produce a valid file).
    """
    path = Path(folder) / kind.file_name(sim)
    size, sha = path.stat().st_size, sha256_file(path)
    fields, metadata = kind.describe(folder, sim)
    return FileRecord(path.name, sim, size, sha, fields, metadata, digest, source)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} cannot be written to {MANIFEST_NAME}")
