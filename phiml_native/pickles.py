"""Unpickling the `tree` and `specs` members of a `phiml.math.save` file without running code from the file: the
unpickler admits only numpy's object-array reconstruction, and the result must hold only plain containers and values."""
from __future__ import annotations

import functools
import io
import pickle
from typing import Any

import numpy as np

_ALLOWED_GLOBALS = {('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', '_reconstruct'),
                    ('numpy', 'ndarray'), ('numpy', 'dtype')}
_SCALARS = frozenset((str, bytes, int, float, bool, type(None)))


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
            but an object array of plain values (exact types).
    """
    try:
        array = _RestrictedUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, IndexError, KeyError) as err:
        raise ValueError(str(err)) from None
    if not isinstance(array, np.ndarray) or array.dtype != object:
        raise ValueError(f"the pickle holds a {type(array).__name__}, expected an object array")
    try:
        _check_plain([result := array.tolist()])
    except RecursionError:
        raise ValueError("its containers nest too deeply") from None
    return result


def _check_plain(node: Any) -> None:
    """Raises ValueError unless the container `node` holds only plain containers and values (exact types)."""
    kind = type(node)
    if kind is dict:
        children = [*node.keys(), *node.values()]
    elif kind is list or kind is tuple:
        children = node
    else:
        raise ValueError(f"it holds a {kind.__name__}, expected only plain containers and values")
    for child in children:
        if type(child) not in _SCALARS:
            _check_plain(child)
