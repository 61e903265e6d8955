"""Audit of each pipeline's own everyday shuffling (the order it serves when no harness plan drives it).

Per pipeline: every window key exactly once per epoch, none from outside the chosen sims, the count equal to the
closed form `len(sims) * (n_frames - rollout_steps)`; the same seed gives the same order, other seeds and other epochs
give other orders; training and validation sims never mix.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from harness.config import ScenarioConfig
from harness.pipeline import AbstractPipeline


@dataclass(frozen=True)
class AuditRow:
    pipeline: str
    check: str
    passed: bool
    detail: str


def _flat(batches) -> list:
    return [k for b in batches for k in b]


def audit_own_shuffling(pipeline_cls: type[AbstractPipeline], cache_dir: Path, config: ScenarioConfig,
                        epochs: int = 2) -> list[AuditRow]:
    """Audits `pipeline_cls`'s `own_epoch` on the cache in `cache_dir` (training and validation sims written)."""
    r, b, seed = config.data.rollout_steps, config.data.batch_size, config.seed
    name = pipeline_cls.name
    train = pipeline_cls(cache_dir, r)
    train.open(config.train_sims)
    expected = len(config.train_sims) * config.windows_per_sim
    rows = []
    for epoch in range(epochs):
        keys = _flat(train.own_epoch(seed, epoch, b))
        counts = Counter(keys)
        outside = sorted({k.sim for k in keys} - set(config.train_sims))
        repeated = [k for k, c in counts.items() if c > 1]
        ok = len(keys) == expected and not repeated and not outside and len(counts) == expected
        rows.append(AuditRow(name, f'epoch {epoch}: each window exactly once', ok,
                             f"{len(keys)} keys, {len(counts)} distinct, expected {expected} "
                             f"(= {len(config.train_sims)} sims x {config.windows_per_sim} windows)"
                             + (f"; {len(repeated)} repeated" if repeated else '')
                             + (f"; sims outside the chosen ones: {outside}" if outside else '')))
    again = pipeline_cls(cache_dir, r)
    again.open(config.train_sims)
    same = _flat(train.own_epoch(seed, 0, b)) == _flat(again.own_epoch(seed, 0, b))
    rows.append(AuditRow(name, 'same seed, same order', same, "two fresh instances, seed "
                         f"{seed}, epoch 0: {'identical' if same else 'different'} orders"))
    other_seed = _flat(train.own_epoch(seed + 1, 0, b)) != _flat(train.own_epoch(seed, 0, b))
    rows.append(AuditRow(name, 'other seed, other order', other_seed, f"seeds {seed} and {seed + 1}: "
                         f"{'different' if other_seed else 'IDENTICAL'} orders"))
    other_epoch = _flat(train.own_epoch(seed, 1, b)) != _flat(train.own_epoch(seed, 0, b))
    rows.append(AuditRow(name, 'other epoch, other order', other_epoch, f"epochs 0 and 1: "
                         f"{'different' if other_epoch else 'IDENTICAL'} orders"))
    if config.val_sims:
        val = pipeline_cls(cache_dir, r)
        val.open(config.val_sims)
        train_sims = {k.sim for k in _flat(train.own_epoch(seed, 0, b))}
        val_sims = {k.sim for k in _flat(val.own_epoch(seed, 0, b))}
        mixed = sorted(train_sims & val_sims)
        ok = not mixed and train_sims <= set(config.train_sims) and val_sims <= set(config.val_sims)
        rows.append(AuditRow(name, 'training and validation sims never mix', ok,
                             f"training draws sims {sorted(train_sims)}, validation {sorted(val_sims)}"
                             + (f"; shared: {mixed}" if mixed else '')))
    return rows


def audit_all(pipelines: Sequence[tuple[type[AbstractPipeline], Path]], config: ScenarioConfig) -> list[AuditRow]:
    return [row for cls, folder in pipelines for row in audit_own_shuffling(cls, folder, config)]


def rows_to_dicts(rows: Sequence[AuditRow]) -> list[dict]:
    return [asdict(r) for r in rows]
