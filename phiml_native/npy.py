"""The `.npy` members of a `phiml.math.save` archive, read without running code: headers, arrays, restricted pickles.

`phiml.math.load` unpickles the `tree` and `specs` members with `allow_pickle=True`, so a crafted file executes code.
Here pickles go through an unpickler that admits only numpy's own array reconstruction and plain containers, and the
unpickled structures are checked to hold nothing else. Headers are parsed with a strict pattern (numpy's own parser,
`ast.literal_eval`, costs ~30 µs per member), with numpy's parser as the fallback for any other spelling.
"""
from __future__ import annotations

import functools
import io
import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import CacheError

HEADER_READ = 4096  # bytes that hold any .npy header this reader accepts (phiml.math.save writes ~128)
_ALLOWED_GLOBALS = {
    ('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
}
_PLAIN = frozenset((dict, list, tuple, str, int, float, bool, type(None)))
_MAGIC = b'\x93NUMPY'
_HEADER = re.compile(r"\{'descr': '([<>|=]?[A-Za-z]\d*)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \}")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def header_size(prefix: bytes) -> int:
    """How many bytes the `.npy` header starting with `prefix` (its first 12 bytes) takes, at most `HEADER_READ`;
    `HEADER_READ` where `prefix` does not tell (`npy_header` then names the problem)."""
    if prefix[:6] == _MAGIC and len(prefix) >= 10 and prefix[6] == 1:
        return min(HEADER_READ, 10 + int.from_bytes(prefix[8:10], 'little'))
    if prefix[:6] == _MAGIC and len(prefix) >= 12 and prefix[6] in (2, 3):
        return min(HEADER_READ, 12 + int.from_bytes(prefix[8:12], 'little'))
    return HEADER_READ


def npy_header(path: Path, name: str, raw: bytes, size: int) -> tuple[tuple, bool, np.dtype, int]:
    """`(shape, fortran_order, dtype, header length)` of the `.npy` member `name` of `size` bytes starting with `raw`.

    Raises:
        CacheError: not a `.npy` member, an unknown version or dtype, or a size that the header does not announce.
    """
    if raw[:6] != _MAGIC or len(raw) < 10:
        raise CacheError(f"{path}: member {name!r} is not a .npy array")
    major = raw[6]
    if major == 1:
        start, length = 10, int.from_bytes(raw[8:10], 'little')
    elif major in (2, 3):
        start, length = 12, int.from_bytes(raw[8:12], 'little')
    else:
        raise CacheError(f"{path}: member {name!r} has .npy format version {major}, expected 1, 2 or 3")
    if start + length > len(raw):
        raise CacheError(f"{path}: member {name!r} has a {length}-byte .npy header, longer than the member or than "
                         f"the {HEADER_READ} bytes this reader accepts (phiml.math.save writes ~128)")
    parsed = _parse_header(raw[start:start + length])
    if parsed is None:  # an unusual spelling (e.g. structured dtypes): numpy's parser (ast.literal_eval, no code)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        parsed = reader(io.BytesIO(raw[8:start + length]))
    elif isinstance(parsed, str):
        raise CacheError(f"{path}: member {name!r} has dtype {parsed!r}, not a numpy dtype")
    shape, fortran, dtype = parsed
    if not dtype.hasobject and start + length + math.prod(shape) * dtype.itemsize != size:
        raise CacheError(f"{path}: member {name!r} is {size} bytes, its header announces "
                         f"{start + length + math.prod(shape) * dtype.itemsize} (truncated or corrupt)")
    return shape, fortran, dtype, start + length


@functools.lru_cache(maxsize=512)
def _parse_header(header: bytes) -> tuple[tuple, bool, np.dtype] | str | None:
    """`(shape, fortran_order, dtype)` of a `.npy` header in numpy's usual spelling; the descr string if it names no
    dtype; None for any other spelling. Cached: the members of a cache share a handful of distinct headers."""
    match = _HEADER.fullmatch(header.decode('latin1').rstrip())
    if not match:
        return None
    try:
        dtype = np.dtype(match[1])
    except TypeError:
        return match[1]
    return tuple(int(size) for size in match[3].replace(' ', '').split(',') if size), match[2] == 'True', dtype


def array_from(path: Path, name: str, data: bytes, shape: tuple, fortran: bool, dtype: np.dtype) -> np.ndarray:
    """A writable copy of the array whose bytes are `data`.

    Raises:
        CacheError: `data` is shorter or longer than the header says.
    """
    count = math.prod(shape)
    if len(data) != count * dtype.itemsize:
        raise CacheError(f"{path}: member {name!r} ends early (truncated file)")
    flat = np.frombuffer(data, dtype, count) if count else np.empty(0, dtype)
    return flat.reshape(shape, order='F' if fortran else 'C').copy()


def unpickle_member(path: Path, name: str, data: Any) -> Any:
    """The object array pickled in member `name` (its bytes after the header), as nested lists.

    Raises:
        CacheError: `data` is not a pickle, or it names any global but numpy's array reconstruction.
    """
    if not isinstance(data, bytes):
        raise CacheError(f"{path}: member {name!r} holds numbers, expected a pickled object array")
    try:
        return _unpickle(data)
    except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, ValueError, IndexError) as err:
        raise CacheError(f"{path}: refused to unpickle member {name!r}: {err}; a cache may hold only tensors "
                         f"and plain containers (dict, list, str, numbers)") from None


@functools.lru_cache(maxsize=64)
def _unpickle(data: bytes) -> Any:
    """Cached by content (the sims of one cache share their `tree` and `specs`); callers never mutate the result."""
    array = _RestrictedUnpickler(io.BytesIO(data)).load()
    if not isinstance(array, np.ndarray) or array.dtype != object:
        raise ValueError(f"the pickle holds a {type(array).__name__}, expected an object array")
    return array.tolist()


def check_plain(path: Path, obj: Any, where: str) -> None:
    """Refuses anything but plain containers and values (exact types: the unpickler can build no subclass anyway).

    Raises:
        CacheError: naming `where` and the type found.
    """
    pending = [obj]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind not in _PLAIN:
            raise CacheError(f"{path}: {where} holds a {kind.__name__}, expected only plain containers and values")
        if kind is dict:
            pending.extend(item.keys())
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)


def clear_caches() -> None:
    """Forgets parsed headers and unpickled structures."""
    _parse_header.cache_clear()
    _unpickle.cache_clear()
