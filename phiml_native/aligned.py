"""Arrays placed so that copying into them never hits the slow distances of `rep movsb`.

glibc's `memmove` copies blocks of ~2 KB and more with `rep movsb`, and so does the kernel when it copies a file from
the page cache into a buffer. On the 2-core AMD EPYC VM this was measured on, both ran 10-12x slower whenever the
destination lay 1-31 bytes past the source modulo 4096 (4K aliasing): a 512 KB read 12x slower, an epoch of 32x32
batches 5.5-9 ms instead of 1.3-2.5 ms. `malloc` places numpy's arrays on 16-byte boundaries at no particular offset,
so which copies were slow changed from run to run (2 of 12 bench runs had a slow batch-loading section). torch's
allocator aligns to 64 bytes, which is why the legacy pipeline never showed it.

`empty_for_copy(shape, dtype, source)` places the new array at the source's address (or file offset) modulo 64,
rounded down to 16 bytes: (destination - source) modulo 64 is then 0, or 49-63 for a source off a 16-byte boundary,
never 1-31; and so is every copy's distance, as long as the blocks copied are a multiple of 64 bytes long (frames of
floats usually are).
"""
from __future__ import annotations

import math

import numpy as np

REP_MOVSB_MIN_BYTES = 2048  # shorter blocks are copied by vector loops (glibc's threshold here: 2112 bytes)
_PLACE = 64  # bytes: distances are kept apart modulo this
_ALIGN = 16  # bytes: every array starts on such a boundary, as numpy's own do


def address(array: np.ndarray) -> int:
    """Where `array`'s data starts in memory."""
    return array.__array_interface__['data'][0]


def empty_for_copy(shape: tuple, dtype, source: int) -> np.ndarray:
    """`np.empty(shape, dtype)`, C-contiguous, starting on a 16-byte boundary at `source` modulo 64, rounded down to 16
    bytes; `source` is the address (or file offset) copies into it will come from."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + _PLACE, np.uint8)
    start = (source - source % _ALIGN - address(raw)) % _PLACE
    return raw[start:start + nbytes].view(dtype).reshape(shape)
