"""Verifying a pipeline's cache folder against its manifest and the config: every bad file named, with what is wrong.

`verify_cache` reads nothing it need not: a recorded file is checked by size and SHA-256 against its record; only a
file the manifest does not record is opened (with the pipeline's own reader) to say what it holds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from harness.atomic import leftover_temp_files
from harness.cache.manifest import (MANIFEST_NAME, CacheKind, FileRecord, Manifest, cache_kind, config_digest,
                                    sha256_file, sims_on_disk)
from harness.config import ScenarioConfig
from harness.errors import CacheError
from harness.pipeline import AbstractPipeline

PipelineLike = Union[type[AbstractPipeline], AbstractPipeline, CacheKind]  # what names a pipeline's files
PROBLEM_KINDS = ('missing', 'empty', 'truncated', 'size-mismatch', 'hash-mismatch', 'unreadable', 'wrong-shape',
                 'stale', 'unrecorded')


@dataclass(frozen=True)
class FileProblem:
    """What is wrong with one sim file.

    Attributes:
        sim: Simulation index.
        name: File name inside the cache folder.
        kind: One of `PROBLEM_KINDS`.
        detail: What was found and what was expected, in words.
        foreign: The file is there but the harness did not write it (its manifest neither records it nor lists it
            as pending): it is never rewritten.
    """
    sim: int
    name: str
    kind: str
    detail: str
    foreign: bool = False

    def __str__(self) -> str:
        return f"{self.name}: {self.kind} ({self.detail})"


@dataclass
class CacheReport:
    """The verification of one cache folder; `__bool__` is `passed`.

    Attributes:
        folder: The cache folder.
        pipeline: `'legacy'` or `'phiml'`.
        sims: The sims checked.
        problems: One entry per bad file.
        manifest_problem: Why the manifest could not be used, if so.
        folder_problem: Why the folder as a whole is unusable (missing, empty, not a folder), if so.
        temp_files: Leftover temporary files of interrupted harness writes (never read; removed by the next
            `build_cache` when the folder's manifest is the harness's).
        extra_files: Sim files in the folder beyond the sims checked (left alone).
    """
    folder: Path
    pipeline: str
    sims: list[int] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)
    manifest_problem: str | None = None
    folder_problem: str | None = None
    temp_files: list[str] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and not self.folder_problem and not self.manifest_problem

    def __bool__(self) -> bool:
        return self.passed

    @property
    def bad_sims(self) -> list[int]:
        return sorted({p.sim for p in self.problems})

    @property
    def bad_files(self) -> list[str]:
        """Names of the files with at least one problem, each once."""
        return sorted({p.name for p in self.problems})

    @property
    def foreign_files(self) -> list[str]:
        """Bad files that the harness did not write: they are in the way and never rewritten."""
        return sorted({p.name for p in self.problems if p.foreign})

    def foreign_message(self) -> str | None:
        """One line naming the first file the harness did not write, or None when there is none."""
        names = self.foreign_files
        if not names:
            return None
        more = f" (and {len(names) - 1} more: {', '.join(names[1:4])}{', ...' if len(names) > 4 else ''})" \
            if len(names) > 1 else ''
        return (f"{self.folder / names[0]}: not written by the harness (not recorded in "
                f"{self.folder / MANIFEST_NAME}){more}; refusing to use or overwrite files the harness did not "
                f"write, nothing was changed (--repair rewrites only the harness's own files)")

    def summary(self) -> str:
        """One line: the verdict and the first few bad files."""
        if self.folder_problem:
            return self.folder_problem
        if self.passed:
            return f"{self.folder}: all {len(self.sims)} {self.pipeline} cache files verify against {MANIFEST_NAME}"
        # one file may have several problems (unrecorded and of the wrong shape): the count is of files
        shown = '; '.join(str(p) for p in self.problems[:4])
        more = f"; and {len(self.problems) - 4} more problems" if len(self.problems) > 4 else ''
        manifest = f" [{self.manifest_problem}]" if self.manifest_problem else ''
        return (f"{self.folder}: {len(self.bad_files)} of {len(self.sims)} {self.pipeline} cache files are bad: "
                f"{shown}{more}{manifest}")

    def describe(self) -> str:
        """Every problem, one per line."""
        lines = [self.summary()] + [f"  {p}" for p in self.problems]
        lines += [f"  leftover temporary file {name} (ignored)" for name in self.temp_files]
        return '\n'.join(lines)

    def raise_if_failed(self) -> None:
        """Raises `CacheError` with `summary()` unless the cache verified (naming a file the harness did not write
        first, if there is one: rebuilding would not touch it)."""
        if self.foreign_files:
            raise CacheError(self.foreign_message())
        if not self.passed:
            raise CacheError(f"{self.summary()}; rebuild the bad files with harness.cache.build_cache (--repair)")

    def to_dict(self) -> dict[str, Any]:
        return {'folder': str(self.folder), 'pipeline': self.pipeline, 'passed': self.passed, 'sims': self.sims,
                'problems': [vars(p) for p in self.problems], 'manifest_problem': self.manifest_problem,
                'folder_problem': self.folder_problem, 'temp_files': self.temp_files, 'extra_files': self.extra_files}


def verify_cache(folder: Path, pipeline: PipelineLike, config: ScenarioConfig | None = None,
                 sims: Sequence[int] | None = None) -> CacheReport:
    """Checks every sim file of a cache folder against the manifest and, if given, the config.

    A file is bad when it is missing, empty, shorter or longer than recorded, its SHA-256 differs, it was written
    for another config, its fields do not have the config's frames and resolution (or, without config, those of
    the cache's first file), it is not in the manifest, or (not recorded) it does not load.

    Args:
        folder: Cache folder.
        pipeline: The pipeline (class or instance) whose files the folder holds.
        config: The scenario the cache must hold; also gives the sims to check.
        sims: Sims to check; default: `config.all_sims`, else every sim recorded or present.

    Returns:
        `CacheReport` naming every bad file and what is wrong with it.
    """
    kind = cache_kind(pipeline)
    folder = Path(folder)
    report = CacheReport(folder, kind.name)
    if not folder.is_dir():
        report.folder_problem = f"{folder}: cache folder {'is not a folder' if folder.exists() else 'does not exist'}"
        report.sims = list(config.all_sims if sims is None and config is not None else sims or [])
        report.problems = [FileProblem(s, kind.file_name(s), 'missing', f"no cache folder {folder}") for s in report.sims]
        return report
    manifest = _load_manifest(folder, kind, report)
    records = manifest.by_sim() if manifest else {}
    pending = manifest.pending if manifest else set()
    present = sims_on_disk(folder, kind)
    report.temp_files = [p.name for p in _temp_files(folder, kind)]
    if sims is None:
        sims = config.all_sims if config is not None else sorted(set(records) | set(present))
    report.sims = list(sims)
    report.extra_files = [kind.file_name(s) for s in present if s not in set(report.sims)]
    if not report.sims:
        report.folder_problem = (f"{folder}: empty cache folder (no {kind.file_name(0).replace('000000', 'XXXXXX')} "
                                 f"files, no {MANIFEST_NAME} records)")
        return report
    digest = config_digest(config) if config is not None else None
    signatures: dict[int, tuple] = {}
    for sim in report.sims:
        problem = _check_file(kind, folder, sim, records.get(sim), kind.file_name(sim) in pending, digest, signatures)
        if problem:
            report.problems.append(problem)
    foreign = {p.name for p in report.problems if p.foreign}
    report.problems += [dataclasses.replace(p, foreign=p.name in foreign)
                        for p in _shape_problems(kind, config, signatures)]
    report.problems.sort(key=lambda p: p.sim)
    return report


def _load_manifest(folder: Path, kind: CacheKind, report: CacheReport) -> Manifest | None:
    try:
        manifest = Manifest.load(folder)
    except CacheError as err:
        report.manifest_problem = str(err)
        return None
    if manifest is None:
        report.manifest_problem = f"{Manifest.path(folder)} missing: no file can be verified"
    elif manifest.pipeline != kind.name:
        report.manifest_problem = f"{Manifest.path(folder)} records a {manifest.pipeline!r} cache, expected {kind.name!r}"
        return None
    return manifest


def _check_file(kind: CacheKind, folder: Path, sim: int, record: FileRecord | None, pending: bool, digest: str | None,
                signatures: dict[int, tuple]) -> FileProblem | None:
    name = kind.file_name(sim)
    path = folder / name
    recorded = f", {record.size} bytes recorded" if record else ''
    if not path.exists() and not path.is_symlink():
        return FileProblem(sim, name, 'missing', f"expected the {kind.name} cache of sim {sim}{recorded}")
    if path.is_symlink() or not path.is_file():
        return FileProblem(sim, name, 'unreadable', "not a plain file (the harness writes only plain files)", True)
    foreign = record is None and not pending
    whose = 'written by an interrupted harness build, not recorded yet' if pending else 'not written by the harness'
    size = path.stat().st_size
    if size == 0:
        return FileProblem(sim, name, 'empty', f"0 bytes{recorded}" if record else f"0 bytes, {whose}", foreign)
    if record is None:
        try:
            fields, _ = kind.describe(folder, sim)
        except CacheError as err:
            return FileProblem(sim, name, 'unreadable', f"{str(err).removeprefix(f'{path}: ')}; {whose}", foreign)
        signatures[sim] = FileRecord(name, sim, size, '', fields, {}).signature
        return FileProblem(sim, name, 'unrecorded', f"not in {MANIFEST_NAME}: it loads, but its bytes cannot be "
                                                    f"verified; {whose}", foreign)
    if size != record.size:
        return FileProblem(sim, name, 'truncated' if size < record.size else 'size-mismatch',
                           f"{size} of {record.size} recorded bytes" if size < record.size
                           else f"{size} bytes, {record.size} recorded")
    sha = sha256_file(path)
    if sha != record.sha256:
        return FileProblem(sim, name, 'hash-mismatch', f"SHA-256 {sha[:16]}..., recorded {record.sha256[:16]}...")
    if digest and record.config_digest and record.config_digest != digest:
        return FileProblem(sim, name, 'stale', f"written for config {record.config_digest}, the config is {digest} "
                                               f"(seed, sim parameters or number of sims changed)")
    signatures[sim] = record.signature
    return None


def _shape_problems(kind: CacheKind, config: ScenarioConfig | None, signatures: dict[int, tuple]) -> list[FileProblem]:
    """Files whose fields do not have the config's frames and resolution, or differ from the cache's first file."""
    if not signatures:
        return []
    if config is not None:
        expected, against = (config.sim.n_frames, tuple(config.sim.resolution)), 'the config expects'
        problems = []
        for sim, signature in signatures.items():
            wrong = [(n, f, r) for n, f, r in signature if (f, r) != expected]
            if wrong:
                found = ', '.join(f"{n!r} {f} frames of {_cells(r)}" for n, f, r in wrong)
                problems.append(FileProblem(sim, kind.file_name(sim), 'wrong-shape',
                                            f"field {found}; {against} {expected[0]} frames of {_cells(expected[1])}"))
        return problems
    first = min(signatures)
    return [FileProblem(sim, kind.file_name(sim), 'wrong-shape',
                        f"fields/frames/resolution {_describe(sig)} differ from {kind.file_name(first)} "
                        f"{_describe(signatures[first])}; one cache must hold sims of one resolution")
            for sim, sig in signatures.items() if sig != signatures[first]]


def _cells(resolution) -> str:
    return 'x'.join(str(r) for r in resolution) + ' cells'


def _describe(signature: tuple) -> str:
    return ', '.join(f"{n!r}: {f} frames of {_cells(r)}" for n, f, r in signature)


def _temp_files(folder: Path, kind: CacheKind) -> list[Path]:
    """Leftovers of `atomic_path` writes killed before their rename: `.sim_000001.npz.<8 hex>.harness-tmp.npz`."""
    return leftover_temp_files(folder, lambda final: final == MANIFEST_NAME or kind.sim_of(final) is not None)
