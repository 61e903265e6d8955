"""Judges each pipeline's everyday path: what its own loader (`everyday_epochs`) and its own trainer
(`everyday_train`) really deliver when no harness plan drives them.

Every served window is identified by its content against the simulation (`FrameIndex`), never by what the pipeline
says it served. Over `compare.everyday_epochs` epochs: each window exactly once per epoch (count = training sims x
windows per sim), the last partial batch kept, epochs in different orders, the same seed bitwise repeated by a fresh
instance, another seed in another order, training and validation sims apart. What the trainer feeds the network is
recorded by a forward pre-hook, identified, and replayed through the plan-driven `train` on a clone of the same
network: the losses must agree. Batch lifetime: every batch (and every network input) is digested when received and
re-checked at the end, so a reused output buffer shows. Loader variants (worker processes, prefetching) must serve
batches bit-identical to the default variant.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from harness import model
from harness.config import ModelConfig, ScenarioConfig
from harness.data.simulate import Simulation
from harness.equivalence.identify import FrameIndex, frame_digest
from harness.equivalence.training import TrainingResult
from harness.pipeline import AbstractPipeline, Batch, BatchPlan, WindowKey
from harness.plan import make_plan, window_keys

EVERYDAY, LIFETIME, VARIANT = 'everyday path', 'batch lifetime', 'loader variant'  # the diagnosis kinds
# An order check that a correct shuffle can fail by chance (few windows: one order in n! repeats) looks at more shuffles,
# until a correct one repeating in all of them has a chance below this.
REPEAT_CHANCE = 1e-9
# the trainer audit's network: small, since what is fed decides whether two trainings agree, not the model's size
AUDIT_MODEL = ModelConfig(kind='conv_net', levels=1, filters=4)


@dataclass(frozen=True)
class EverydayRow:
    """One audit of one pipeline; `kind` names the class of bug a failure points at."""
    pipeline: str
    check: str
    passed: bool
    detail: str
    kind: str = EVERYDAY


def rows_to_dicts(rows: Sequence[EverydayRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def batch_digest(batch: Batch) -> bytes:
    """A digest of every tensor of `batch`: names, shape (item names included), dtype and values."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(batch):
        value = batch[key]
        for name, t in (sorted(value.items()) if isinstance(value, dict) else [(None, value)]):
            h.update(f"{key}/{name}:{t.shape}:{t.dtype}".encode())
            h.update(np.ascontiguousarray(t.numpy(t.shape.names)).tobytes())
    return h.digest()


@dataclass
class Served:
    """What one run of `everyday_epochs` served: per epoch and batch the windows identified by content (None where the
    content matches no simulated window) and the digest taken when the batch was received; the batches themselves
    when kept."""
    keys: list[list[list[WindowKey | None]]] = field(default_factory=list)
    digests: list[list[bytes]] = field(default_factory=list)
    kept: list[tuple[int, int, Batch]] = field(default_factory=list)

    def epoch_keys(self, epoch: int) -> list[WindowKey | None]:
        return [key for batch in self.keys[epoch] for key in batch] if epoch < len(self.keys) else []

    def sizes(self, epoch: int) -> list[int]:
        return [len(batch) for batch in self.keys[epoch]] if epoch < len(self.keys) else []

    @property
    def n_batches(self) -> int:
        return sum(map(len, self.digests))


def serve(pipeline: AbstractPipeline, batch_size: int, *, seed: int, epochs: int, frames: FrameIndex,
          variant: dict | None = None, keep: bool = False) -> Served:
    """Runs `pipeline.everyday_epochs` and identifies, digests (and with `keep` holds on to) every batch on arrival."""
    served = Served()
    for epoch, batches in enumerate(pipeline.everyday_epochs(batch_size, seed=seed, epochs=epochs, **(variant or {}))):
        served.keys.append([])
        served.digests.append([])
        for index, batch in enumerate(batches):
            served.keys[-1].append(frames.identify(batch))
            served.digests[-1].append(batch_digest(batch))
            if keep:
                served.kept.append((epoch, index, batch))
    return served


