"""Everything a cache carries besides its tensors: the metadata of each sim, compared with the source and between the
two caches, keys, values and types.

The source is what the caches were written from: the simulation's `metadata(sim)`, or, for an existing cache, that
cache's own files as its reader returns them (the source of truth). Each cache is read through the interface
(`read_fields`), so any pipeline is judged the same way. A value must arrive with its type: a float64 `dt` read back as
a float32, an int as a float, a list as a tuple or an array is a finding, as is a key dropped or added.

A pipeline may store its own hint keys (the legacy reader's `spatial_dims`, `field_channels`): they are found by
asking its writer (`hint_keys`: the keys it stores beyond the ones it is given), so no pipeline is named here. Hint
keys are not findings, and a hint key of the source's own reader need not arrive in the other cache. The contract's
`fields` (the sorted field names, which `harness.cache.migrate` adds) may be added where the source lacks it.
"""
from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from harness.config import HealthConfig
from harness.data.health import HealthReport, scan_read
from harness.errors import CacheError
from harness.pipeline import AbstractPipeline

logger = logging.getLogger(__name__)
CONTRACT_KEYS = ('fields',)
MAX_SHOWN = 5


@dataclass(frozen=True)
class MetadataFinding:
    """One key of one sim's metadata that did not arrive as it left.

    Attributes:
        pipeline: The cache it was read from (or `'legacy vs phiml'` for the comparison of the two caches).
        sim: Simulation index.
        key: Metadata key.
        kind: `'missing'`, `'extra'`, `'type'` or `'value'`.
        detail: What was expected and found, with types.
    """
    pipeline: str
    sim: int
    key: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.pipeline} sim {self.sim} {self.key!r}: {self.detail}"


