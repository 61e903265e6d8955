"""`run_training`: the everyday training run of a scenario on the pipeline its config names (`data.pipeline`).

What the migration plan spelt `python run.py --config-name=burgers.yaml use_phiml_data=true`: build or reuse the
chosen pipeline's cache (`harness.cache.build.build_cache`, verified against its manifest), train the shared model for
`trainer.epochs` epochs on the harness's seeded batch plans, validate after each epoch, and write into `out`:

    train_log.csv            one row per epoch: epoch, steps, train_loss (mean), val_loss, seconds, pipeline, device
    loss.png                 training loss per step and per epoch, validation loss per epoch
    checkpoints/epoch_XXX.pt weights, optimizer state and the log after each epoch (`resume=True` continues the last)

Both pipelines are driven by the same plan of epoch `e`, `make_plan(..., seed=config.seed, epoch=e)`, so flipping
`data.pipeline` changes the data path and nothing else: the losses are bitwise equal on CPU (the compare run proves
the batches equal). A resumed run restores weights and optimizer state exactly and continues with the plan of the
next epoch, so it is bitwise the run that was never interrupted.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from phiml import math as pmath
from phiml.math import Tensor
from tqdm import tqdm

from harness import model
from harness.atomic import atomic_path
from harness.config import ScenarioConfig
from harness.errors import ConfigError, HarnessError
from harness.pipeline import AbstractPipeline, BatchPlan, WindowKey
from harness.plan import make_plan
from harness.scale import IN_PROCESS, AbstractExecutor, stages

logger = logging.getLogger(__name__)
CHECKPOINTS = 'checkpoints'
LOG_NAME = 'train_log.csv'
PLOT_NAME = 'loss.png'
LOG_COLUMNS = ('epoch', 'steps', 'train_loss', 'val_loss', 'seconds', 'pipeline', 'device')
# what may change between a run and its resumption: the length of the run, the machine and the (equal) data path
RESUMABLE_KEYS = (('trainer', 'epochs'), ('trainer', 'device'), ('data', 'pipeline'))


@dataclass
class EpochRecord:
    """One row of `train_log.csv`."""
    epoch: int
    steps: int
    train_loss: float
    val_loss: float
    seconds: float
    pipeline: str
    device: str


@dataclass
class TrainingRunResult:
    """What `run_training` did.

    Attributes:
        out: The output folder.
        pipeline: `'legacy'` or `'phiml'`.
        device: The torch device trained on, e.g. `'cpu'`.
        history: One record per epoch, resumed epochs included.
        step_losses: The training loss of every step, resumed epochs included.
        resumed_from: Epochs already done when this call started (0: a fresh run).
        cache: What the cache build did: `{'folder', 'rebuilt', 'reused'}`.
    """
    out: Path
    pipeline: str
    device: str
    history: list[EpochRecord] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    cache: dict = field(default_factory=dict)

    @property
    def val_losses(self) -> list[float]:
        return [r.val_loss for r in self.history]

    @property
    def train_losses(self) -> list[float]:
        return [r.train_loss for r in self.history]


def resolve_device(requested: str) -> torch.device:
    """`trainer.device` as a torch device: `auto` is CUDA where torch sees a GPU, else the CPU.

    Raises:
        ConfigError: `cuda` asked for where torch sees no GPU.
    """
    if requested == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if requested == 'cuda' and not torch.cuda.is_available():
        raise ConfigError("`trainer.device` (='cuda'): torch sees no CUDA device here (torch.cuda.is_available() is "
                          "False); use trainer.device=cpu or auto")
    return torch.device(requested)


def to_device(batch, device: torch.device):
    """The batch (tensors or dicts of tensors) on `device`: the same tensors where they already are there, else one
    host-to-device copy of each (no intermediate numpy or PhiML conversion)."""
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    native = batch.native(batch.shape.names)
    if native.device == device or (device.type == native.device.type and device.index is None):
        return batch
    return pmath.wrap(native.to(device, non_blocking=True), batch.shape)


def window_plan(keys: Sequence[WindowKey], batch_size: int, seed: int, epoch: int) -> BatchPlan:
    """The validation plan: every window once, in order (`epoch` only labels it)."""
    keys = sorted(keys)
    return BatchPlan(seed, epoch, tuple(tuple(keys[i:i + batch_size]) for i in range(0, len(keys), batch_size)))


def run_training(config: ScenarioConfig, out: Path, pipeline_cls: type[AbstractPipeline], *,
                 cache_dir: Path | None = None, resume: bool = False, progress: bool = True,
                 simulation=None, executor: AbstractExecutor = IN_PROCESS) -> TrainingRunResult:
    """Trains the scenario's model on `pipeline_cls`'s cache; see the module doc for what is written.

    Args:
        config: The scenario; `data.pipeline` should name `pipeline_cls` (recorded, not enforced).
        out: Output folder (created).
        pipeline_cls: The pipeline to read the training data through.
        cache_dir: The pipeline's cache folder, built or completed as needed (default `out/cache/<pipeline>`).
        resume: Continue from the last checkpoint in `out/checkpoints`.
        progress: Show a progress bar on stderr.
        simulation: The scenario's simulation, if at hand (simulated only when the cache must be written).
        executor: Where the cache is built (`harness.scale`: by chunks of sims on Dask workers, each simulating its
            chunk; default: in this process).

    Raises:
        HarnessError: `out` cannot be written; `resume` without a checkpoint, or a checkpoint of another config;
            a fresh run into a folder holding checkpoints; a cache that cannot be built.
    """
    out = Path(out)
    _prepare(out)
    checkpoints = sorted((out / CHECKPOINTS).glob('epoch_*.pt'))
    if checkpoints and not resume:
        raise HarnessError(f"{out / CHECKPOINTS}: holds {len(checkpoints)} checkpoint(s) of an earlier run; pass "
                           f"--resume to continue it, or choose another --out")
    if resume and not checkpoints:
        raise HarnessError(f"--resume: no checkpoint in {out / CHECKPOINTS} (expected epoch_XXX.pt from an earlier run)")
    device = resolve_device(config.trainer.device)
    _seed_everything(config)
    pipeline = pipeline_cls(Path(cache_dir) if cache_dir else out / 'cache' / pipeline_cls.name, config.data.rollout_steps)
    built = stages.build_cache(executor, pipeline, config, simulation)
    cache = {'folder': str(pipeline.cache_dir), 'rebuilt': built.rebuilt, 'reused': built.skipped}
    pipeline.open(config.train_sims)
    val = None
    if config.val_sims:
        val = pipeline_cls(pipeline.cache_dir, config.data.rollout_steps)
        val.open(config.val_sims)

    layouts = pipeline.describe_file(config.train_sims[0])[0]
    channels = sum(max(1, len(layout.item_names)) for layout in layouts.values())  # 1 per scalar field
    net = model.make_network(config.model, channels, len(config.sim.resolution), seed=config.seed).to(device)
    optimizer = model.make_optimizer(net, config.trainer.learning_rate)
    result = TrainingRunResult(out, pipeline.name, str(device), cache=cache)
    if resume:
        _restore(checkpoints[-1], config, net, optimizer, device, result)
    keys = pipeline.window_keys()
    val_plan = window_plan(val.window_keys(), config.data.batch_size, config.seed, -1) if val else None
    first = result.resumed_from
    plans = [make_plan(keys, config.data.batch_size, seed=config.seed, epoch=e) for e in range(first, config.trainer.epochs)]
    with tqdm(total=sum(len(p) for p in plans), desc=f"train {config.name} on {pipeline.name} ({device})",
              disable=not progress, leave=False, file=sys.stderr, unit='step') as bar:
        for plan in plans:
            start = time.perf_counter()
            losses = []
            for batch in pipeline.batches(plan):
                losses.append(model.train_step(net, optimizer, to_device(batch, device)))
                bar.update(1)
                bar.set_postfix(epoch=plan.epoch + 1, loss=f"{losses[-1]:.4g}")
            val_loss = _validate(val, val_plan, net, device) if val else math.nan
            if not all(map(math.isfinite, losses)):
                logger.warning("epoch %d: non-finite training loss", plan.epoch + 1)
            result.step_losses += losses
            result.history.append(EpochRecord(plan.epoch + 1, len(losses), float(np.mean(losses)) if losses else math.nan,
                                              val_loss, time.perf_counter() - start, pipeline.name, str(device)))
            _save_checkpoint(out, config, net, optimizer, result)
            write_log(out / LOG_NAME, result.history)
            logger.info("epoch %d/%d: train %.6g, validation %.6g", plan.epoch + 1, config.trainer.epochs,
                        result.history[-1].train_loss, val_loss)
    write_log(out / LOG_NAME, result.history)
    plot_training(result, out / PLOT_NAME)
    return result


def _validate(pipeline: AbstractPipeline, plan: BatchPlan, net, device: torch.device) -> float:
    """Mean rollout loss over every validation window (batches weighted by their size)."""
    total, count = 0.0, 0
    for keys, batch in zip(plan.batches, pipeline.batches(plan)):
        total += model.evaluate(net, to_device(batch, device)) * len(keys)
        count += len(keys)
    return total / count if count else math.nan


def _prepare(out: Path) -> None:
    try:
        (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        probe = out / '.write-test'
        probe.write_text('')
        probe.unlink()
    except OSError as err:
        raise HarnessError(f"output folder {str(out)!r} cannot be written: {err.strerror or err}") from None


def _seed_everything(config: ScenarioConfig) -> None:
    """Nothing in training draws from the global generators, but a user's model might: fix them too."""
    torch.set_num_threads(config.trainer.torch_threads)
    random.seed(config.seed)
    np.random.seed(config.seed % 2 ** 32)
    torch.manual_seed(config.seed)


