"""Building, resuming and repairing a pipeline's cache folder (verification: `harness.cache.verify`).

Every sim file is written to a temporary file and renamed into place, then recorded in the folder's
`manifest.json` (see `harness.manifest`). The harness writes, renames and deletes only files its manifest records
(or lists as pending): a file of a user in the way, or a `manifest.json` the harness did not write, is refused with
its name (`CacheError`) and left as it is. `verify_cache` checks a folder against its manifest and the config and
names every bad file; `build_cache` writes only the sims that do not verify, so an interrupted build resumes and a
damaged cache is repaired without touching its good files; `open_cache` refuses a cache that does not verify.

Typical use (what `--repair` does):

    result = build_cache(pipeline, config)        # or repair_cache(folder, 'phiml', config)
    result.rebuilt                                # sims that were missing or bad, now rewritten
    open_cache(pipeline, config.train_sims, config)
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from harness.config import ScenarioConfig
from harness.errors import CacheError
from harness.cache.manifest import CacheKind, Manifest, cache_kind, config_digest, record_file
from harness.pipeline import AbstractPipeline
from harness.data.simulate import Simulation, simulate

from harness.cache.verify import (PROBLEM_KINDS, CacheReport, FileProblem, PipelineLike, _temp_files,  # noqa: F401
                                  verify_cache)

logger = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """What `build_cache` found and did.

    Attributes:
        before: Verification before writing.
        rebuilt: Sims written (missing or bad before).
        after: Verification after writing (passed).
        removed_temp_files: Leftovers of interrupted writes that were deleted.
    """
    before: CacheReport
    rebuilt: list[int]
    after: CacheReport
    removed_temp_files: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> list[int]:
        return [sim for sim in self.after.sims if sim not in self.rebuilt]


def remove_leftovers(folder: Path, kind: CacheKind) -> list[str]:
    """Deletes the harness's temporary files of killed writes in a folder whose manifest is the harness's.

    Returns:
        The names deleted; none when the folder has no manifest of the harness (it is then not the harness's to clean).
    """
    try:
        if Manifest.load(folder) is None:
            return []
    except CacheError:
        return []
    removed = []
    for path in _temp_files(folder, kind):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        logger.info("%s: removed %d leftover temporary files of killed writes: %s", folder, len(removed),
                    ', '.join(removed))
    return removed


def write_cache(pipeline: AbstractPipeline, simulation: Simulation, sims: Sequence[int],
                progress: Callable[[int], None] | None = None, *, record: bool = False) -> list[Path]:
    """Writes the cache files of `sims` with `pipeline`'s own conversion; returns their paths.

    Args:
        pipeline: Writes the files into its `cache_dir`.
        simulation: Source of the fields and metadata.
        sims: Sims to write.
        progress: Called with 1 per file written.
        record: Also record every file in the folder's manifest as soon as it has landed (what `build_cache`
            does; off for the timed write stage). The names to write are listed as pending first; each file is
            read back with the pipeline's reader, then recorded. The manifest is rewritten atomically after every
            file, so an interruption loses at most the record of the file being written; that file then shows as
            unrecorded (but the harness's: pending) and the next `build_cache` rewrites it.

    Raises:
        CacheError: with `record`, the folder's manifest is not the harness's or belongs to the other pipeline, or a
            file to be written is there and not the harness's (nothing is overwritten).
    """
    kind = cache_kind(pipeline)
    folder = pipeline.cache_dir
    manifest = begin_writes(folder, kind, sims) if record else None
    digest = config_digest(simulation.config)
    paths = []
    for sim in sims:
        paths.append(pipeline.write_cache(sim, simulation.sim_fields(sim), simulation.metadata(sim)))
        if manifest is not None:
            manifest.files[paths[-1].name] = record_file(kind, folder, sim, digest=digest)
            manifest.pending.discard(paths[-1].name)
            manifest.save(folder)
        if progress:
            progress(1)
    logger.info("%s: wrote %d cache files to %s%s", pipeline.name, len(paths), folder, ' (recorded)' if record else '')
    return paths


def begin_writes(folder: Path, kind: CacheKind, sims: Sequence[int]) -> Manifest:
    """Lists the files of `sims` as pending in the folder's manifest (saved) before they are written; returns it.

    Raises:
        CacheError: the manifest is not the harness's or of another pipeline, or a file to be written is there and
            not the harness's (nothing is changed).
    """
    manifest = _manifest_for_writing(folder, kind) or Manifest(kind.name)
    names = [kind.file_name(sim) for sim in sims]
    in_the_way = [n for n in names if ((folder / n).exists() or (folder / n).is_symlink()) and not manifest.owns(n)]
    if in_the_way:
        raise CacheError(f"{folder / in_the_way[0]}: not written by the harness (not recorded in "
                         f"{Manifest.path(folder)}); refusing to overwrite it, nothing was changed")
    manifest.pending |= set(names)
    manifest.save(folder)
    return manifest


def _manifest_for_writing(folder: Path, kind: CacheKind) -> Manifest | None:
    """The folder's manifest (None when it has none), refusing one the harness cannot write into.

    Raises:
        CacheError: the manifest is unreadable or not the harness's (it is never overwritten), or of the other
            pipeline.
    """
    try:
        manifest = Manifest.load(folder)
    except CacheError as err:
        raise CacheError(f"{err}; refusing to write into {folder}, nothing was changed") from None
    if manifest is None:
        return None
    if manifest.pipeline != kind.name:
        raise CacheError(f"{Manifest.path(folder)}: the folder holds a {manifest.pipeline!r} cache, refusing to write "
                         f"{kind.name!r} files into it (expected a folder of its own per pipeline)")
    return manifest


def build_cache(pipeline: AbstractPipeline, config: ScenarioConfig, simulation: Simulation | None = None,
                sims: Sequence[int] | None = None, progress: Callable[[int], None] | None = None) -> BuildResult:
    """Makes `pipeline`'s cache of `config` complete: writes only the sims whose files do not verify.

    Resumes an interrupted build and repairs a damaged cache; files that verify are not touched (bytes and mtime
    unchanged). The simulation is run only if something must be written, and then in full: the sims of a scenario
    are simulated in one batched run, and every rewritten file is bitwise what a fresh build writes.

    Args:
        pipeline: Writes the files (its `cache_dir` is the folder).
        config: The scenario.
        simulation: Its simulation, if already at hand (must come from an equal config).
        sims: Sims to make complete; default `config.all_sims`.
        progress: Called with 1 per file written.

    Raises:
        CacheError: the folder holds the other pipeline's cache, a manifest or a file in the way that the harness did
            not write (see `check_writable`), or the cache still does not verify afterwards.
        ValueError: `simulation` comes from another config.
    """
    kind = cache_kind(pipeline)
    folder = pipeline.cache_dir
    sims = list(config.all_sims if sims is None else sims)
    check_writable(folder, kind, config, sims)  # before anything is created, removed or simulated
    folder.mkdir(parents=True, exist_ok=True)
    removed = remove_leftovers(folder, kind)
    before = verify_cache(folder, kind, config, sims)
    if before.foreign_files:  # appeared since the check
        raise CacheError(before.foreign_message())
    rebuilt = before.bad_sims
    if rebuilt:
        if simulation is None:
            simulation = simulate(config)
        elif config_digest(simulation.config) != config_digest(config):
            raise ValueError(f"`simulation` was made from config {config_digest(simulation.config)}, the cache is for "
                             f"{config_digest(config)}; expected the simulation of `config`")
        logger.info("%s: %d of %d sims to write (%s)", folder, len(rebuilt), len(sims),
                    ', '.join(sorted({p.kind for p in before.problems})))
        write_cache(pipeline, simulation, rebuilt, progress, record=True)
    after = verify_cache(folder, kind, config, sims)
    after.raise_if_failed()
    return BuildResult(before, rebuilt, after, removed)


def check_writable(folder: Path, pipeline: PipelineLike, config: ScenarioConfig | None = None,
                   sims: Sequence[int] | None = None) -> CacheReport:
    """Checks that `build_cache` may complete this folder: it writes only where it wrote before.

    Returns:
        The verification of the folder as it is (a folder that does not exist yet is fine).

    Raises:
        CacheError: `folder` is not a folder; its `manifest.json` is unreadable, not the harness's or of the other
            pipeline; or a sim file to be written is there but not recorded in the manifest (a user's file). Each names
            the file; nothing is changed.
    """
    kind = cache_kind(pipeline)
    folder = Path(folder)
    if (folder.is_symlink() and not folder.exists()) or (folder.exists() and not folder.is_dir()):
        raise CacheError(f"{folder}: cache folder is not a folder")
    report = verify_cache(folder, kind, config, sims)
    if not folder.exists():
        return report
    _manifest_for_writing(folder, kind)
    foreign = report.foreign_message()
    if foreign:
        raise CacheError(foreign)
    return report


def repair_cache(folder: Path, pipeline_cls: type[AbstractPipeline], config: ScenarioConfig,
                 simulation: Simulation | None = None, progress: Callable[[int], None] | None = None) -> BuildResult:
    """`build_cache` for a folder given by path: rewrites the missing and bad sims of `config`, nothing else."""
    return build_cache(pipeline_cls(Path(folder), config.data.rollout_steps), config, simulation, progress=progress)


def open_cache(pipeline: AbstractPipeline, sims: Sequence[int], config: ScenarioConfig | None = None) -> CacheReport:
    """Verifies the cache of `sims`, then opens it with `pipeline`.

    Raises:
        CacheError: naming every bad file (see `CacheReport.summary`), before anything is loaded.
    """
    report = verify_cache(pipeline.cache_dir, pipeline, config, sims)
    report.raise_if_failed()
    pipeline.open(sims)
    return report
