"""Row gathers (`np.take` along the first axis) shared out over threads when the result is large.

A batch gather copies rows with ordinary stores: one thread runs at ~1.5x the time of a streamed copy of the same bytes
and leaves a second core idle. `np.take` releases the GIL, so each thread takes a contiguous share of the rows into its
own slice of the result. On a 2-core VM (AMD EPYC, 32 MiB L3), two threads gathered 4-10 MB batches 1.2-1.4x faster
than one, and 2.6 MB batches 0.9x (the hand-off costs ~0.1 ms, and a 10 MB table stays in the cache): so shares of less
than `MIN_SHARE_BYTES` stay on the calling thread. The result is the same array either way; the worker threads live
as long as the process (re-created after a `fork`, whose child has none).

Right after CPU-bound torch work, torch's OpenMP threads spin for a while and a gather thread competes with them: a
gather between small convolutions on 2 cores took ~15 % longer with two threads than with one. Against a 128x128 train
step on the CPU (~2.5 s for a batch of 16) either is ~0.1 %; on a GPU the CPU is free and the threads pay off in full.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MAX_THREADS = 4
MIN_SHARE_BYTES = 3 * 2 ** 19  # 1.5 MiB
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (pid that made it, pool)


def take_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`np.take(table, rows, axis=0, mode='clip')` (rows known to be in range), on up to `threads()` threads.

    Args:
        table: C-contiguous 2-D array.
        rows: Int array of row indices.
    """
    shares = min(len(rows), table[:1].nbytes * len(rows) // MIN_SHARE_BYTES)
    if shares >= 2:
        shares = min(shares, threads())
    if shares < 2:
        return np.take(table, rows, axis=0, mode='clip')  # mode 'clip': 'raise' would copy through a buffer
    out = np.empty((len(rows), *table.shape[1:]), table.dtype)
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