def _fingerprint(config: ScenarioConfig) -> dict:
    """The config a checkpoint belongs to, without what may change on resumption (`RESUMABLE_KEYS`)."""
    values = config.to_dict()
    for section, key in RESUMABLE_KEYS:
        values[section].pop(key)
    return values


def _save_checkpoint(out: Path, config: ScenarioConfig, net, optimizer, result: TrainingRunResult) -> Path:
    epoch = result.history[-1].epoch
    path = out / CHECKPOINTS / f"epoch_{epoch:03d}.pt"
    state = {'epoch': epoch, 'model': net.state_dict(), 'optimizer': optimizer.state_dict(),
             'step_losses': list(result.step_losses), 'history': [dataclasses.asdict(r) for r in result.history],
             'config': _fingerprint(config)}
    with atomic_path(path, '.pt') as tmp, open(tmp, 'wb') as f:
        torch.save(state, f)
    return path


def _restore(path: Path, config: ScenarioConfig, net, optimizer, device: torch.device, result: TrainingRunResult) -> None:
    try:
        state = torch.load(path, weights_only=True, map_location=device)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is the user's file to replace
        raise HarnessError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if state.get('config') != _fingerprint(config):
        changed = sorted(_changed_keys(state.get('config') or {}, _fingerprint(config)))
        raise HarnessError(f"{path}: written for another config (differs in {changed[:6]}); only "
                           f"{['.'.join(k) for k in RESUMABLE_KEYS]} may change on --resume")
    net.load_state_dict(state['model'])
    optimizer.load_state_dict(state['optimizer'])
    result.resumed_from = int(state['epoch'])
    result.step_losses = [float(x) for x in state['step_losses']]
    result.history = [EpochRecord(**row) for row in state['history']]
    logger.info("resumed from %s after epoch %d", path, result.resumed_from)


