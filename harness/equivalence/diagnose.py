"""Diagnosis of a failing comparison: what kind of migration bug it is, and where it starts.

Kinds, tried in this order on one epoch's two batch streams:
  `batch count`        the native pipeline delivers more or fewer batches (e.g. the last partial batch dropped);
  `structure`          dims, dim types, item names, sizes or dtype differ (e.g. rollout one step short, float64);
  `layout`             the values become equal after an axis permutation or a vector-component swap (names the fix);
  `non-finite values`  the native batch holds NaN or Inf where legacy's values are finite (names field and window);
  `wrong simulation`   windows served from another sim at the planned t0 (their content names the sim they came from);
  `reorder`            the same windows, served in a different order;
  `different windows`  windows missing or extra (names them);
  `time offset`        an off-by-one in time: windows shifted by a frame, or targets offset from the initial state;
  `value transform`    native = a * legacy + b for the whole batch (e.g. data normalised twice);
  `numerical drift`    the same windows with small relative errors;
  `value change`       anything else.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Sequence

import numpy as np

from harness.equivalence.diff import Tolerance, ToleranceMap, compare_batches, flatten_batch
from harness.equivalence.identify import FrameIndex, frame_digest, field_of
from harness.pipeline import AbstractPipeline, BatchPlan, WindowKey

DRIFT_RTOL = 1e-4


@dataclass
class Diagnosis:
    """What kind of bug, in words, and the first divergent batch (epoch, index, its planned windows)."""
    kind: str
    summary: str
    epoch: int | None = None
    first_batch: int | None = None
    first_keys: list[WindowKey] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {'kind': self.kind, 'summary': self.summary, 'epoch': self.epoch, 'first_batch': self.first_batch,
                'first_keys': [str(k) for k in self.first_keys], 'details': self.details}


def batch_digest(batch: dict) -> bytes:
    """A digest of a batch's names, shapes, dtypes and bytes: equal digests mean identical batches."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in flatten_batch(batch):
        h.update(f"{name}{t.shape}{t.dtype}".encode())
        h.update(np.ascontiguousarray(t.numpy(t.shape.names)).tobytes())
    return h.digest()


def first_divergent(legacy: Sequence[dict], native: Sequence[dict]) -> int | None:
    """Bisects to the first batch index where the two streams differ (None if equal).

    Prefix equality is monotone (once a prefix differs, every longer one does), so a binary search over cumulative
    digests finds the first divergent batch with O(log n) prefix comparisons.
    """
    def cumulative(stream):
        h, out = hashlib.blake2b(digest_size=16), []
        for b in stream:
            h.update(batch_digest(b))
            out.append(h.copy().digest())
        return out
    a, b = cumulative(legacy), cumulative(native)
    n = min(len(a), len(b))
    index = bisect.bisect_left(range(n), True, key=lambda k: a[k] != b[k])
    if index < n:
        return index
    return None if len(a) == len(b) else n


def diagnose_epoch(legacy: AbstractPipeline, native: AbstractPipeline, plan: BatchPlan, frames: FrameIndex,
                   tolerance: Tolerance | ToleranceMap = Tolerance()) -> Diagnosis:
    """Reloads one epoch from both pipelines and classifies how they differ."""
    pairs = list(zip_longest(legacy.batches(plan), native.batches(plan)))
    a = [p[0] for p in pairs if p[0] is not None]
    b = [p[1] for p in pairs if p[1] is not None]
    return diagnose_streams(a, b, plan, frames, tolerance)