def shuffles_needed(n_windows: int) -> int:
    """How many shuffles must all repeat an order before the repeat counts as a bug: a correct shuffle of `n_windows`
    repeats a given order with chance 1 / n_windows!; 0 where there is one order only (one window or none)."""
    return 0 if n_windows < 2 else math.ceil(math.log(REPEAT_CHANCE) / -math.lgamma(n_windows + 1))


def expected_sizes(n_windows: int, batch_size: int) -> list[int]:
    """Batch sizes of an epoch of `n_windows` that keeps the last partial batch."""
    return [batch_size] * (n_windows // batch_size) + ([n_windows % batch_size] if n_windows % batch_size else [])


def _sizes(sizes: Sequence[int]) -> str:
    """`[16, 16, 16, 8]` as '3 x 16, 1 x 8'."""
    runs: list[list[int]] = []
    for size in sizes:
        if runs and runs[-1][1] == size:
            runs[-1][0] += 1
        else:
            runs.append([1, size])
    return ', '.join(f"{count} x {size}" for count, size in runs) or 'none'


def _coverage(name: str, title: str, keys: list, sims: Sequence[int], windows_per_sim: int) -> EverydayRow:
    """Each window of `sims` exactly once, nothing else, identified by content."""
    expected = len(sims) * windows_per_sim
    counts = Counter(k for k in keys if k is not None)
    unknown = sum(k is None for k in keys)
    outside = sorted({k.sim for k in counts} - set(sims))
    repeated = sum(1 for c in counts.values() if c > 1)
    ok = len(keys) == expected and not unknown and not outside and not repeated and len(counts) == expected
    detail = (f"{len(keys)} windows served, {len(counts)} distinct, expected {expected} (= {len(sims)} sims x "
              f"{windows_per_sim} windows)" + (f"; {unknown} match no simulated window" if unknown else '')
              + (f"; {repeated} repeated" if repeated else '') + (f"; from sims outside {list(sims)}: {outside}"
                                                                  if outside else ''))
    return EverydayRow(name, title, ok, detail)


def _first_difference(a: Served, b: Served) -> str | None:
    """Where two runs first differ (batch count or a batch's digest), None when every batch is bitwise equal."""
    if [len(d) for d in a.digests] != [len(d) for d in b.digests]:
        return f"batches per epoch {[len(d) for d in b.digests]} instead of {[len(d) for d in a.digests]}"
    for epoch, (da, db) in enumerate(zip(a.digests, b.digests)):
        for index, (x, y) in enumerate(zip(da, db)):
            if x != y:
                ka, kb = a.keys[epoch][index], b.keys[epoch][index]
                what = f"windows {_keys(kb)} instead of {_keys(ka)}" if ka != kb else "same windows, other values"
                return f"epoch {epoch}, batch {index} differs: {what}"
    return None


def _keys(keys: Sequence[WindowKey | None], shown: int = 3) -> str:
    text = ', '.join(str(k) if k is not None else '?' for k in keys[:shown])
    return f"[{text}{', ...' if len(keys) > shown else ''}]"


def _lifetime(name: str, title: str, kept: Sequence[tuple[int, int, Batch]], digests: list[list[bytes]],
              what: str) -> EverydayRow:
    changed = [(e, i) for e, i, batch in kept if batch_digest(batch) != digests[e][i]]
    if not changed:
        return EverydayRow(name, title, True, f"{len(kept)} {what} re-checked after the last one was built: unchanged",
                           LIFETIME)
    e, i = changed[0]
    return EverydayRow(name, title, False, f"{len(changed)} of {len(kept)} {what} changed after later ones were built "
                       f"(first: epoch {e}, batch {i}): the pipeline reuses an output buffer, so a batch a user keeps "
                       f"is overwritten", LIFETIME)


class FedWindows:
    """A forward pre-hook that records what a trainer feeds the network: each input whose elements are frames of the
    simulation is the initial state of one training step (the later calls of a rollout get predictions, which match
    no frame). Follows `harness.model.predict`: channels first, fields packed in sorted order, so the frames of the
    index field (the first, alphabetically) are the first channels.

    Attributes:
        steps: Per step the window of each element (None where an element matches no window start).
        kept: The inputs themselves (the tensors the network got, not copies) and their digests on arrival.
    """

    def __init__(self, frames: FrameIndex, simulation: Simulation, windows_per_sim: int):
        values = simulation.fields[frames.field_name].values
        self.frames, self.windows_per_sim = frames, windows_per_sim
        self.channels = values.shape.channel.volume if values.shape.channel else 0
        self.rank = values.shape.spatial.rank
        self.steps: list[list[WindowKey | None]] = []
        self.kept: list[tuple[torch.Tensor, bytes]] = []

    def __call__(self, module, args) -> None:
        native = args[0].detach()
        array = native.cpu().numpy()
        if array.ndim == self.rank + 2:
            array = np.moveaxis(array[:, :self.channels], 1, -1) if self.channels else array[:, 0]
        found = [self.frames.by_digest.get(frame_digest(frame)) for frame in array]
        if any(f is not None for f in found):
            self.steps.append([WindowKey(*f) if f is not None and f[1] < self.windows_per_sim else None for f in found])
            self.kept.append((native, _tensor_digest(native)))


def _tensor_digest(t: torch.Tensor) -> bytes:
    return hashlib.blake2b(t.cpu().contiguous().numpy().tobytes(), digest_size=16).digest()


def audit_trainer(pipeline: AbstractPipeline, network, config: ScenarioConfig, simulation: Simulation,
                  frames: FrameIndex, loader_keys: list[WindowKey | None], epochs: int) -> list[EverydayRow]:
    """`everyday_train` on a clone of `network`, watched by `FedWindows`: it must feed the windows its own loader
    serves, in that order, and give the losses of the plan-driven `train` of those windows on another clone."""
    name, b, seed = pipeline.name, config.data.batch_size, config.seed
    everyday_net = model.clone_network(network)
    fed = FedWindows(frames, simulation, config.windows_per_sim)
    handle = everyday_net.register_forward_pre_hook(fed)
    try:
        losses = pipeline.everyday_train(everyday_net, model.make_optimizer(everyday_net, config.trainer.learning_rate),
                                         b, seed=seed, epochs=epochs)
    finally:
        handle.remove()
    keys = [key for step in fed.steps for key in step]
    unknown = sum(k is None for k in keys)
    same_order = keys == loader_keys
    ok = len(fed.steps) == len(losses) and not unknown and same_order
    detail = (f"{len(losses)} steps over {epochs} epochs; {len(fed.steps)} network inputs identified as windows, "
              f"{len(keys)} windows" + (f", {unknown} match no window start" if unknown else '')
              + ("; the order of the pipeline's own loader" if same_order else
                 f"; not the order of the pipeline's own loader (first fed {_keys(keys)}, served {_keys(loader_keys)})"))
    rows = [EverydayRow(name, 'everyday trainer feeds what its loader serves', ok, detail)]
    if len(fed.steps) != len(losses) or unknown:
        rows.append(EverydayRow(name, 'everyday trainer = plan-driven training', False,
                                "not compared: the windows fed to the network could not all be identified"))
    else:
        plan = BatchPlan(seed, 0, tuple(tuple(step) for step in fed.steps))
        plan_net = model.clone_network(network)
        plan_losses = pipeline.train([plan], plan_net, model.make_optimizer(plan_net, config.trainer.learning_rate))
        parity = TrainingResult(losses, plan_losses, loss_rtol=config.compare.loss_rtol)
        rows.append(EverydayRow(name, 'everyday trainer = plan-driven training', parity.passed,
                                f"the fed windows replayed through the plan-driven train on a clone: {parity.describe()}"))
    changed = sum(_tensor_digest(t) != digest for t, digest in fed.kept)
    rows.append(EverydayRow(name, 'network inputs keep their values', not changed,
                            f"{len(fed.kept)} inputs the trainer fed re-checked after training: " +
                            (f"{changed} changed: the trainer's batches are overwritten by later ones" if changed
                             else "unchanged"), LIFETIME))
    return rows


def audit_network(config: ScenarioConfig, simulation: Simulation):
    """An `AUDIT_MODEL` network for the scenario's channels and spatial rank, weights drawn from `config.seed`."""
    channels = sum(f.values.shape.channel.volume if f.values.shape.channel else 1 for f in simulation.fields.values())
    return model.make_network(AUDIT_MODEL, channels, len(config.sim.resolution), seed=config.seed)


def audit_everyday(pipeline: AbstractPipeline, open_fresh: Callable[[Sequence[int]], AbstractPipeline],
                   config: ScenarioConfig, simulation: Simulation, network=None, *, epochs: int | None = None,
                   val_sims: Sequence[int] | None = None, trainer: bool = True) -> list[EverydayRow]:
    """Every audit of one pipeline's everyday path.

    Args:
        pipeline: Opened on `config.train_sims`.
        open_fresh: Returns a new instance of the same pipeline opened on the given sims.
        simulation: The trajectories the cache holds (training and validation sims).
        network: What the trainer audit trains, as clones only (left untouched); default `audit_network`.
        epochs: Epochs judged (default `compare.everyday_epochs`).
        val_sims: The validation sims in the cache (default `config.val_sims`; none: that audit is left out).
        trainer: Audit the pipeline's own trainer too (`everyday_train`, replayed through `train`).

    Returns:
        The rows; when the everyday path raises, the rows so far and a failed row 'everyday path runs' naming the error.
    """
    rows: list[EverydayRow] = []
    try:
        _audit(rows, pipeline, open_fresh, config, simulation, network, epochs or config.compare.everyday_epochs,
               config.val_sims if val_sims is None else list(val_sims), trainer)
    except Exception as err:  # noqa: BLE001 - a pipeline's own code failing is a finding, not a crash of the judge
        reason = str(err).splitlines()[0] if str(err) else ''
        rows.append(EverydayRow(pipeline.name, 'everyday path runs', False, f"{type(err).__name__}: {reason}"))
    return rows


def _audit(rows: list[EverydayRow], pipeline: AbstractPipeline, open_fresh, config: ScenarioConfig,
           simulation: Simulation, network, epochs: int, val_sims: list[int], trainer: bool) -> None:
    name, b, seed = pipeline.name, config.data.batch_size, config.seed
    wps, train_sims = config.windows_per_sim, config.train_sims
    frames = FrameIndex(simulation, [*train_sims, *val_sims])
    variants = pipeline.loader_variants()
    served = serve(pipeline, b, seed=seed, epochs=epochs, frames=frames, variant=variants[0], keep=True)
    for epoch in range(epochs):
        rows.append(_coverage(name, f"epoch {epoch}: each window exactly once", served.epoch_keys(epoch), train_sims, wps))
        sizes, want = served.sizes(epoch), expected_sizes(len(train_sims) * wps, b)
        rows.append(EverydayRow(name, f"epoch {epoch}: batch sizes, last partial batch kept", sizes == want,
                                f"{_sizes(sizes)}" + ('' if sizes == want else f", expected {_sizes(want)}")))
    n, tries = len(train_sims) * wps, shuffles_needed(len(train_sims) * wps)
    chance = f"as a correct shuffle of {n} windows does with chance 1 in {math.factorial(n)}" if tries > 1 else ''
    alike = [e for e in range(1, epochs) if served.epoch_keys(e) == served.epoch_keys(e - 1)]
    detail = f"epochs 0 ... {epochs - 1}: " + (f"epoch {alike[0]} repeats the order of epoch {alike[0] - 1}" if alike
                                               else "each in another order")
    if tries == 0:
        alike, detail = [], f"{n} window(s): one order only"
    elif alike and tries > 1:  # more epochs of a fresh instance decide
        longer = serve(open_fresh(train_sims), b, seed=seed, epochs=tries + 1, frames=frames, variant=variants[0])
        if any(longer.epoch_keys(e) != longer.epoch_keys(e - 1) for e in range(1, tries + 1)):
            alike, detail = [], f"{detail}, {chance}; {tries + 1} epochs of a fresh instance are not all alike"
        else:
            detail = f"{tries + 1} epochs of a fresh instance, each in the order of the one before"
    rows.append(EverydayRow(name, 'epochs in different orders', not alike, detail))
    again = serve(open_fresh(train_sims), b, seed=seed, epochs=epochs, frames=frames, variant=variants[0])
    difference = _first_difference(served, again)
    rows.append(EverydayRow(name, 'same seed, same batches', difference is None,
                            f"a fresh instance, seed {seed}, {epochs} epochs: " +
                            (f"{served.n_batches} batches bitwise identical" if difference is None else difference)))
    for other_seed in range(seed + 1, seed + 1 + max(tries, 1)):
        other = serve(pipeline, b, seed=other_seed, epochs=1, frames=frames, variant=variants[0])
        if differs := other.epoch_keys(0) != served.epoch_keys(0):
            break
    if tries == 0:
        differs, detail = True, f"{n} window(s): one order only"
    elif differs:
        detail = f"seeds {seed} and {other_seed}, epoch 0: different orders" + (
            f" (the seeds between repeat the order of seed {seed}, {chance})"
            if other_seed > seed + 1 else '')
    else:
        detail = f"seeds {seed} and {seed + 1}" + (f" ... {other_seed}" if tries > 1 else '') + ", epoch 0: IDENTICAL orders"
    rows.append(EverydayRow(name, 'other seed, other order', differs, detail))
    if val_sims:
        val = serve(open_fresh(val_sims), b, seed=seed, epochs=1, frames=frames, variant=variants[0])
        served_train = {k.sim for e in range(epochs) for k in served.epoch_keys(e) if k is not None}
        served_val = {k.sim for k in val.epoch_keys(0) if k is not None}
        shared = sorted(served_train & served_val)
        covered = _coverage(name, '', val.epoch_keys(0), val_sims, wps)
        ok = not shared and served_train <= set(train_sims) and covered.passed
        rows.append(EverydayRow(name, 'training and validation sims apart', ok,
                                f"training serves sims {sorted(served_train)}, validation sims {sorted(served_val)}"
                                + (f"; shared: {shared}" if shared else '')
                                + ('' if covered.passed else f"; validation: {covered.detail}")))
    rows.append(_lifetime(name, 'everyday batches keep their values', served.kept, served.digests,
                          f"batches of {epochs} epochs"))
    kept, digests = [], []
    for index, batch in enumerate(pipeline.batches(make_plan(window_keys(train_sims, wps), b, seed=seed, epoch=0))):
        digests.append(batch_digest(batch))
        kept.append((0, index, batch))
    rows.append(_lifetime(name, 'plan-driven batches keep their values', kept, [digests], "batches of a plan-driven epoch"))
    if trainer:
        rows += audit_trainer(pipeline, network or audit_network(config, simulation), config, simulation, frames,
                              [k for e in range(epochs) for k in served.epoch_keys(e)], epochs)
    for variant in variants[1:]:
        other = serve(pipeline, b, seed=seed, epochs=epochs, frames=frames, variant=variant)
        difference = _first_difference(served, other)
        rows.append(EverydayRow(name, f"loader variant {_variant(variant)}", difference is None,
                                f"{epochs} epochs against {_variant(variants[0])}: " +
                                (f"{served.n_batches} batches bitwise identical" if difference is None else difference),
                                VARIANT))


def _variant(variant: dict) -> str:
    return ', '.join(f"{k}={v}" for k, v in variant.items()) or 'default'
