"""Unpickling the `tree` and `specs` members of a `phiml.math.save` file without running code from the file.

`phiml.math.load` unpickles them with `allow_pickle=True`, so a crafted file executes code. Here the unpickler admits
only numpy's object-array reconstruction, and the result must hold nothing but plain containers and values.
"""
from __future__ import annotations

import functools
import io
import pickle
from typing import Any

import numpy as np

_ALLOWED_GLOBALS = {('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', '_reconstruct'),
                    ('numpy', 'ndarray'), ('numpy', 'dtype')}
PLAIN = frozenset((dict, list, tuple, str, bytes, int, float, bool, type(None)))


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


@functools.lru_cache(maxsize=64)  # by content: the sims of one cache share their `tree` and `specs`
def unpickle_object_array(data: bytes) -> Any:
    """`.tolist()` of the object array pickled in `data`; callers must not mutate the (cached) result.

    Raises:
        ValueError: the pickle names a global other than numpy's array reconstruction, is malformed, or holds anything
            but an object array of plain values.
    """
    try:
        array = _RestrictedUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, IndexError, KeyError) as err:
        raise ValueError(str(err)) from None
    if not isinstance(array, np.ndarray) or array.dtype != object:
        raise ValueError(f"the pickle holds a {type(array).__name__}, expected an object array")
    result = array.tolist()
    problem = plain_problem(result)
    if problem:
        raise ValueError(problem)
    return result


def plain_problem(obj: Any) -> str | None:
    """What in `obj` is not a plain container or value (exact types), in words; None if nothing."""
    pending = [obj]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind not in PLAIN:
            return f"it holds a {kind.__name__}, expected only plain containers and values"
        if kind is dict:
            pending.extend(item.keys())
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)
    return None
