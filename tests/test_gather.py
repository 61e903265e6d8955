"""Row gathers shared out over threads: the same array as one `np.take`, threads only for large results, fork-safe;
run gathers with streaming stores (the compiled `phiml_native._stream`) giving the same array as `np.take`."""
import multiprocessing
import platform
import shutil
import sys

import numpy as np
import pytest

from harness.pipeline import WindowKey
from phiml_native import PhiMLDataManager, PhiMLDataset, gather
from phiml_native.aligned import address


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


def test_the_streaming_extension_is_built_where_it_can_be():
    """setup.py builds it as optional; on x86-64 Linux with a C compiler, a missing module means a broken build."""
    if not (sys.platform == 'linux' and platform.machine() == 'x86_64' and (shutil.which('cc') or shutil.which('gcc'))):
        pytest.skip("the streaming extension is only expected on x86-64 Linux with a C compiler")
    from phiml_native import _stream
    assert _stream.STREAMING == 1 and gather.STREAMING


def _expected_runs(table, starts, run):
    return np.stack([table[s:s + run] for s in starts]) if len(starts) else np.empty((0, run, *table.shape[1:]), table.dtype)


@pytest.mark.parametrize('streaming', [False, True])
@pytest.mark.parametrize('columns, run, starts', [(512, 5, [0, 35, 7, 7, 20]), (13, 3, [37, 0, 1, 2]), (1, 1, [39, 0]),
                                                  (513, 40, [0]), (7, 2, [])])
def test_runs_equal_stacked_slices(monkeypatch, streaming, columns, run, starts):
    if streaming and not gather.STREAMING:
        pytest.skip("phiml_native._stream is not built")
    monkeypatch.setattr(gather, 'STREAMING', streaming)
    monkeypatch.setattr(gather, 'STREAM_MIN_BYTES', 0)
    monkeypatch.setattr(gather, 'STREAM_SHARE_BYTES', 64)  # several threads for the larger cases
    monkeypatch.setattr(gather, 'MIN_SHARE_BYTES', 64)
    table = np.random.default_rng(1).standard_normal((40, columns)).astype(np.float32)  # rows of 4 .. 2052 bytes
    result = gather.take_runs(table, np.asarray(starts, np.int64), run)
    assert result.shape == (len(starts), run, columns) and result.flags.c_contiguous
    assert np.array_equal(result, _expected_runs(table, starts, run))


needs_stream = pytest.mark.skipif(gather._gather_runs is None, reason="phiml_native._stream is not built")


@needs_stream
@pytest.mark.parametrize('stream', [False, True])
@pytest.mark.parametrize('shift', [0, 1, 3, 8, 15])
def test_runs_into_unaligned_memory(shift, stream):
    """Streaming stores need 16-byte aligned addresses: the first bytes up to one are copied plainly."""
    from phiml_native._stream import gather_runs
    table = np.arange(40 * 100, dtype=np.uint8).reshape(40, 100)
    backing = np.zeros(3 * 2 * 100 + 32, np.uint8)
    out = backing[shift:shift + 3 * 2 * 100]
    gather_runs(out, table, np.array([38, 0, 17], np.int64), 100, 2, stream)
    assert np.array_equal(out.reshape(3, 2, 100), _expected_runs(table, [38, 0, 17], 2))
    assert not backing[:shift].any() and not backing[shift + 600:].any()  # nothing written outside `out`


@needs_stream
@pytest.mark.parametrize('distance', [0, 8, 16, 31, 63, 64, 2048])
def test_runs_at_every_distance_modulo_4096(distance):
    """Runs 1-63 bytes past their source modulo 4096 are streamed instead of `memcpy`'d (slow there): same bytes."""
    from phiml_native._stream import gather_runs
    table = np.random.default_rng(3).integers(0, 255, (40, 4096), np.uint8)
    backing = np.zeros(2 * 3 * 4096 + 8192, np.uint8)
    start = (address(table) + distance - address(backing)) % 4096
    out = backing[start:start + 2 * 3 * 4096]
    assert (address(out) - address(table)) % 4096 == distance
    gather_runs(out, table, np.array([5, 36], np.int64), 4096, 3, False)
    assert np.array_equal(out.reshape(2, 3, 4096), _expected_runs(table, [5, 36], 3))


