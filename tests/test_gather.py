"""Row gathers shared out over threads: the same array as one `np.take`, threads only for large results, fork-safe."""
import multiprocessing

import numpy as np
import pytest

from harness.pipeline import WindowKey
from phiml_native import PhiMLDataManager, PhiMLDataset, gather


@pytest.fixture
def table():
    return np.random.default_rng(0).standard_normal((40, 512)).astype(np.float32)  # rows of 2 KB


@pytest.fixture
def submitted(monkeypatch):
    """Shares handed to worker threads, with the share size small enough that the table above is split."""
    monkeypatch.setattr(gather, 'MIN_SHARE_BYTES', 4096)
    calls = []
    pool = gather._pool()
    monkeypatch.setattr(gather, '_pool', lambda: type('Counting', (), {
        'submit': staticmethod(lambda *args: calls.append(len(args[2])) or pool.submit(*args))})())
    return calls


@pytest.mark.parametrize('rows', [[3], [5, 5, 0, 39, 12, 7, 7, 1], list(range(39, -1, -1)) * 2])
def test_same_array_as_one_take(table, submitted, rows):
    rows = np.asarray(rows)
    result = gather.take_rows(table, rows)
    assert result.flags.c_contiguous and result.dtype == table.dtype and not np.shares_memory(result, table)
    assert np.array_equal(result, np.take(table, rows, axis=0))
    shares = min(len(rows), table[:1].nbytes * len(rows) // 4096, gather.threads())
    assert len(submitted) == (shares - 1 if shares >= 2 else 0)  # the calling thread takes the first share itself
    assert sum(submitted) <= len(rows)


def test_small_results_stay_on_the_calling_thread(table, monkeypatch):
    monkeypatch.setattr(gather, '_pool', lambda: pytest.fail("a 16 KB gather was handed to a thread"))
    assert np.array_equal(gather.take_rows(table, np.arange(8)), table[:8])  # 8 rows of 2 KB < 2 shares of 1.5 MiB


def test_threads_follow_the_cpus_this_process_may_use():
    assert 1 <= gather.threads() <= gather.MAX_THREADS


def _gather_in_child(queue):
    table = np.arange(40 * 512, dtype=np.float32).reshape(40, 512)
    gather.MIN_SHARE_BYTES = 4096
    queue.put(float(gather.take_rows(table, np.arange(40)[::-1]).sum()))


def test_a_forked_child_gathers_with_threads_of_its_own(table, monkeypatch):
    monkeypatch.setattr(gather, 'MIN_SHARE_BYTES', 4096)
    gather.take_rows(table, np.arange(40))  # the parent's worker threads exist now; a fork does not copy them
    assert gather._POOL is not None or gather.threads() == 1
    context = multiprocessing.get_context('fork')
    queue = context.Queue()
    child = context.Process(target=_gather_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, "the child hung or failed gathering on the parent's (absent) threads"
    assert queue.get(timeout=5) == float(np.arange(40 * 512, dtype=np.float32).sum())


def test_dataset_batches_equal_with_and_without_threads(cache_dirs, tiny_config, monkeypatch):
    dataset = PhiMLDataset(PhiMLDataManager(cache_dirs['phiml']), tiny_config.train_sims, tiny_config.data.rollout_steps)
    keys = [WindowKey(sim, t0) for sim in tiny_config.train_sims for t0 in range(dataset.windows_per_sim)][::-1]
    single = dataset.gather(keys)
    monkeypatch.setattr(gather, 'MIN_SHARE_BYTES', 4096)
    shared = dataset.gather(keys)
    for name in ('initial_state', 'targets'):
        a, b = single[name], shared[name]
        assert np.array_equal(a.numpy(a.shape.names), b.numpy(a.shape.names))
