"""Injected bugs of what a cache carries and of what only some sizes or sims show, with their judges.

- metadata: `dt` read back as a numpy float32; a metadata key dropped (judge family `metadata`: the metadata of every
  training sim against the source, `harness.equivalence.metadata`);
- a window served from the wrong simulation (the next sim's frames at the same t0) and a NaN in served data (judged by
  the plan-driven comparison, family `batches`, and its diagnosis);
- a path taken only for large batches (family `sizes`: the size probe, `harness.equivalence.sizes`).
"""
from __future__ import annotations

import numpy as np
from phiml.math import Tensor

from harness.equivalence.metadata import carried_metadata, read_back
from harness.equivalence.sizes import memory_variants, probe_sizes
from harness.pipeline import AbstractPipeline, WindowKey
from harness.report.verdict import metadata_check, size_probe_check
from harness.selftest.bugs import InjectedBug, _map, _native, _rewrap


class MetadataFloat32(InjectedBug):
    """Every float of the metadata read back as a numpy float32 (e.g. metadata passed through a float32 array): a
    float64 `dt` no longer is one."""
    expected_kind = 'metadata type'
    judged_by = 'metadata'

    def describe_file(self, sim):
        layouts, metadata = self.inner.describe_file(sim)
        return layouts, _float32(metadata)

    def read_fields(self, sim):
        fields, metadata = self.inner.read_fields(sim)
        return fields, _float32(metadata)


def _float32(metadata: dict) -> dict:
    return {k: np.float32(v) if type(v) is float else v for k, v in metadata.items()}


class MetadataKeyDropped(InjectedBug):
    """A metadata key lost on the way (`dt` where there is one, else the first key): e.g. a writer that keeps only the
    keys it knows."""
    expected_kind = 'metadata missing'
    judged_by = 'metadata'

    def describe_file(self, sim):
        layouts, metadata = self.inner.describe_file(sim)
        return layouts, _dropped(metadata)

    def read_fields(self, sim):
        fields, metadata = self.inner.read_fields(sim)
        return fields, _dropped(metadata)


def _dropped(metadata: dict) -> dict:
    key = 'dt' if 'dt' in metadata else min(metadata, default=None)
    return {k: v for k, v in metadata.items() if k != key}


class WrongSimulation(InjectedBug):
    """Each window served from the next sim at the same t0 (a sim index off by one, wrapping at the last sim): every
    window still arrives once in all, so counting alone takes it for a reorder."""
    expected_kind = 'wrong simulation'

    @classmethod
    def not_applicable(cls, frames, plan):
        if len({key.sim for key in plan.keys()}) < 2:
            return "needs two or more training sims"
        return None

    def batch(self, plan, keys):
        sims = sorted({key.sim for key in self.inner.window_keys()})
        following = dict(zip(sims, sims[1:] + sims[:1]))
        return self.served(plan, [WindowKey(following[k.sim], k.t0) for k in keys])


class NaNServed(InjectedBug):
    """One NaN in a served target frame (the second window of the second batch, or the first window): e.g. a 0 / 0 in a
    per-window normalisation."""
    expected_kind = 'non-finite values'

    def batch(self, plan, keys):
        batch = self.served(plan, keys)
        if plan.batches.index(tuple(keys)) != min(1, len(plan.batches) - 1):
            return batch
        element = min(1, len(keys) - 1)

        def poison(key, t: Tensor) -> Tensor:
            if key != 'targets':
                return t
            values, shape = _native(t)
            values = values.copy()
            values[(slice(None),) * list(shape.names).index('batch') + (element,)].flat[0] = np.nan
            return _rewrap(values, shape)
        return _map(batch, poison)


class LargeBatchSorted(InjectedBug):
    """Batches of more than half of all windows take a second path that sorts the keys for sequential reads and does
    not restore their order: the plan's batches are right, one batch of all windows is not."""
    expected_kind = 'size-gated'
    judged_by = 'sizes'

    def batch(self, plan, keys):
        if 2 * len(keys) > len(self.inner.window_keys()):
            keys = sorted(keys)
        return self.served(plan, keys)


CATALOGUE: dict[str, type[InjectedBug]] = {
    'metadata float stored as float32': MetadataFloat32,
    'metadata key dropped': MetadataKeyDropped,
    'windows of the wrong simulation': WrongSimulation,
    'NaN in served data': NaNServed,
    'large batches take another path': LargeBatchSorted,
}


def like(native: AbstractPipeline, inner: AbstractPipeline) -> AbstractPipeline:
    """`inner` wrapped in the same injected bug as `native` (itself for a clean pipeline)."""
    return type(native)(inner) if isinstance(native, InjectedBug) else inner


def judge_metadata(ctx, native: AbstractPipeline) -> tuple[list[str], str, str]:
    """The metadata of every training sim, as `native` reads it back, against the source and the legacy cache."""
    sims, r = list(ctx.config.train_sims), ctx.config.data.rollout_steps
    makers = {ctx.legacy.name: lambda folder: ctx.legacy_cls(folder, r),
              native.name: lambda folder: like(native, ctx.native_cls(folder, r))}
    read = {p.name: read_back(p, sims, ctx.config.health) for p in (ctx.legacy, native)}
    existing = ctx.simulation.stored_metadata is not None
    report = carried_metadata(ctx.simulation, sims, makers, read,
                              source=(str(ctx.legacy_dir), ctx.legacy.name) if existing else None)
    check = metadata_check(report)
    return ([] if check else [check.name]), report.kind, report.detail


def judge_sizes(ctx, native: AbstractPipeline) -> tuple[list[str], str, str]:
    """The size probe of the first epoch: batch sizes 1 and all windows, and `native` in every memory mode."""
    r, sims = ctx.config.data.rollout_steps, list(ctx.config.train_sims)

    def opened(cls):
        pipeline = like(native, cls(ctx.native_dir, r))
        pipeline.open(sims)
        return pipeline
    variants = {name: (lambda cls=cls: opened(cls)) for name, cls in memory_variants(ctx.native_cls, ctx.config).items()}
    probe = probe_sizes(ctx.legacy, native, ctx.expected.plans[0], ctx.expected.frames, ctx.expected.tolerances,
                        variants)
    if probe:
        return [], 'none', probe.detail
    first = probe.failed[0]
    return [size_probe_check(probe).name], 'size-gated', (
        f"in {first.variant} ({first.batches} batch(es) of up to {first.batch_size} windows): {first.kind}: "
        f"{first.detail}")
