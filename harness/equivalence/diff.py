"""Strict, name-aware comparison of PhiML tensors and batches, returning result objects.

Structure first: dim names, dim types, item names, sizes and dtype must match exactly; a missing, extra, renamed or
re-typed dim is its own failure and is never broadcast away (`phiml.math.assert_close` would broadcast it). Then
values, in three tiers: identical (bitwise), equal (NaN equals NaN), close (`|a - b| <= atol + rtol * |b|`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
from phiml.math import Tensor

from harness.config import TIERS



@dataclass(frozen=True)
class Tolerance:
    """How equal values must be. `tier='identical'` ignores `rtol`/`atol`."""
    tier: str = 'identical'
    rtol: float = 0.0
    atol: float = 0.0

    def __post_init__(self):
        if self.tier not in TIERS:
            raise ValueError(f"`tier` (={self.tier!r}) must be one of {list(TIERS)}")
        if self.rtol < 0 or self.atol < 0:
            raise ValueError(f"`rtol` (={self.rtol}) and `atol` (={self.atol}) must be >= 0")


# torch.testing.assert_close's defaults: used by tier 'close' when neither rtol nor atol is given
DEFAULT_CLOSE = {'float16': (1e-3, 1e-5), 'bfloat16': (1.6e-2, 1e-5), 'float32': (1.3e-6, 1e-5), 'float64': (1e-7, 1e-7)}


def resolve_tolerance(tier: str, rtol: float | None, atol: float | None, dtype: str = 'float32') -> Tolerance:
    """The tolerance to apply: tier 'close' without rtol and atol (both None or 0) takes dtype-aware defaults."""
    if tier == 'close' and not rtol and not atol:
        rtol, atol = DEFAULT_CLOSE.get(dtype, DEFAULT_CLOSE['float32'])
    return Tolerance(tier, rtol or 0.0, atol or 0.0)


class ToleranceMap:
    """Per-tensor tolerances: the run-wide setting, overridden per field (`compare.fields.<field>`).

    Args:
        tier, rtol, atol: Run-wide.
        fields: Field name -> object with `tier`, `rtol`, `atol` (None = keep the run-wide value).
        field_names: The scenario's fields; with a single field, tensor `targets` belongs to it.
    """

    def __init__(self, tier: str = 'identical', rtol: float = 0.0, atol: float = 0.0, fields: dict | None = None,
                 field_names: Sequence[str] = ()):
        self.tier, self.rtol, self.atol = tier, rtol, atol
        self.fields = dict(fields or {})
        self.field_names = list(field_names)
        resolve_tolerance(tier, rtol, atol)  # validates

    def __call__(self, tensor_name: str, dtype: str = 'float32') -> Tolerance:
        field_name = tensor_name.split('/', 1)[1] if '/' in tensor_name else (
            self.field_names[0] if len(self.field_names) == 1 else None)
        override = self.fields.get(field_name)
        tier, rtol, atol = self.tier, self.rtol, self.atol
        if override is not None:
            tier = override.tier if override.tier is not None else tier
            rtol = override.rtol if override.rtol is not None else rtol
            atol = override.atol if override.atol is not None else atol
        return resolve_tolerance(tier, rtol, atol, dtype)

    def describe(self) -> dict:
        return {'tier': self.tier, 'rtol': self.rtol, 'atol': self.atol,
                'fields': {k: vars(v) if hasattr(v, '__dict__') else v for k, v in self.fields.items()}}


@dataclass
class TensorDiff:
    """The comparison of one tensor (e.g. `targets` or `targets/velocity`) of one batch.

    `__bool__` is `passed`. Statistics are over all elements; relative error is `|a - b| / max(|a|, |b|)` (0 where
    both are 0). `worst` names the coordinates of the largest absolute error, `worst_values` its (legacy, native).
    """
    name: str
    passed: bool
    identical: bool
    structure_errors: list[str] = field(default_factory=list)
    n_elements: int = 0
    n_mismatched: int = 0
    max_abs: float = 0.0
    mean_abs: float = 0.0
    median_abs: float = 0.0
    p99_abs: float = 0.0
    max_rel: float = 0.0
    mean_rel: float = 0.0
    median_rel: float = 0.0
    p99_rel: float = 0.0
    worst: dict[str, Any] | None = None
    worst_values: tuple[float, float] | None = None
    min_atol: float = 0.0
    min_rtol: float = 0.0

    def __bool__(self) -> bool:
        return self.passed

    @property
    def mismatch_fraction(self) -> float:
        return self.n_mismatched / self.n_elements if self.n_elements else (1.0 if not self.passed else 0.0)

    def describe(self) -> str:
        if self.structure_errors:
            return f"{self.name}: " + '; '.join(self.structure_errors)
        if self.passed:
            return f"{self.name}: {'identical' if self.identical else 'within tolerance'} ({self.n_elements} elements)"
        where = ', '.join(f"{k}={v}" for k, v in (self.worst or {}).items())
        a, b = self.worst_values or (float('nan'), float('nan'))
        return (f"{self.name}: {self.n_mismatched} of {self.n_elements} elements differ ({self.mismatch_fraction:.1%}); "
                f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} at {where} (legacy {a:.6g}, native {b:.6g}); "
                f"would pass with atol >= {self.min_atol:.3g} or rtol >= {self.min_rtol:.3g}")


def structure_errors(a: Tensor, b: Tensor) -> list[str]:
    """Every way the shapes of `a` (legacy) and `b` (native) differ, in words; empty when they match."""
    errors = []
    names_a, names_b = a.shape.names, b.shape.names
    missing = [n for n in names_a if n not in names_b]
    extra = [n for n in names_b if n not in names_a]
    if missing:
        errors.append(f"native lacks dim(s) {missing}")
    if extra:
        errors.append(f"native has extra dim(s) {extra}")
    if not missing and not extra and names_a != names_b:
        errors.append(f"dim order {names_b} differs from legacy {names_a}")
    for name in names_a:
        if name not in names_b:
            continue
        da, db = a.shape[name], b.shape[name]
        if da.dim_type != db.dim_type:
            errors.append(f"dim {name!r} is {_type_name(db)} in native, {_type_name(da)} in legacy")
        if da.size != db.size:
            errors.append(f"dim {name!r} has size {db.size} in native, {da.size} in legacy")
        items_a, items_b = a.shape.get_item_names(name), b.shape.get_item_names(name)
        if items_a != items_b:
            errors.append(f"dim {name!r} has item names {items_b} in native, {items_a} in legacy")
    if a.dtype != b.dtype:
        errors.append(f"dtype {b.dtype} in native, {a.dtype} in legacy")
    return errors


def _type_name(dim) -> str:
    return dim.dim_type.__name__ if hasattr(dim.dim_type, '__name__') else str(dim.dim_type)


def compare_tensors(a: Tensor, b: Tensor, tolerance: Tolerance = Tolerance(), name: str = 'tensor',
                    keys: Sequence | None = None) -> TensorDiff:
    """Compares `a` (legacy) with `b` (native): structure first, then values.

    Args:
        tolerance: Value tier and tolerances.
        name: Shown in messages.
        keys: The window key of each entry along `batch`, to name the worst element's window.
    """
    errors = structure_errors(a, b)
    if errors:
        return TensorDiff(name, passed=False, identical=False, structure_errors=errors)
    order = a.shape.names
    return compare_arrays(as_numpy(a, order), as_numpy(b, order), order, tolerance, name,
                          item_names={n: a.shape.get_item_names(n) for n in order}, keys=keys)


def as_numpy(t: Tensor, order: Sequence[str]) -> np.ndarray:
    """`t.numpy(order)` in the tensor's own precision (PhiML would cast float64 to its default float32)."""
    from phiml import math
    bits = getattr(t.dtype, 'bits', None)
    if t.dtype.kind is float and bits:
        with math.precision(bits):
            return t.numpy(order)
    return t.numpy(order)


