"""What a run judges the pipelines against, built once and handed to the comparison, the diagnosis and the self-test."""
from __future__ import annotations

from dataclasses import dataclass

from harness.config import ScenarioConfig
from harness.data.simulate import Simulation
from harness.equivalence.diff import ToleranceMap
from harness.equivalence.identify import FrameIndex
from harness.pipeline import BatchPlan, WindowKey
from harness.plan import make_plans, window_keys


@dataclass(frozen=True)
class Expected:
    """The planned windows of the training sims, the batch plan of every epoch, the frames that identify a delivered
    window by its content, and the tolerance of each field.

    Attributes:
        keys: Every training window, in canonical order.
        plans: One plan per epoch, from `(config.seed, epoch)`.
        frames: Frame digests of the training and validation sims (`FrameIndex`): a window served from any sim, a
            validation sim too, is named by the sim it came from.
        tolerances: How equal each field's values must be.
    """
    keys: list[WindowKey]
    plans: list[BatchPlan]
    frames: FrameIndex
    tolerances: ToleranceMap

    @classmethod
    def of(cls, config: ScenarioConfig, simulation: Simulation) -> 'Expected':
        keys = window_keys(config.train_sims, config.windows_per_sim)
        cmp = config.compare
        return cls(keys, make_plans(keys, config.data.batch_size, seed=config.seed, epochs=config.trainer.epochs),
                   FrameIndex(simulation, config.all_sims),
                   ToleranceMap(cmp.tier, cmp.rtol, cmp.atol, cmp.fields, sorted(simulation.fields)))
