"""Injected bugs of the everyday path (a pipeline's own loader and trainer), judged by `harness.equivalence.everyday`.

Each wraps ANY pipeline through the interface, like `harness.selftest.bugs`; where a bug lives in the loader, its
trainer is the interface's default one (a step per batch of its own `everyday_epochs`), so training meets the bug too.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from phiml import math
from phiml.math import Tensor

from harness.equivalence.everyday import audit_everyday
from harness.pipeline import AbstractPipeline, Batch
from harness.report.verdict import everyday_check
from harness.selftest.bugs import DropLastPartial, InjectedBug


def _size(batch: Batch) -> int:
    first = batch['initial_state']
    first = first if isinstance(first, Tensor) else first[sorted(first)[0]]
    return first.shape.get_size('batch')


class EverydayEpochsAlike(InjectedBug):
    """The everyday loader shuffles with the seed alone: every epoch repeats the order of epoch 0 (a generator
    re-seeded at each epoch without the epoch)."""
    expected_kind = 'everyday path'
    judged_by = 'everyday'
    everyday_train = AbstractPipeline.everyday_train

    def everyday_epochs(self, batch_size, *, seed, epochs, **variant):
        for _ in range(epochs):
            yield from self.inner.everyday_epochs(batch_size, seed=seed, epochs=1, **variant)


class EverydayDropsLast(InjectedBug):
    """The everyday loader drops the last, smaller batch of every epoch (`drop_last=True`); the plan-driven path keeps
    it."""
    expected_kind = 'everyday path'
    judged_by = 'everyday'
    not_applicable = classmethod(DropLastPartial.not_applicable.__func__)
    everyday_train = AbstractPipeline.everyday_train

    def everyday_epochs(self, batch_size, *, seed, epochs, **variant):
        for batches in self.inner.everyday_epochs(batch_size, seed=seed, epochs=epochs, **variant):
            yield (batch for batch in batches if _size(batch) == batch_size)


class ReusedOutputBuffer(InjectedBug):
    """Every batch is written into one output buffer per tensor: batch k is overwritten when batch k + 1 is built (a
    consumer that keeps a batch, or a prefetching trainer, sees other data)."""
    expected_kind = 'batch lifetime'
    judged_by = 'everyday'
    everyday_train = AbstractPipeline.everyday_train

    def open(self, sims):
        super().open(sims)
        self.buffers: dict[tuple, np.ndarray] = {}

    def transform(self, batch: Batch) -> Batch:
        out = {}
        for key, value in batch.items():
            fields = value if isinstance(value, dict) else {None: value}
            reused = {name: self._into_buffer((key, name), t) for name, t in fields.items()}
            out[key] = reused if isinstance(value, dict) else reused[None]
        return out

    def _into_buffer(self, slot: tuple, t: Tensor) -> Tensor:
        array = t.numpy(t.shape.names)
        buffer = self.buffers.get(slot)
        if buffer is None or buffer.shape[1:] != array.shape[1:] or len(buffer) < len(array):
            buffer = self.buffers[slot] = np.empty_like(array)
        view = buffer[:len(array)]
        np.copyto(view, array)
        return math.wrap(torch.from_numpy(view), t.shape)

    def everyday_epochs(self, batch_size, *, seed, epochs, **variant):
        for batches in self.inner.everyday_epochs(batch_size, seed=seed, epochs=epochs, **variant):
            yield map(self.transform, batches)


class VariantReorders(InjectedBug):
    """A background-thread loader variant that hands batches out as they complete, not in order: under it each pair of
    batches is served swapped (the default variant is right)."""
    expected_kind = 'loader variant'
    judged_by = 'everyday'

    @classmethod
    def not_applicable(cls, frames, plan):
        if len(plan.batches) < 2:
            return "an epoch is one batch (all windows fit in data.batch_size): batches have no order to get wrong"
        return None

    def loader_variants(self) -> list[dict]:
        return [*self.inner.loader_variants(), {'background_threads': 2}]

    def everyday_epochs(self, batch_size, *, seed, epochs, background_threads=0, **variant):
        epochs_ = self.inner.everyday_epochs(batch_size, seed=seed, epochs=epochs, **variant)
        return (_pairs_swapped(batches) for batches in epochs_) if background_threads else epochs_


def _pairs_swapped(batches) -> Iterator[Batch]:
    waiting = None
    for batch in batches:
        if waiting is None:
            waiting = batch
        else:
            yield batch
            yield waiting
            waiting = None
    if waiting is not None:
        yield waiting


CATALOGUE: dict[str, type[InjectedBug]] = {
    'everyday epochs all alike': EverydayEpochsAlike,
    'everyday last batch dropped': EverydayDropsLast,
    'output buffer reused': ReusedOutputBuffer,
    'loader variant reorders': VariantReorders,
}


def judge_everyday(ctx, native: AbstractPipeline) -> tuple[list[str], str, str]:
    """The everyday audit of `native` (a `SelftestContext`'s native pipeline, clean or with a bug; its trainer is
    audited by the comparison itself, not here, where no bug concerns it): the failed checks,
    the diagnosis kind (of the first failing audit) and a summary, as `harness.selftest.run.Finding` takes them."""
    config, r = ctx.config, ctx.config.data.rollout_steps

    def open_fresh(sims: Sequence[int]) -> AbstractPipeline:
        fresh = ctx.native_cls(ctx.native_dir, r)
        fresh = type(native)(fresh) if isinstance(native, InjectedBug) else fresh
        fresh.open(sims)
        return fresh

    on_disk = [sim for sim in config.val_sims if ctx.native_cls(ctx.native_dir, r).cache_file(sim).is_file()]
    rows = audit_everyday(native, open_fresh, config, ctx.simulation,
                          val_sims=on_disk if on_disk == config.val_sims else [], trainer=False)
    failed = [row for row in rows if not row.passed]
    if not failed:
        return [], 'none', f"no difference: {len(rows)} everyday audits pass"
    return [everyday_check(rows).name], failed[0].kind, f"{failed[0].check}: {failed[0].detail}"
