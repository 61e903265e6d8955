"""Batch gathers: runs of consecutive rows (a window's frames) or single rows, shared out over threads when large.

`take_runs` copies each run with one call of the compiled `phiml_native._stream` (`memcpy`, or streaming stores);
where that module is not built (no C compiler at install), it falls back on `take_rows`, one `np.take` of the runs'
rows: the same array either way. Each thread copies a contiguous share of the runs into its own slice of the result
(both release the GIL). On a 2-core VM (AMD EPYC, 32 MiB L3), two threads gathered 4-10 MB batches 1.2-1.4x faster
than one, and 2.6 MB batches 0.9x (the hand-off costs ~0.1 ms, and a 10 MB table stays in the cache): so shares of
less than `MIN_SHARE_BYTES` stay on the calling thread. The worker threads live as long as the process (re-created
after a `fork`, whose child has none).

An ordinary store first reads the destination's cache line from memory, so a gather runs at ~1.5x the time of a
streamed copy of the same bytes. Batches of `STREAM_MIN_BYTES` and more are copied with streaming stores, which write
whole lines past the cache. glibc's `memcpy` does that by itself only for copies beyond 3/4 of the shared cache size
it finds, and on this VM it finds 256 MiB (`getconf LEVEL3_CACHE_SIZE`; sysfs and `lscpu` say 32 MiB), so it streams
nothing below 192 MiB. Epochs of strictly alternating streamed and `np.take` gathers (24 pairs, a legacy epoch before
each or not), time with `np.take` over time streamed:

    10.5 MB batches (16 windows of 128x128, table 43 MB)  1.21-1.25     (64 windows of 64x64, table 11 MB)  1.30-1.32
     5.2 MB batches  (8 windows of 128x128)               1.11-1.24     (32 windows of 64x64)               1.04-1.09
     2.6 MB batches (16 windows of 64x64)                 0.80-0.93     0.66 MB (16 windows of 32x32)       0.81

Below a few MB the previous batch's memory, reused for the next, is still in the cache, so ordinary stores find
their lines there.

`memcpy` (and `np.take`, which calls it per row) copies blocks of ~2 KB and more with `rep movsb`, which ran 10-12x
slower whenever the destination lay 1-31 bytes past the source modulo 4096 (`phiml_native.aligned`); numpy's 16-byte
aligned allocations made that happen to whole bench sections at random (32x32 epochs of 5.5-9 ms instead of 1.3-2.5
ms, in 2 of 12 runs). The compiled gather streams such runs instead; `take_rows` places its result at the table's
address modulo 64. Against the `np.take` gather of before, the compiled one took 0.89-0.97x the time per epoch from
1-D to 128x128 frames.

Right after CPU-bound torch work, torch's OpenMP threads spin for a while and a gather thread competes with them: a
gather between small convolutions on 2 cores took ~15 % longer with two threads than with one. Against a 128x128 train
step on the CPU (~2.5 s for a batch of 16) either is ~0.1 %; on a GPU the CPU is free and the threads pay off in full.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .aligned import REP_MOVSB_MIN_BYTES, address, empty_for_copy

try:  # built by setup.py; missing where no C compiler was found. Off x86-64 it copies with memcpy only
    from ._stream import STREAMING as _STREAMING_STORES, gather_runs as _gather_runs
except ImportError:  # pragma: no cover - depends on the install
    _STREAMING_STORES, _gather_runs = 0, None

MAX_THREADS = 4
MIN_SHARE_BYTES = 3 * 2 ** 19  # 1.5 MiB
STREAMING = bool(_STREAMING_STORES)  # streaming stores for batches of at least STREAM_MIN_BYTES
STREAM_MIN_BYTES = 4 * 2 ** 20  # 4 MiB
STREAM_SHARE_BYTES = 4 * 2 ** 20  # 4 MiB per thread: a 10.5 MB batch on two
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (pid that made it, pool)


def take_runs(table: np.ndarray, starts: np.ndarray, run: int, table_address: int | None = None) -> np.ndarray:
    """Rows `s .. s + run - 1` of `table` for each `s` in `starts` (known to be in range), as one fresh array of
    shape `(len(starts), run, *table.shape[1:])`.

    With the compiled `phiml_native._stream`, each run is one copy, streamed from `STREAM_MIN_BYTES` of batch up and
    wherever `memcpy` would be slow; without it, `take_rows` of the runs' rows.

    Args:
        table: C-contiguous 2-D array.
        starts: Int array of the first row of each run.
        run: Rows per run.
        table_address: `aligned.address(table)` when the caller has it at hand (saves ~2 µs per call without the
            compiled module).
    """
    count, row_bytes = len(starts), table.strides[0]
    if _gather_runs is None:
        rows = (np.asarray(starts)[:, None] + np.arange(run)).ravel()
        return take_rows(table, rows, table_address).reshape(count, run, *table.shape[1:])
    nbytes = count * run * row_bytes
    stream = STREAMING and nbytes >= STREAM_MIN_BYTES
    out = np.empty((count, run, *table.shape[1:]), table.dtype)
    starts = np.ascontiguousarray(starts, np.int64)
    shares = min(count, nbytes // (STREAM_SHARE_BYTES if stream else MIN_SHARE_BYTES))
    if shares >= 2:  # threads() asks the OS: only for batches that may be shared out
        shares = min(shares, threads())
    bounds = np.linspace(0, count, shares + 1).astype(int) if shares >= 2 else (0, count)
    futures = [_pool().submit(_gather_runs, out[a:b], table, starts[a:b], row_bytes, run, stream)
               for a, b in zip(bounds[1:-1], bounds[2:])]
    _gather_runs(out[:bounds[1]], table, starts[:bounds[1]], row_bytes, run, stream)
    for future in futures:
        future.result()
    return out


def take_rows(table: np.ndarray, rows: np.ndarray, table_address: int | None = None) -> np.ndarray:
    """`np.take(table, rows, axis=0, mode='clip')` (rows known to be in range), on up to `threads()` threads, into an
    array placed for the copy (`aligned.empty_for_copy`) where rows are copied by `rep movsb`.

    Args:
        table: C-contiguous 2-D array.
        rows: Int array of row indices.
        table_address: `aligned.address(table)` when the caller has it at hand (saves ~2 µs per call).
    """
    shares = min(len(rows), table[:1].nbytes * len(rows) // MIN_SHARE_BYTES)
    if shares >= 2:
        shares = min(shares, threads())
    shape = (len(rows), *table.shape[1:])
    if table.strides[0] < REP_MOVSB_MIN_BYTES:
        out = np.empty(shape, table.dtype)
    else:
        out = empty_for_copy(shape, table.dtype, address(table) if table_address is None else table_address)
    if shares < 2:
        return np.take(table, rows, 0, out, 'clip')  # mode 'clip': 'raise' would copy through a buffer
    bounds = np.linspace(0, len(rows), shares + 1).astype(int)
    futures = [_pool().submit(np.take, table, rows[a:b], 0, out[a:b], 'clip') for a, b in zip(bounds[1:-1], bounds[2:])]
    np.take(table, rows[:bounds[1]], 0, out[:bounds[1]], 'clip')
    for future in futures:
        future.result()
    return out


def threads() -> int:
    """Threads a gather may use: the CPUs this process may run on, at most `MAX_THREADS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max(1, MAX_THREADS - 1), thread_name_prefix='phiml-gather'))
    return _POOL[1]