@dataclass
class MetadataReport:
    """The metadata of every sim of both caches against the source; `__bool__` is `passed`.

    Attributes:
        source: Where the reference metadata came from (`'simulation'` or the folder of an existing cache).
        sims: The sims compared.
        keys: The source's keys (of the first sim).
        hints: Pipeline name -> the hint keys its writer adds.
        findings: Every key that did not arrive as it left.
    """
    source: str
    sims: list[int]
    keys: list[str]
    hints: dict[str, list[str]]
    findings: list[MetadataFinding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    def __bool__(self) -> bool:
        return self.passed

    @property
    def kind(self) -> str:
        """`'none'`, or the kind of the first finding (`'metadata type'`, `'metadata missing'`, ...)."""
        return f"metadata {self.findings[0].kind}" if self.findings else 'none'

    @property
    def detail(self) -> str:
        pipelines = ', '.join(self.hints)
        if self.passed:
            hints = ', '.join(f"{name} {keys}" for name, keys in self.hints.items() if keys)
            return (f"every key of the source metadata ({self.source}, {len(self.keys)} keys) arrived in the {pipelines} "
                    f"caches with its value and type, in all {len(self.sims)} sims" +
                    (f" (hint keys of a writer, not findings: {hints})" if hints else ''))
        shown = '; '.join(map(str, self.findings[:MAX_SHOWN]))
        more = f" and {len(self.findings) - MAX_SHOWN} more" if len(self.findings) > MAX_SHOWN else ''
        return f"{len(self.findings)} metadata finding(s) against the source metadata ({self.source}): {shown}{more}"

    def to_dict(self) -> dict:
        return {'passed': self.passed, 'detail': self.detail, 'source': self.source, 'sims': self.sims,
                'keys': self.keys, 'hints': self.hints,
                'findings': [{'pipeline': f.pipeline, 'sim': f.sim, 'key': f.key, 'kind': f.kind, 'detail': f.detail}
                             for f in self.findings]}


def hint_keys(make: Callable[[Path], AbstractPipeline], fields: Mapping[str, Any]) -> list[str]:
    """The keys a pipeline's writer stores beyond the ones it is given: one sim's `fields` (canonical tensors, as
    `read_fields` returns them) written with only the contract's `fields` key into a scratch folder, and read back.

    Args:
        make: Folder -> a new pipeline of the kind judged, with its cache in that folder.
    """
    given = {'fields': sorted(fields)}
    with tempfile.TemporaryDirectory(prefix='metadata-hints-') as tmp:
        probe = make(Path(tmp))
        probe.write_fields(0, fields, given)
        _, stored = probe.read_fields(0)
    return sorted(k for k in stored if k not in given)


def compare_metadata(source: Sequence[Mapping[str, Any]], caches: Mapping[str, Sequence[Mapping[str, Any]]],
                     sims: Sequence[int], hints: Mapping[str, Sequence[str]], *, source_name: str = 'simulation',
                     source_hints: Sequence[str] = (), field_names: Sequence[str] = ()) -> MetadataReport:
    """Compares each sim's metadata in each cache with the source's and the caches with each other.

    Args:
        source: The source's metadata, one dict per entry of `sims`.
        caches: Pipeline name -> its metadata as read back, one dict per entry of `sims`.
        sims: The sim index of each entry.
        hints: Pipeline name -> its hint keys (`hint_keys`): not findings in its own cache.
        source_name: Named in the detail.
        source_hints: Hint keys of the source's own reader (an existing cache): they need not arrive elsewhere.
        field_names: The sorted field names, the value the contract's `fields` key must have where it is added.
    """
    findings: list[MetadataFinding] = []
    for position, sim in enumerate(sims):
        expected = source[position]
        for name, metas in caches.items():
            own = set(hints.get(name, ()))
            found = metas[position]
            for key in expected:
                if key in found:
                    findings += _differences(name, sim, key, expected[key], found[key])
                elif key not in source_hints:
                    findings.append(MetadataFinding(name, sim, key, 'missing', f"dropped (the source has "
                                                    f"{_show(expected[key])})"))
            for key in found:
                if key in expected or key in own:
                    continue
                if key in CONTRACT_KEYS and _same(found[key], list(field_names)):
                    continue
                findings.append(MetadataFinding(name, sim, key, 'extra', f"not in the source, found {_show(found[key])}"))
        if len(caches) == 2:  # what both carry beyond the source (hints they share too) must agree between them
            (a, ma), (b, mb) = ((n, m[position]) for n, m in caches.items())
            for key in sorted(set(ma) & set(mb) - set(expected)):
                findings += _differences(f"{a} vs {b}", sim, key, ma[key], mb[key])
    keys = sorted(source[0]) if source else []
    return MetadataReport(source_name, list(sims), keys, {n: sorted(hints.get(n, ())) for n in caches}, findings)


def _differences(pipeline: str, sim: int, key: str, expected: Any, found: Any) -> list[MetadataFinding]:
    """No finding for the same value of the same types; `'type'` where a type differs anywhere inside (an int read
    back as a float, a list as a tuple, a float64 as a float32), else `'value'`."""
    if _same(expected, found):
        return []
    detail = f"{_show(found)} instead of {_show(expected)}"
    if _types(expected) != _types(found):
        return [MetadataFinding(pipeline, sim, key, 'type', detail)]
    if isinstance(expected, float) and isinstance(found, float) and float(np.float32(expected)) == found:
        detail += ": the source's value rounded to float32"
    return [MetadataFinding(pipeline, sim, key, 'value', detail)]


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types, all the way down (NaN equals NaN; 1, 1.0, True, np.float64(1) all differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)  # key order carries no meaning
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in 'fc'))
    if isinstance(a, (float, np.floating)) and math.isnan(a):
        return bool(math.isnan(b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return repr(a) == repr(b)


def _types(value: Any) -> Any:
    """The type structure of `value`: its type, and those of its items (arrays: their dtype)."""
    if isinstance(value, dict):
        return dict, tuple(sorted(((repr(k), _types(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, (list, tuple)):
        return type(value), tuple(_types(v) for v in value)
    if isinstance(value, np.ndarray):
        return np.ndarray, value.dtype.str
    return type(value)


def _show(value: Any) -> str:
    """`value` with its type, e.g. `0.01 (float32)`, `[16, 16] (list)`."""
    if isinstance(value, np.ndarray):
        return f"{value.tolist()!r} (ndarray {value.dtype})"
    kind = type(value).__name__ if not isinstance(value, np.generic) else str(value.dtype)
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return f"{text[:80]}{'...' if len(text) > 80 else ''} ({kind})"


@dataclass
class ReadBack:
    """What one pipeline reads back of its cache (`read_fields`, one sim at a time): each sim's metadata, the health
    scan of its fields (`harness.data.health.scan_read`) and the fields of the first sim (to ask writers for hints)."""
    metadata: list[dict]
    health: HealthReport
    first_fields: dict


def read_back(pipeline: AbstractPipeline, sims: Sequence[int], health: HealthConfig) -> ReadBack:
    """Reads every sim of `sims` through `pipeline.read_fields`, holding one sim's fields at a time."""
    metadata, first = [], []

    def fields():
        for sim in sims:
            values, meta = pipeline.read_fields(sim)
            metadata.append(meta)
            if not first:
                first.append(values)
            yield values
    scan = scan_read(fields(), sims, health)
    return ReadBack(metadata, scan, first[0] if first else {})


def carried_metadata(simulation, sims: Sequence[int], makers: Mapping[str, Callable[[Path], AbstractPipeline]],
                     read: Mapping[str, ReadBack], *, source: tuple[str, str] | None = None) -> MetadataReport:
    """The metadata both caches carry against the source, for a run.

    Args:
        simulation: The source's `metadata(sim)` (for an existing cache: its files' metadata as read).
        sims: The sims of both caches.
        makers: Pipeline name -> folder -> a new pipeline of that kind (for `hint_keys`).
        read: Pipeline name -> what it read back of `sims` (`read_back`).
        source: For an existing cache: its folder and the name of the pipeline whose files it is (their reader's hint
            keys need not arrive in the other cache); None for a simulation.
    """
    fields = next(iter(read.values())).first_fields
    hints = {name: _hints(name, make, fields) for name, make in makers.items()}
    return compare_metadata([simulation.metadata(sim) for sim in sims],
                            {name: back.metadata for name, back in read.items()}, sims, hints,
                            source_name='simulation' if source is None else f"cache {source[0]}",
                            source_hints=() if source is None else hints[source[1]], field_names=sorted(fields))


def _hints(name: str, make: Callable[[Path], AbstractPipeline], fields: Mapping[str, Any]) -> list[str]:
    try:
        return hint_keys(make, fields)
    except (CacheError, NotImplementedError, OSError, ValueError, TypeError) as err:
        logger.warning("%s: its writer could not be asked for its metadata hint keys (%s); every key it adds is a "
                       "finding", name, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return []
