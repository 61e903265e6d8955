"""Zero-copy wrapping of native arrays as PhiML tensors whose shape is known in advance.

`phiml.math.wrap` re-derives and re-checks the shape on every call (50-100 µs in phiml 1.16.1), which is more than the
whole gather of a 32x32 batch. The data pipeline wraps thousands of arrays whose shapes repeat, so it builds each
`Shape` once (`shape_of`, cached) and wraps with `dense`, which checks only the sizes. The tensors are the same objects
`math.wrap` returns (a `Dense` with the same shape and backend); `tests/test_dataset_perf.py` pins that equivalence.
"""
from __future__ import annotations

import functools
from typing import Any, Tuple

from phiml import math
from phiml.backend import Backend, choose_backend
from phiml.math import Shape, Tensor
from phiml.math._tensors import Dense  # the class math.wrap instantiates; public API offers no pre-built-shape path

DIM_TYPES = {'batch': math.batch, 'spatial': math.spatial, 'channel': math.channel, 'instance': math.instance,
             'dual': math.dual}
DimSpec = Tuple[str, str, Any]  # (name, dim type name, size or tuple of item names)


@functools.lru_cache(maxsize=1024)
def shape_of(dims: Tuple[DimSpec, ...]) -> Shape:
    """The `Shape` of `dims`, in that order, built once per distinct spec.

    Args:
        dims: `(name, type, size_or_items)` per dim, type one of `'batch'`, `'spatial'`, `'channel'`, `'instance'`,
            `'dual'`; `size_or_items` is an int or a tuple of item names.

    Raises:
        KeyError: unknown dim type.
    """
    parts = [DIM_TYPES[kind](**{name: size}) for name, kind, size in dims]
    return math.concat_shapes(*parts) if parts else math.EMPTY_SHAPE


def dense(native, shape: Shape, backend: Backend | None = None, sizes: tuple | None = None) -> Tensor:
    """Wraps `native` (numpy array or torch tensor, dims in the order of `shape`) without copying it.

    Args:
        native: Array whose sizes equal `shape.sizes`.
        shape: Its dims, e.g. from `shape_of`.
        backend: The phiml backend of `native` when the caller knows it (saves `choose_backend`, ~10 µs).
        sizes: `shape.sizes` when the caller has it at hand (PhiML builds that tuple anew on each access).

    Raises:
        ValueError: the sizes of `native` differ from those of `shape`.
    """
    if tuple(native.shape) != (shape.sizes if sizes is None else sizes):
        raise ValueError(f"array of sizes {tuple(native.shape)} does not fit shape {shape} (sizes {shape.sizes})")
    return Dense(native, shape.names, shape, backend or choose_backend(native))