@needs_stream
@pytest.mark.parametrize('starts, error, words', [([39], IndexError, 'starts at row 39'), ([-1], IndexError, 'row -1'),
                                                  ([0, 1, 2], ValueError, 'out holds')])
def test_streamed_runs_refuse_what_does_not_fit(starts, error, words):
    from phiml_native._stream import gather_runs
    table = np.zeros((40, 4), np.float32)
    out = np.full((2, 2, 4), 7, np.float32)
    with pytest.raises(error, match=words):
        gather_runs(out, table, np.asarray(starts, np.int64), 16, 2, True)
    assert (out == 7).all()  # checked before anything is copied


@needs_stream
def test_streamed_runs_need_contiguous_buffers():
    from phiml_native._stream import gather_runs
    table = np.zeros((40, 4), np.float32)
    with pytest.raises((BufferError, TypeError, ValueError)):
        gather_runs(np.zeros((2, 2, 4), np.float32)[:, :, ::2], table, np.zeros(1, np.int64), 16, 2, True)
    with pytest.raises((BufferError, TypeError, ValueError)):
        gather_runs(np.zeros((2, 2, 4), np.float32), table[:, ::2], np.zeros(1, np.int64), 8, 2, True)


def test_dataset_batches_equal_streamed_and_taken(cache_dirs, tiny_config, monkeypatch):
    if not gather.STREAMING:
        pytest.skip("phiml_native._stream is not built")
    dataset = PhiMLDataset(PhiMLDataManager(cache_dirs['phiml']), tiny_config.train_sims, tiny_config.data.rollout_steps)
    keys = [WindowKey(sim, t0) for sim in tiny_config.train_sims for t0 in range(dataset.windows_per_sim)][::-1]
    monkeypatch.setattr(gather, 'STREAMING', False)
    taken = dataset.gather(keys)
    monkeypatch.setattr(gather, 'STREAMING', True)
    monkeypatch.setattr(gather, 'STREAM_MIN_BYTES', 0)
    streamed = dataset.gather(keys)
    for name in ('initial_state', 'targets'):
        a, b = taken[name], streamed[name]
        assert np.array_equal(a.numpy(a.shape.names), b.numpy(a.shape.names))


def test_without_the_extension_runs_are_taken(monkeypatch):
    """An install without a C compiler has no `phiml_native._stream`: `take_runs` then gives the same array by
    `np.take`."""
    import importlib
    table = np.random.default_rng(2).standard_normal((40, 300)).astype(np.float32)
    starts = np.array([0, 30, 9], np.int64)
    try:
        monkeypatch.setitem(sys.modules, 'phiml_native._stream', None)  # the import raises ImportError
        importlib.reload(gather)
        assert not gather.STREAMING and gather._gather_runs is None
        monkeypatch.setattr(gather, 'STREAM_MIN_BYTES', 0)
        assert np.array_equal(gather.take_runs(table, starts, 10), _expected_runs(table, starts, 10))
    finally:
        monkeypatch.undo()
        importlib.reload(gather)


@pytest.mark.parametrize('table_offset', [0, 16, 32, 48])
@pytest.mark.parametrize('columns', [512, 2048])  # rows of 2 KB (copied by rep movsb) and 8 KB
def test_batches_are_placed_at_their_tables_address_modulo_64(monkeypatch, table_offset, columns):
    """A batch 1-31 bytes past its table modulo 4096 was gathered 10-12x slower (phiml_native.aligned): wherever the
    table lies, a batch of rows copied by `rep movsb` lies at the same address modulo 64, whichever path gathers it."""
    backing = np.zeros(40 * columns + 32, np.float32)
    shift = (table_offset - address(backing)) % 64 // 4
    table = backing[shift:shift + 40 * columns].reshape(40, columns)
    table[...] = np.arange(40)[:, None]
    assert address(table) % 64 == table_offset
    for rows in (np.arange(3), np.arange(40)[::-1]):  # one thread; several threads (shares below)
        monkeypatch.setattr(gather, 'MIN_SHARE_BYTES', 4096 if len(rows) > 3 else 2 ** 30)
        batch = gather.take_rows(table, rows)
        assert (address(batch) - address(table)) % 64 == 0 and np.array_equal(batch, table[rows])