def diagnose_streams(a: Sequence[dict], b: Sequence[dict], plan: BatchPlan, frames: FrameIndex,
                     tolerance: Tolerance | ToleranceMap = Tolerance()) -> Diagnosis:
    """Classifies how the native stream `b` differs from the legacy stream `a` for `plan` (see module doc)."""
    first = first_divergent(a, b)
    if first is not None and first < min(len(a), len(b)):
        diffs = compare_batches(a[first], b[first], tolerance, plan.batches[first])
        if all(diffs):  # differs in bytes only within tolerance: look further
            later = [i for i in range(first + 1, min(len(a), len(b))) if not all(compare_batches(a[i], b[i], tolerance))]
            first = later[0] if later else (None if len(a) == len(b) else min(len(a), len(b)))
    where = dict(epoch=plan.epoch, first_batch=first, first_keys=list(plan.batches[first]) if first is not None and first < len(plan.batches) else [])
    if first is None:
        return Diagnosis('none', "no difference: every batch pair is equal", **where)
    if len(a) != len(b) and first >= min(len(a), len(b)):
        return _count(a, b, plan, where)
    diffs = compare_batches(a[first], b[first], tolerance, plan.batches[first])
    structural = [d for d in diffs if d.structure_errors]
    layout = _layout(a[first], b[first])  # before the structure: a transposed non-square grid also changes its shape
    if structural and not layout:
        return _structure(a[first], b[first], structural, where)
    if layout:
        return Diagnosis('layout', f"layout error: the values match after {layout}", **where)
    nonfinite = _nonfinite(a[first], b[first], where['first_keys'])
    if nonfinite:
        return Diagnosis('non-finite values', f"the native pipeline serves non-finite values the legacy data does not "
                         f"have: {nonfinite[0]}", details=nonfinite, **where)
    keys = [k for i, batch in enumerate(b) for k in frames.identify(batch, plan.batches[i] if i < len(plan.batches) else ())]
    planned = plan.keys()[:len(keys)]
    if None not in keys:
        wrong_sim = _wrong_sim(keys, planned)
        if wrong_sim:
            return Diagnosis('wrong simulation', wrong_sim, **where)
        if Counter(keys) == Counter(planned):
            moved = sum(1 for x, y in zip(keys, planned) if x != y)
            return Diagnosis('reorder', f"same windows in a different order: {moved} of {len(keys)} positions differ",
                             **where)
        offset = _window_offset(keys, planned)
        if offset:
            moved = next(i for i, (k, p) in enumerate(zip(keys, planned)) if k != p)
            return Diagnosis('time offset', f"off-by-one in time: every window is shifted by {offset:+d} frame(s) in t0 "
                             f"(e.g. planned {planned[moved]}, delivered {keys[moved]})", **where)
        missing, extra = sorted(set(planned) - set(keys)), sorted(set(keys) - set(planned))
        return Diagnosis('different windows', f"different windows: {len(missing)} missing, {len(extra)} extra",
                         details=[f"missing: {', '.join(map(str, missing[:10]))}", f"extra: {', '.join(map(str, extra[:10]))}"],
                         **where)
    target_offset = _target_offset(b[first], frames)
    if target_offset is not None and target_offset != 1:
        return Diagnosis('time offset', f"off-by-one in time: targets start {target_offset} frame(s) after the initial "
                         f"state (expected 1)", **where)
    failed = [d for d in diffs if not d]
    transform = _affine(a[first], b[first])
    if transform:
        return Diagnosis('value transform', f"native = {transform} (data scaled or normalised differently, e.g. "
                         f"normalised twice)", **where)
    worst = max(failed, key=lambda d: d.max_rel) if failed else None
    if worst is not None and worst.max_rel <= DRIFT_RTOL:
        return Diagnosis('numerical drift', f"same windows with numerical drift: max relative error {worst.max_rel:.3g} "
                         f"(would pass with rtol >= {worst.min_rtol:.3g})", details=[d.describe() for d in failed], **where)
    return Diagnosis('value change', "values differ in a way that matches no known bug pattern",
                     details=[d.describe() for d in failed], **where)


def _count(a, b, plan: BatchPlan, where: dict) -> Diagnosis:
    if len(b) < len(a):
        missing = plan.batches[len(b):len(a)]
        sizes = [len(k) for k in missing]
        partial = len(missing) == 1 and len(missing[0]) < len(plan.batches[0])
        what = "the last, partial batch is dropped" if partial else f"{len(missing)} batch(es) missing"
        return Diagnosis('batch count', f"native delivered {len(b)} of {len(a)} batches: {what} (sizes {sizes})",
                         details=[f"missing windows: {', '.join(str(k) for batch in missing for k in batch)[:400]}"], **where)
    return Diagnosis('batch count', f"native delivered {len(b)} batches, legacy {len(a)}: {len(b) - len(a)} extra", **where)


