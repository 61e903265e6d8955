"""Training parity: the same network, from the same initial weights, trained on the same plans through both pipelines."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from harness import model
from harness.pipeline import AbstractPipeline, BatchPlan


@dataclass
class TrainingResult:
    """Per-step training losses and per-epoch validation losses of both pipelines.

    `max_rel_loss_diff` is the largest `|legacy - native| / max(|legacy|, |native|)` over all steps and validation
    epochs; `first_divergent_step` the first training step whose losses are not bitwise equal (None if none).
    """
    legacy_losses: list[float]
    native_losses: list[float]
    legacy_val: list[float] = field(default_factory=list)
    native_val: list[float] = field(default_factory=list)
    loss_rtol: float = 1e-5

    @property
    def steps(self) -> int:
        return min(len(self.legacy_losses), len(self.native_losses))

    @property
    def rel_diffs(self) -> list[float]:
        return [_rel(a, b) for a, b in zip(self.legacy_losses, self.native_losses)]

    @property
    def max_rel_loss_diff(self) -> float:
        diffs = self.rel_diffs + [_rel(a, b) for a, b in zip(self.legacy_val, self.native_val)]
        if len(self.legacy_losses) != len(self.native_losses):
            return float('inf')
        return max(diffs, default=0.0)

    @property
    def first_divergent_step(self) -> int | None:
        for step, (a, b) in enumerate(zip(self.legacy_losses, self.native_losses)):
            if a != b and not (math.isnan(a) and math.isnan(b)):
                return step
        return None if len(self.legacy_losses) == len(self.native_losses) else self.steps

    @property
    def passed(self) -> bool:
        return self.max_rel_loss_diff <= self.loss_rtol and all(map(math.isfinite, self.legacy_losses + self.native_losses))

    def __bool__(self) -> bool:
        return self.passed

    def describe(self) -> str:
        if self.first_divergent_step is None:
            text = f"{self.steps} steps: loss curves bitwise equal"
            val = max((_rel(a, b) for a, b in zip(self.legacy_val, self.native_val)), default=0.0)
            if val:
                text += (f"; validation losses differ: max relative difference {val:.3g} "
                         f"({'within' if val <= self.loss_rtol else 'beyond'} loss_rtol={self.loss_rtol:g})")
            nonfinite = sum(not math.isfinite(x) for x in self.legacy_losses + self.native_losses)
            if nonfinite:
                text += f"; {nonfinite} of {len(self.legacy_losses) + len(self.native_losses)} losses are NaN or Inf"
            return text
        state = 'within' if self.passed else 'beyond'
        return (f"{self.steps} steps: curves first differ at step {self.first_divergent_step}; max relative difference "
                f"{self.max_rel_loss_diff:.3g} ({state} loss_rtol={self.loss_rtol:g})")

    @property
    def loss_ratio(self) -> list[float]:
        """native / legacy per step (1.0 where both are equal)."""
        return [1.0 if a == b else (b / a if a else float('inf')) for a, b in zip(self.legacy_losses, self.native_losses)]

    def to_dict(self) -> dict:
        return {'steps': self.steps, 'legacy_losses': self.legacy_losses, 'native_losses': self.native_losses,
                'loss_ratio': self.loss_ratio,
                'legacy_val_losses': self.legacy_val, 'native_val_losses': self.native_val,
                'max_rel_loss_diff': self.max_rel_loss_diff, 'first_divergent_step': self.first_divergent_step}


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return float('inf')
    return abs(a - b) / max(abs(a), abs(b))


def train_both(legacy: AbstractPipeline, native: AbstractPipeline, plans: Sequence[BatchPlan], network,
               learning_rate: float, val: tuple[AbstractPipeline, AbstractPipeline, BatchPlan] | None = None, *,
               loss_rtol: float = 1e-5, progress: Callable[[int], None] | None = None) -> TrainingResult:
    """Trains a copy of `network` through each pipeline, epoch by epoch, interleaved; `network` stays untouched.

    Args:
        plans: One plan per epoch, the same for both.
        val: Validation pipelines (legacy, native) opened on the validation sims, and their plan.
        progress: Called with the number of steps after each pipeline's epoch.
    """
    nets = [model.clone_network(network), model.clone_network(network)]
    optimizers = [model.make_optimizer(net, learning_rate) for net in nets]
    losses: list[list[float]] = [[], []]
    val_losses: list[list[float]] = [[], []]
    for plan in plans:
        for i, pipeline in enumerate((legacy, native)):
            losses[i] += pipeline.train([plan], nets[i], optimizers[i])
            if progress:
                progress(len(plan))
            if val is not None:
                val_losses[i].append(validation_loss(val[i], val[2], nets[i]))
    return TrainingResult(losses[0], losses[1], val_losses[0], val_losses[1], loss_rtol)


def validation_loss(pipeline: AbstractPipeline, plan: BatchPlan, net) -> float:
    """Mean rollout loss over all windows of `plan` (batches weighted by their size)."""
    total, count = 0.0, 0
    for keys, batch in zip(plan.batches, pipeline.batches(plan)):
        total += model.evaluate(net, batch) * len(keys)
        count += len(keys)
    return total / count if count else float('nan')


@dataclass
class EnsembleResult:
    """Final-loss differences (native - legacy) of trainings from several seeds (weights and plans)."""
    seeds: list[int]
    legacy_final: list[float]
    native_final: list[float]

    @property
    def diffs(self) -> list[float]:
        return [n - l for l, n in zip(self.legacy_final, self.native_final)]

    @property
    def rel_diffs(self) -> list[float]:
        return [_rel(l, n) for l, n in zip(self.legacy_final, self.native_final)]

    def to_dict(self) -> dict:
        import statistics
        d = self.diffs
        return {'seeds': self.seeds, 'legacy_final': self.legacy_final, 'native_final': self.native_final,
                'final_loss_diff': d, 'mean_diff': statistics.fmean(d) if d else 0.0,
                'std_diff': statistics.stdev(d) if len(d) > 1 else 0.0, 'max_rel_diff': max(self.rel_diffs, default=0.0)}


def ensemble(legacy: AbstractPipeline, native: AbstractPipeline, keys, make_network: Callable[[int], object],
             make_plans: Callable[[int], Sequence[BatchPlan]], learning_rate: float, seeds: Sequence[int],
             progress: Callable[[int], None] | None = None) -> EnsembleResult:
    """Trains both pipelines from each seed (initial weights and plans drawn from it) and records the final losses.

    For pipelines that are close but not bitwise equal, the spread across seeds shows whether the difference matters.
    """
    legacy_final, native_final = [], []
    for seed in seeds:
        result = train_both(legacy, native, make_plans(seed), make_network(seed), learning_rate, progress=progress)
        legacy_final.append(result.legacy_losses[-1])
        native_final.append(result.native_losses[-1])
    return EnsembleResult(list(seeds), legacy_final, native_final)
