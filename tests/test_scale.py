"""Scale-out: executors, chunking, and every distributed stage giving exactly what the in-process run gives.

The chunked code paths run here twice: on `Chunked` (chunk tasks one after another in this process: fast, every
test) and on a real Dask cluster of two worker processes (marked slow; one cluster for the module).
"""
import os
import shutil
import signal
from pathlib import Path

import pytest

from harness.cache.manifest import MANIFEST_NAME, Manifest, sha256_file
from harness.cache.migrate import migrate_cache as migrate_here
from harness.cli.migrate import main as migrate_main
from harness.errors import CacheError, ConfigError
from harness.scale import InProcessExecutor, open_executor, split_sims
from harness.scale.migrate import migrate_cache
from legacy import LegacyPipeline
from phiml_native import NativePipeline
from built_caches import built  # noqa: F401  (fixture)

PIPES = {'legacy_cls': LegacyPipeline, 'native_cls': NativePipeline}


class Chunked(InProcessExecutor):
    """The distributed code paths (chunk tasks, client-side manifests) run one task after another in this process."""
    distributed = True

    @property
    def n_workers(self) -> int:
        return 2


def files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder with its bytes (the manifest parsed: its records, not its key order)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_same_cache(a: Path, b: Path):
    __tracebackhide__ = True
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for path in sorted(a.iterdir()):
        if path.name != MANIFEST_NAME:
            assert path.read_bytes() == (b / path.name).read_bytes(), path.name
    assert Manifest.load(a) == Manifest.load(b)


@pytest.fixture(scope='module')
def migrated_here(built, tmp_path_factory):
    target = tmp_path_factory.mktemp('here') / 'npz'
    migrate_here(built / 'legacy', target, **PIPES)
    return target


def test_split_sims_gives_contiguous_chunks_of_near_equal_size():
    assert split_sims(range(10), 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert split_sims([5, 6], 4) == [[5], [6]]
    assert split_sims([], 3) == []
    with pytest.raises(ValueError, match=r"`n_chunks` \(=0\) must be at least 1"):
        split_sims([1], 0)
    assert Chunked().chunks(list(range(9))) == [[0, 1, 2], [3, 4], [5, 6], [7, 8]]
    assert InProcessExecutor().chunks([3, 4, 5]) == [[3, 4, 5]]


def test_flags_are_checked_before_anything_starts():
    with pytest.raises(ConfigError, match=r"`--workers` \(=0\) must be a whole number of at least 1"):
        with open_executor(workers=0):
            pass
    with pytest.raises(ConfigError, match=r"`--workers` \(=2\) and `--scheduler` \(='tcp://h:1'\) exclude each other"):
        with open_executor(workers=2, scheduler='tcp://h:1'):
            pass
    with open_executor() as executor:
        assert executor.describe() == {'executor': 'in-process', 'scheduler': None, 'workers': 1}


def test_chunked_migration_equals_the_in_process_one(built, migrated_here, tmp_path):
    target = tmp_path / 'npz'
    report = migrate_cache(Chunked(), built / 'legacy', target, **PIPES)
    assert report.converted == [0, 1, 2, 3] and report.skipped == []
    assert_same_cache(target, migrated_here)
    (target / 'sim_000002.npz').write_bytes(b'damaged')
    again = migrate_cache(Chunked(), built / 'legacy', target, **PIPES)
    assert again.converted == [2] and again.skipped == [0, 1, 3]
    assert_same_cache(target, migrated_here)


def test_chunked_migration_refuses_sources_of_different_shapes(built, tmp_path):
    source = tmp_path / 'legacy'
    shutil.copytree(built / 'legacy', source)
    other = LegacyPipeline(tmp_path / 'other', 2)
    fields, meta = LegacyPipeline(source, 2).read_fields(1)
    other.write_fields(1, {name: t.time[:5] for name, t in fields.items()}, {**meta, 'n_frames': 5})
    shutil.copy(other.cache_file(1), source / 'sim_000001.pt')
    (source / MANIFEST_NAME).unlink()
    with pytest.raises(CacheError, match=r"sim_000001\.pt: fields velocity \(time=5, .*differ from sim_000000\.pt"):
        migrate_cache(Chunked(), source, tmp_path / 'npz', **PIPES)
    assert not (tmp_path / 'npz').exists()


# --- on a real cluster: a scheduler and two worker processes on this machine ---------------------------------------

@pytest.fixture(scope='module')
def cluster():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local, \
            Client(local) as client:
        yield local, client


def ran_on(local) -> set[str]:
    """The names of the tasks the cluster's scheduler has seen (key `migrate-3-1a2b3c4d` -> `migrate`)."""
    return set(local.scheduler.task_prefixes)


@pytest.mark.slow
def test_migrate_on_the_cluster_equals_in_process(built, migrated_here, cluster, tmp_path, capsys):
    local, _ = cluster
    code = migrate_main([str(built / 'legacy'), str(tmp_path / 'npz'), '--scheduler', local.scheduler_address,
                         '--no-progress'])
    out, err = capsys.readouterr()
    assert code == 0 and err == ''
    assert '(4 converted and verified bitwise, 0 already done)' in out
    assert_same_cache(tmp_path / 'npz', migrated_here)
    assert ran_on(local) >= {'describe-sources', 'migrate'}