def _structure(a: dict, b: dict, structural, where: dict) -> Diagnosis:
    ta, tb = dict(flatten_batch(a)), dict(flatten_batch(b))
    notes = []
    for d in structural:
        x, y = ta.get(d.name), tb.get(d.name)
        note = d.describe()
        if x is not None and y is not None:
            if x.shape.names == y.shape.names and x.shape.sizes == y.shape.sizes and x.shape.item_names == y.shape.item_names \
                    and x.dtype != y.dtype:
                same = np.array_equal(x.numpy(x.shape.names).astype(np.float64), y.numpy(x.shape.names).astype(np.float64))
                note = f"{d.name}: dtype {y.dtype} instead of {x.dtype}" + (" (values equal after casting)" if same else "")
            elif 'time' in x.shape and 'time' in y.shape and x.shape.get_size('time') != y.shape.get_size('time'):
                rx, ry = x.shape.get_size('time'), y.shape.get_size('time')
                note = f"{d.name}: {ry} target frames instead of {rx} (rollout {'short' if ry < rx else 'long'} by {abs(rx - ry)})"
            elif set(x.shape.names) == set(y.shape.names) and 'vector' in x.shape and x.shape.get_item_names('vector') != y.shape.get_item_names('vector'):
                note = (f"{d.name}: vector item names {y.shape.get_item_names('vector')} instead of "
                        f"{x.shape.get_item_names('vector')}")
        notes.append(note)
    return Diagnosis('structure', f"structure differs: {notes[0]}", details=notes, **where)


def _layout(a: dict, b: dict) -> str | None:
    """The axis permutation / vector swap that makes `b` equal to `a`, in words; None if there is none."""
    for name, x in flatten_batch(a):
        y = dict(flatten_batch(b)).get(name)
        if y is None or x.shape.names != y.shape.names or sorted(x.shape.sizes) != sorted(y.shape.sizes) \
                or x.shape.item_names != y.shape.item_names or x.dtype != y.dtype:
            return None
        names = list(x.shape.names)
        xa, ya = x.numpy(names), y.numpy(names)
        if np.array_equal(xa, ya):
            continue
        spatial = [i for i, n in enumerate(names) if n in x.shape.spatial.names]
        vector = names.index('vector') if 'vector' in names else None
        for perm in itertools.permutations(spatial):
            for flip in ((False, True) if vector is not None else (False,)):
                if list(perm) == spatial and not flip:
                    continue
                axes = list(range(len(names)))
                for src, dst in zip(spatial, perm):
                    axes[src] = dst
                try:
                    candidate = np.transpose(ya, axes)
                except ValueError:
                    continue
                if flip:
                    candidate = np.flip(candidate, axis=vector)
                if candidate.shape == xa.shape and np.array_equal(candidate, xa):
                    words = []
                    if list(perm) != spatial:
                        words.append(' and '.join(f"{names[s]}<->{names[p]}" for s, p in zip(spatial, perm) if s < p)
                                     + " transposed")
                    if flip:
                        words.append(f"vector components reversed ({', '.join(x.shape.get_item_names('vector'))})")
                    return f"{' and '.join(words)} in {name!r}"
        return None
    return None


def _nonfinite(a: dict, b: dict, keys: Sequence[WindowKey]) -> list[str]:
    """Where `b` holds NaN or Inf and `a` a finite value, per tensor: counts and the first window and coordinates."""
    found = []
    ta = dict(flatten_batch(a))
    for name, y in flatten_batch(b):
        x = ta.get(name)
        if x is None or x.shape.names != y.shape.names or x.shape.sizes != y.shape.sizes:
            continue
        names = list(y.shape.names)
        xa, ya = x.numpy(names), y.numpy(names)
        if ya.dtype.kind != 'f':
            continue
        bad = ~np.isfinite(ya) & np.isfinite(xa)
        if not bad.any():
            continue
        index = np.unravel_index(int(np.argmax(bad)), bad.shape)
        coords = dict(zip(names, (int(i) for i in index)))
        window = keys[coords['batch']] if 'batch' in coords and coords['batch'] < len(keys) else None
        items = {n: y.shape.get_item_names(n) for n in names}
        at = ', '.join(f"{n}={items[n][i] if items[n] else i}" for n, i in coords.items() if n != 'batch')
        found.append(f"{name}: {int(np.isnan(ya[bad]).sum())} NaN, {int(np.isinf(ya[bad]).sum())} Inf in "
                     f"{int(bad.any(axis=tuple(range(1, bad.ndim))).sum()) if 'batch' in coords else 1} window(s), first "
                     f"in window {window} at {at} (legacy {float(xa[index]):.6g})")
    return found


