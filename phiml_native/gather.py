"""Batch gathers (rows by `np.take`, or runs of rows), shared out over threads when the result is large.

A gather copies rows with ordinary stores: each destination cache line is first read from memory, then written, so one
thread runs at ~1.5x the time of a streamed copy of the same bytes and leaves a second core idle. `np.take` releases
the GIL, so each thread takes a contiguous share of the rows into its own slice of the result. On a 2-core VM (AMD
EPYC, 32 MiB L3), two threads gathered 4-10 MB batches 1.2-1.4x faster than one, and 2.6 MB batches 0.9x (the hand-off
costs ~0.1 ms, and a 10 MB table stays in the cache): so shares of less than `MIN_SHARE_BYTES` stay on the calling
thread. The result is the same array either way; the worker threads live as long as the process (re-created after a
`fork`, whose child has none).

Large batches are copied with streaming stores instead (`take_runs`, by the compiled `phiml_native._stream`), which
write whole cache lines past the cache without reading them first. glibc's `memcpy` does that by itself only for
copies beyond 3/4 of the shared cache size it finds, and on this VM it finds 256 MiB (`getconf LEVEL3_CACHE_SIZE`;
sysfs and `lscpu` say 32 MiB), so it streams nothing below 192 MiB. Epochs of strictly alternating streamed and
`np.take` gathers (24 pairs, a legacy epoch before each or not, all allocations aligned as below), time with
`np.take` over time streamed:

    10.5 MB batches (16 windows of 128x128, table 43 MB)  1.21-1.25     (64 windows of 64x64, table 11 MB)  1.30-1.32
     5.2 MB batches  (8 windows of 128x128)               1.11-1.24     (32 windows of 64x64)               1.04-1.09
     2.6 MB batches (16 windows of 64x64)                 0.80-0.93     0.66 MB (16 windows of 32x32)       0.81

Below a few MB the previous batch's memory, reused for the next, is still in the cache, so ordinary stores find
their lines there; hence `STREAM_MIN_BYTES`. Where the extension is not built (no C compiler at install), `take_runs` gives
the same array by `np.take`, at `np.take`'s speed.

Every array a gather writes or reads from here starts on a 64-byte boundary (`empty`). `np.take` copies each row
with glibc's `memmove`, which uses `rep movsb` for rows of 2 KB and more; on this AMD EPYC that ran 10-12x slower
whenever the destination lay 8-24 bytes past the source modulo 4096 (4K aliasing), and `malloc` puts a numpy array
16 bytes past the end of the previous one: an epoch of 32x32 batches took 5.5-9 ms instead of 1.3-2.5 ms whenever
the heap happened to lay out a batch that way (seen in 2 of 12 bench runs, until the allocations were aligned).
With both sides on 64-byte boundaries and rows a multiple of 64 bytes long, no row copy is ever in that range.

Right after CPU-bound torch work, torch's OpenMP threads spin for a while and a gather thread competes with them: a
gather between small convolutions on 2 cores took ~15 % longer with two threads than with one. Against a 128x128 train
step on the CPU (~2.5 s for a batch of 16) either is ~0.1 %; on a GPU the CPU is free and the threads pay off in full.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # built by setup.py; missing where no C compiler was found. Off x86-64 it only has memcpy: left unused there
    from ._stream import STREAMING as _STREAMING_STORES, gather_runs as _gather_runs
except ImportError:  # pragma: no cover - depends on the install
    _STREAMING_STORES, _gather_runs = 0, None

MAX_THREADS = 4
MIN_SHARE_BYTES = 3 * 2 ** 19  # 1.5 MiB
STREAMING = bool(_STREAMING_STORES)  # streaming stores for batches of at least STREAM_MIN_BYTES
STREAM_MIN_BYTES = 4 * 2 ** 20  # 4 MiB
STREAM_SHARE_BYTES = 4 * 2 ** 20  # 4 MiB per thread: a 10.5 MB batch on two
ALIGN = 64  # bytes: the boundary every gathered batch and gathered-from table starts on (see the module doc)
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (pid that made it, pool)


def empty(shape: tuple, dtype) -> np.ndarray:
    """`np.empty(shape, dtype)` whose data starts on an `ALIGN`-byte boundary (numpy's own start 16 bytes past one)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned(array: np.ndarray) -> bool:
    """Whether `array`'s data starts on an `ALIGN`-byte boundary."""
    return array.ctypes.data % ALIGN == 0


def take_runs(table: np.ndarray, starts: np.ndarray, run: int) -> np.ndarray:
    """Rows `s .. s + run - 1` of `table` for each `s` in `starts` (known to be in range), as one fresh array of
    shape `(len(starts), run, *table.shape[1:])`.

    Args:
        table: C-contiguous 2-D array.
        starts: Int array of the first row of each run.
        run: Rows per run.
    """
    count, row_bytes = len(starts), table.strides[0]
    nbytes = count * run * row_bytes
    if not STREAMING or nbytes < STREAM_MIN_BYTES:
        rows = (np.asarray(starts)[:, None] + np.arange(run)).ravel()
        return take_rows(table, rows).reshape(count, run, *table.shape[1:])
    out = empty((count, run, *table.shape[1:]), table.dtype)
    starts = np.ascontiguousarray(starts, np.int64)
    shares = max(1, min(count, nbytes // STREAM_SHARE_BYTES, threads()))
    bounds = np.linspace(0, count, shares + 1).astype(int)
    futures = [_pool().submit(_gather_runs, out[a:b], table, starts[a:b], row_bytes, run)
               for a, b in zip(bounds[1:-1], bounds[2:])]
    _gather_runs(out[:bounds[1]], table, starts[:bounds[1]], row_bytes, run)
    for future in futures:
        future.result()
    return out


def take_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`np.take(table, rows, axis=0, mode='clip')` (rows known to be in range), on up to `threads()` threads.

    Args:
        table: C-contiguous 2-D array.
        rows: Int array of row indices.
    """
    shares = min(len(rows), table[:1].nbytes * len(rows) // MIN_SHARE_BYTES)
    if shares >= 2:
        shares = min(shares, threads())
    out = empty((len(rows), *table.shape[1:]), table.dtype)
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