def compare_arrays(x: np.ndarray, y: np.ndarray, names: Sequence[str], tolerance: Tolerance = Tolerance(),
                   name: str = 'tensor', item_names: dict | None = None, keys: Sequence | None = None) -> TensorDiff:
    """Value comparison of two arrays of one shape whose axes are `names`."""
    if x.shape != y.shape:
        return TensorDiff(name, False, False, [f"shape {y.shape} in native, {x.shape} in legacy"])
    identical = x.dtype == y.dtype and _bitwise_equal(x, y)
    n = x.size
    if identical:
        return TensorDiff(name, passed=True, identical=True, n_elements=n)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    both_nan = np.isnan(x64) & np.isnan(y64)
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
        abs_err = np.where(both_nan, 0.0, np.abs(x64 - y64))
        abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)  # NaN against a number, or inf - inf
        scale = np.maximum(np.abs(x64), np.abs(y64))
        rel_err = np.where(abs_err == 0, 0.0, abs_err / np.where(scale == 0, 1.0, scale))
        rel_err = np.where(np.isnan(rel_err), np.inf, rel_err)
        if tolerance.tier == 'close':
            ok = (abs_err <= tolerance.atol + tolerance.rtol * np.nan_to_num(np.abs(y64))) | both_nan
        else:  # 'equal' and 'identical' both need exact values; 'identical' already failed on the bytes above
            ok = abs_err == 0
    if tolerance.tier == 'identical':  # bit patterns: tells -0.0 from 0.0 and one NaN payload from another
        if x.dtype == y.dtype and x.dtype.kind in 'fiu':
            bits = np.dtype(f'u{x.dtype.itemsize}')
            ok = x.view(bits) == y.view(bits)
        else:
            ok = np.zeros(x.shape, bool)
    mismatched = int(n - np.count_nonzero(ok))
    flat = int(np.argmax(abs_err)) if n else 0
    worst_index = np.unravel_index(flat, x.shape) if n else ()
    worst = _coordinates(worst_index, names, item_names or {}, keys)
    with np.errstate(invalid='ignore'):  # quantiles of arrays holding inf
        stats = {f'{kind}_{stat}': float(f(err)) if n else 0.0
                 for kind, err in (('abs', abs_err), ('rel', rel_err))
                 for stat, f in (('max', np.max), ('mean', np.mean), ('median', np.median),
                                 ('p99', lambda e: np.quantile(e, .99)))}
    return TensorDiff(
        name, passed=mismatched == 0, identical=False, n_elements=n, n_mismatched=mismatched,
        max_abs=stats['abs_max'], mean_abs=stats['abs_mean'], median_abs=stats['abs_median'], p99_abs=stats['abs_p99'],
        max_rel=stats['rel_max'], mean_rel=stats['rel_mean'], median_rel=stats['rel_median'], p99_rel=stats['rel_p99'],
        worst=worst, worst_values=(float(x64[worst_index]), float(y64[worst_index])) if n else None,
        min_atol=float(abs_err.max()) if n else 0.0, min_rtol=float(rel_err.max()) if n else 0.0)