def _wrong_sim(keys: Sequence[WindowKey], planned: Sequence[WindowKey]) -> str | None:
    """In words, when every window served in place of its planned one is another sim's window at the planned t0."""
    moved = [(p, k) for k, p in zip(keys, planned) if k != p]
    if not moved or not all(k.t0 == p.t0 and k.sim != p.sim for p, k in moved):
        return None
    swaps = Counter((p.sim, k.sim) for p, k in moved)
    shown = ', '.join(f"sim {served} in place of sim {wanted}" for wanted, served in sorted(swaps))
    return (f"windows served from the wrong simulation: {len(moved)} of {len(keys)} windows are another sim's frames at "
            f"the planned t0 (e.g. planned {moved[0][0]}, served {moved[0][1]}); sims served: {shown}")


def _window_offset(keys: Sequence[WindowKey], planned: Sequence[WindowKey]) -> int | None:
    """The one t0 offset shared by every moved window of the same sim. A window may stay put only where its shifted
    window does not exist (at a sim's end); one window swapped for another is not a shift of every window."""
    if not all(k.sim == p.sim for k, p in zip(keys, planned)):
        return None
    offsets = {k.t0 - p.t0 for k, p in zip(keys, planned) if k != p}
    if len(offsets) != 1:
        return None
    offset, existing = offsets.pop(), set(planned)
    if any(WindowKey(p.sim, p.t0 + offset) in existing for k, p in zip(keys, planned) if k == p):
        return None
    return offset


def _target_offset(batch: dict, frames: FrameIndex) -> int | None:
    initial, targets = field_of(batch['initial_state'], frames.field_name), field_of(batch['targets'], frames.field_name)
    if 'batch' not in initial.shape or 'time' not in targets.shape:
        return None
    order = [*initial.shape.spatial.names] + (['vector'] if 'vector' in initial.shape else [])
    first = initial.numpy(['batch', *order])
    rest = targets.numpy(['batch', 'time', *order])
    offsets = set()
    for i in range(first.shape[0]):
        start = frames.by_digest.get(frame_digest(first[i].astype(np.float32)))
        target = frames.by_digest.get(frame_digest(rest[i, 0].astype(np.float32)))
        if start is None or target is None or start[0] != target[0]:
            return None
        offsets.add(target[1] - start[1])
    wrong = offsets - {1}  # windows at a sim's end may come out right by accident
    return wrong.pop() if len(wrong) == 1 else (1 if offsets == {1} else None)


def _affine(a: dict, b: dict) -> str | None:
    """`'s * legacy + t'` (per tensor where the fits differ, e.g. per-field normalisation) when every tensor of the
    batch is such an affine map of its legacy counterpart and some map is not the identity; None otherwise."""
    fits = {}
    for name, x in flatten_batch(a):
        y = dict(flatten_batch(b)).get(name)
        if y is None or x.shape.names != y.shape.names or sorted(x.shape.sizes) != sorted(y.shape.sizes) \
                or x.shape.item_names != y.shape.item_names or x.dtype != y.dtype:
            return None
        fit = _affine_fit(x.numpy(x.shape.names).ravel().astype(np.float64), y.numpy(x.shape.names).ravel().astype(np.float64))
        if fit is None:
            return None
        fits[name] = fit
    if not fits or all(f == 'identity' for f in fits.values()):
        return None
    words = {name: 'legacy' if f == 'identity' else f"{f[0]:.6g} * legacy + {f[1]:.6g}" for name, f in fits.items()}
    if len(set(words.values())) == 1:
        return next(iter(words.values()))
    return '; '.join(f"{w} in {name!r}" for name, w in words.items())


def _affine_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | str | None:
    """(scale, shift) with y = scale * x + shift to within 1e-4 of |y|, `'identity'` for equal arrays, else None."""
    if x.size < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()) or np.ptp(x) == 0:
        return 'identity' if np.array_equal(x, y) else None
    if np.array_equal(x, y):
        return 'identity'
    scale, shift = np.polyfit(x, y, 1)
    residual = np.abs(scale * x + shift - y).max()
    magnitude = max(np.abs(y).max(), 1e-12)
    if residual > 1e-4 * magnitude:
        return None
    if abs(scale - 1) <= DRIFT_RTOL and abs(shift) <= DRIFT_RTOL * magnitude:
        return None  # indistinguishable from numerical drift
    return float(scale), float(shift)