def _changed_keys(a: dict, b: dict, prefix: str = '') -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _changed_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}")
    return keys


def write_log(path: Path, history: Sequence[EpochRecord]) -> None:
    """`train_log.csv`: one row per epoch, columns `LOG_COLUMNS`, floats written exactly (`repr`)."""
    with atomic_path(path, '.csv') as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(LOG_COLUMNS)
        for record in history:
            writer.writerow([repr(v) if isinstance(v, float) else v for v in dataclasses.astuple(record)])


def read_log(path: Path) -> list[EpochRecord]:
    """The records of a `train_log.csv` written by `write_log`."""
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    return [EpochRecord(int(r['epoch']), int(r['steps']), float(r['train_loss']), float(r['val_loss']),
                        float(r['seconds']), r['pipeline'], r['device']) for r in rows]


def plot_training(result: TrainingRunResult, path: Path) -> None:
    """`loss.png`: the training loss of every step, its mean per epoch, and the validation loss per epoch."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = np.arange(1, len(result.step_losses) + 1)
    ax.plot(steps, result.step_losses, lw=1, alpha=.6, label='training loss per step')
    ends = np.cumsum([r.steps for r in result.history])
    ax.plot(ends, result.train_losses, 'o-', label='training loss, epoch mean')
    if any(math.isfinite(v) for v in result.val_losses):
        ax.plot(ends, result.val_losses, 's-', label='validation loss')
    ax.set_yscale('log')
    ax.set_xlabel('step')
    ax.set_ylabel('rollout loss')
    ax.set_title(f"{result.pipeline} pipeline on {result.device}: {len(result.history)} epoch(s)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, '.png') as tmp:
        fig.savefig(tmp, dpi=100, format='png')
    plt.close(fig)