def _bitwise_equal(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two arrays of one dtype and shape hold the same bytes, element by element (strided views are compared
    in place, not copied)."""
    if x.dtype.kind in 'fiub' and x.dtype.itemsize in (1, 2, 4, 8):
        bits = np.dtype(f'u{x.dtype.itemsize}')
        return bool(np.array_equal(x.view(bits), y.view(bits)))
    return x.tobytes() == y.tobytes()


def _coordinates(index: tuple, names: Sequence[str], item_names: dict, keys: Sequence | None) -> dict[str, Any]:
    coords: dict[str, Any] = {}
    for name, i in zip(names, index):
        items = item_names.get(name)
        coords[name] = items[i] if items else int(i)
        if name == 'batch' and keys is not None and int(i) < len(keys):
            coords['window'] = str(keys[int(i)])
    return coords


def flatten_batch(batch: dict) -> Iterator[tuple[str, Tensor]]:
    """`('initial_state', T)`, `('targets', T)`, or with several fields `('targets/velocity', T)`."""
    for key in sorted(batch):
        value = batch[key]
        if isinstance(value, Tensor):
            yield key, value
        else:
            for field_name in sorted(value):
                yield f"{key}/{field_name}", value[field_name]


def compare_batches(legacy: dict, native: dict, tolerance: Tolerance | ToleranceMap = Tolerance(),
                    keys: Sequence | None = None) -> list[TensorDiff]:
    """Compares two batches tensor by tensor, by name; a tensor present in only one batch is a failure.

    Args:
        tolerance: One tolerance for all tensors, or a `ToleranceMap` resolving it per tensor and dtype.
    """
    a, b = dict(flatten_batch(legacy)), dict(flatten_batch(native))
    diffs = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            diffs.append(TensorDiff(name, False, False, [f"native batch has no {name!r}"]))
        elif name not in a:
            diffs.append(TensorDiff(name, False, False, [f"native batch has an extra {name!r}"]))
        else:
            tol = tolerance(name, str(a[name].dtype)) if isinstance(tolerance, ToleranceMap) else tolerance
            diffs.append(compare_tensors(a[name], b[name], tol, name, keys))
    return diffs
