"""The per-stage part of `python -m harness.bench`: both pipelines timed interleaved in one process, with the baselines
each stage is judged against.

Stages (names as in `harness.timing`): `write` (cache of the training sims), `read` (a cold open of every training sim
as a fresh process sees it, see `ColdReads`; the OS page cache stays warm: dropping it needs root and would time the
disk, not the pipeline), `iterate` (one epoch of `load_batches`, each batch let go before the next is built:
`harness.pipeline.drain`), `convert` (what stands
between a loaded batch and the torch tensors the network is called with: `to_phiml` plus the `native()` view that
`math.native_call` takes; identity plus that view for the native pipeline), `step` (one training step on one batch).
Repetition `r` runs legacy then native for even `r`, the reverse for odd `r`; warm-up repetitions are dropped; figures
are medians. Baselines: `np.load` of the same arrays from `.npy` files (for `read`; beside it, for reference, numpy's
own reader of the native `.npz` files where they are `phiml.math.save` files), the memory-bandwidth floor (for
`iterate`, see `harness.floor`; the bandwidth is sampled once per repetition, between the timed runs), and the train
step (for `convert`).
"""
from __future__ import annotations

import itertools
import logging
import shutil
import statistics
import time
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from harness import model
from harness.cache.build import write_cache
from harness.config import ScenarioConfig
from harness.bench.bandwidth import BandwidthProbe, epoch_bytes, floor_seconds
from harness.bench.memory import release_free_memory
from harness.pipeline import AbstractPipeline, Batch, drain
from harness.plan import make_plan
from harness.data.simulate import Simulation
from harness.bench.timing import STAGES, StageTiming, ratios

logger = logging.getLogger(__name__)


def bench_stages(config: ScenarioConfig, legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline],
                 simulation: Simulation, workdir: Path, probe: BandwidthProbe, *,
                 repeats: int, warmup: int, progress: Callable[[int], None] | None = None) -> dict[str, dict]:
    """Times every stage of both pipelines on the training sims of `simulation`.

    Args:
        workdir: Scratch folder for the caches (left in place for the memory measurement).
        probe: Samples the streaming copy bandwidth once per timed repetition, for the floor of `iterate`.
        repeats: Timed repetitions per stage (medians are reported).
        warmup: Untimed repetitions first.

    Returns:
        Stage name -> `legacy_s`, `native_s`, `speedup` (legacy / native), `repeats`, and per stage what it is judged
        against: `read` adds `npy_load_s`, `native_vs_npy_load`, `legacy_vs_npy_load`, `native_vs_step` (the cold open
        over one native train step) and, for `phiml.math.save` files, `npz_figures`; `iterate` adds `floor_s`,
        `native_vs_floor`, `legacy_vs_floor`, `epoch_bytes`, `bandwidth_bytes_per_s`, `loading_share` (native loading per batch / (that + a native train step));
        `convert` adds per-batch figures and `native_vs_step`, `legacy_vs_step`; all add `bytes` and counts.
    """
    sims = config.train_sims
    rollout = config.data.rollout_steps
    pipelines = {'legacy': legacy_cls(workdir / 'legacy', rollout), 'native': native_cls(workdir / 'phiml', rollout)}
    for pipeline in pipelines.values():
        write_cache(pipeline, simulation, sims)
        pipeline.open(sims)
    npy_files = write_npy(pipelines['native'], sims, workdir / 'npy')
    plan = make_plan(pipelines['native'].window_keys(), config.data.batch_size, seed=config.seed, epoch=0)
    raw = {name: list(p.load_batches(plan)) for name, p in pipelines.items()}
    first = {name: p.to_phiml(raw[name][0]) for name, p in pipelines.items()}
    network = network_for(config, first['native'])
    nets = {name: model.clone_network(network) for name in pipelines}
    optimizers = {name: model.make_optimizer(net, config.trainer.learning_rate) for name, net in nets.items()}

    timings = {stage: StageTiming(stage) for stage in STAGES}
    # cold reads in a loop of their own: right after a timed cache write, the write-back of its dirty pages slows the
    # next read, and only the pipelines' reads, not the np.load baseline, would come right after one
    reads, fresh_memory = time_cold_reads(pipelines, sims, npy_files, repeats=repeats, warmup=warmup,
                                          npz=npz_members(pipelines['native'], sims))
    timings['read'].legacy, timings['read'].native, npy_load = reads['legacy'], reads['native'], reads['npy']
    samples_before = len(probe.samples)
    for rep in range(warmup + repeats):
        order = list(pipelines.items()) if rep % 2 == 0 else list(pipelines.items())[::-1]
        for name, p in order:
            samples = {
                'write': _time_write(p, simulation, sims, workdir / f'write-{name}'),
                'iterate': _timed(lambda: drain(p.load_batches(plan))),
                'convert': _timed(lambda: [network_inputs(p.to_phiml(r)) for r in raw[name]]),
                'step': _timed(lambda: model.train_step(nets[name], optimizers[name], first[name])),
            }
            if rep >= warmup:
                for stage, seconds in samples.items():
                    getattr(timings[stage], name).append(seconds)
        if rep >= warmup:
            probe.sample()
        if progress:
            progress(1)

    result = {stage: timing.to_dict() for stage, timing in timings.items()}
    cache_bytes = {name: sum(p.cache_file(s).stat().st_size for s in sims) for name, p in pipelines.items()}
    result['write'].update(bytes=cache_bytes, sims=len(sims))
    npy_s = statistics.median(npy_load)
    result['read'].update(bytes=cache_bytes, sims=len(sims), npy_load_s=npy_s, npy_bytes=sum(f.stat().st_size for f in npy_files),
                          native_vs_npy_load=result['read']['native_s'] / npy_s,
                          legacy_vs_npy_load=result['read']['legacy_s'] / npy_s, fresh_memory=fresh_memory,
                          per_repetition={'native_vs_npy_load': ratios(timings['read'].native, npy_load),
                                          'speedup': ratios(timings['read'].legacy, timings['read'].native)})
    reference = npz_figures(reads)
    result['read']['per_repetition'].update(reference.pop('per_repetition', {}))
    result['read'].update(reference)
    result['write']['per_repetition'] = {'speedup': ratios(timings['write'].legacy, timings['write'].native)}
    moved = epoch_bytes(plan.n_windows, frame_bytes(first['native']), rollout)
    bandwidth = probe.bandwidth(since=samples_before)
    floor = floor_seconds(moved, bandwidth)
    result['iterate'].update(epoch_bytes=moved, bandwidth_bytes_per_s=bandwidth.bytes_per_s, floor_s=floor,
                             native_vs_floor=result['iterate']['native_s'] / floor,
                             legacy_vs_floor=result['iterate']['legacy_s'] / floor, windows=plan.n_windows,
                             batches=len(plan), per_repetition={
                                 'speedup': ratios(timings['iterate'].legacy, timings['iterate'].native),
                                 'native_vs_floor': ratios(timings['iterate'].native,
                                                           [moved / b for b in probe.per_sample(samples_before)])})
    per_batch = {name: result['convert'][f'{name}_s'] / len(plan) for name in pipelines}
    result['convert'].update(batches=len(plan), legacy_per_batch_s=per_batch['legacy'],
                             native_per_batch_s=per_batch['native'],
                             legacy_vs_step=per_batch['legacy'] / result['step']['legacy_s'],
                             native_vs_step=per_batch['native'] / result['step']['native_s'],
                             per_repetition={'native_vs_step': ratios([c / len(plan) for c in timings['convert'].native],
                                                                      timings['step'].native),
                                             'speedup': ratios(timings['convert'].legacy, timings['convert'].native)})
    result['step'].update(batch_size=len(plan.batches[0]), rollout_steps=rollout)
    loading = result['iterate']['native_s'] / len(plan)
    result['iterate']['loading_share'] = loading / (loading + result['step']['native_s'])
    result['iterate']['per_repetition']['loading_share'] = [
        it / len(plan) / (it / len(plan) + step) for it, step in zip(timings['iterate'].native, timings['step'].native)]
    result['step']['per_repetition'] = {'speedup': ratios(timings['step'].legacy, timings['step'].native)}
    result['read']['native_vs_step'] = result['read']['native_s'] / result['step']['native_s']
    training = result['step']['native_s'] * len(plan) * config.trainer.epochs  # what compare's training passes take
    for stage in ('write', 'read'):  # paid once: compare passes them within this share of the training they feed
        extra = result[stage]['native_s'] - result[stage]['legacy_s']
        result[stage].update(training_s=training, extra_vs_training=max(0.0, extra) / training,
                             one_time_share=config.compare.one_time_share)
    return result


def network_inputs(batch: Batch) -> list:
    """The native tensors `math.native_call` hands the network for `batch['initial_state']`: dims (batch, channel,
    *spatial), taken exactly as `native_call` takes them (no copy unless the layout demands one)."""
    natives = []
    for tensor in _field_tensors(batch['initial_state']):
        groups = [tensor.shape.batch, tensor.shape.channel, *tensor.shape.spatial.names]
        natives.append(tensor.native(groups, force_expand=False))
    return natives


def network_for(config: ScenarioConfig, batch: Batch):
    """The scenario's network, seeded by `config.seed`, for batches like `batch` (its channels: all fields')."""
    channels = sum(max(1, t.shape.channel.volume) for t in _field_tensors(batch['initial_state']))
    return model.make_network(config.model, channels, len(config.sim.resolution), seed=config.seed)


def frame_bytes(batch: Batch) -> int:
    """Bytes of one frame of all fields together, from a PhiML batch (its `initial_state` holds one frame per window)."""
    return sum(int(np.prod(t.shape.sizes[1:])) * t.dtype.bits // 8 for t in _field_tensors(batch['initial_state']))


def _field_tensors(value) -> list:
    return [value[name] for name in sorted(value)] if isinstance(value, dict) else [value]


def write_npy(native: AbstractPipeline, sims, folder: Path) -> list[Path]:
    """Each sim's field arrays as plain `.npy` files, for the baseline of the cold read (`np.load` of each)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for sim in sims:
        fields, _ = native.read_fields(sim)
        for name, values in sorted(fields.items()):
            path = folder / f'sim_{sim:06d}_{name}.npy'
            np.save(path, values.numpy(values.shape.names))
            files.append(path)
    return files


def npz_members(native: AbstractPipeline, sims) -> list[tuple[Path, list[str]]] | None:
    """Each sim's native cache file and the members holding its field arrays, where the files are `phiml.math.save`
    files (`root[FIELD]:0.npy`), for the reference read by numpy's own `.npz` reader; None for any other format."""
    members, (fields, _) = [], native.read_fields(sims[0])  # one cache holds one set of fields (checked on open)
    names = [f'root[{name}]:0' for name in sorted(fields)]
    for sim in sims:
        path = native.cache_file(sim)
        if path.suffix != '.npz' or not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            if not {f'{name}.npy' for name in names} <= set(archive.namelist()):
                return None
        members.append((path, names))
    return members


def _time_write(pipeline: AbstractPipeline, simulation: Simulation, sims, folder: Path) -> float:
    fresh = type(pipeline)(folder, pipeline.rollout_steps)
    try:
        return _timed(lambda: write_cache(fresh, simulation, sims))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def time_cold_reads(pipelines: dict[str, AbstractPipeline], sims, npy_files: list[Path], *, repeats: int, warmup: int,
                    npz: list[tuple[Path, list[str]]] | None = None) -> tuple[dict[str, list[float]], bool]:
    """Times cold opens of `sims` by `pipelines['legacy']` and `pipelines['native']`, and `np.load` of `npy_files`: each
    repetition reads all three in every order of `COLD_READ_ORDERS` (see `ColdReads`), and takes each one's mean. With
    `npz` (see `npz_members`), then also numpy's reader of those members in the orders of `NPZ_READ_ORDERS`.

    Returns:
        Seconds per timed repetition under `'legacy'`, `'native'`, `'npy'` (and `'npz'`, `'ref_legacy'`,
        `'ref_npy'`), and whether every read got fresh memory.
    """
    cold = ColdReads([type(p) for p in pipelines.values()])
    orders = COLD_READ_ORDERS + (NPZ_READ_ORDERS if npz else ())
    times = {name: [] for name in dict.fromkeys(itertools.chain(*orders))}
    for rep in range(warmup + repeats):
        samples = {name: [] for name in times}
        for name in itertools.chain(*orders):
            kind = name.removeprefix('ref_')
            samples[name].append(cold.npy_load(name, npy_files) if kind == 'npy' else cold.npz_load(name, npz)
                                 if kind == 'npz' else cold.open(name, pipelines[kind], sims))
        if rep >= warmup:
            for name, seconds in samples.items():
                times[name].append(statistics.fmean(seconds))
    return times, cold.fresh_memory


# A read right after a legacy open (torch.load and its Python) runs slower than one after a light read: the CPU caches
# hold torch's code and data. In these two orders the native read and its np.load baseline each follow the legacy read
# once, so that neither gains from an odd number of repetitions.
COLD_READ_ORDERS = (('legacy', 'native', 'npy'), ('legacy', 'npy', 'native'))
# The reference read of numpy's `.npz` reader, placed as the native read is, with reads of its own (`ref_`): a read
# right after it (numpy's format code warm) is faster, so it stays out of the target's samples.
NPZ_READ_ORDERS = (('ref_legacy', 'npz', 'ref_npy'), ('ref_legacy', 'ref_npy', 'npz'))


class ColdReads:
    """Times cold reads as a fresh process sees them: a new pipeline object, no parsed layouts remembered, and fresh
    memory. Before each read, the previous result of its kind is dropped and freed memory is handed back to the OS
    (`harness.bench.memory.release_free_memory`), so every read, the pipelines' and the `np.load` baseline's alike, pays for
    the fresh pages a new process pays for; without that, whichever read reused warm memory won (`np.load`'s many small
    arrays did, a pipeline's one large array did not)."""

    def __init__(self, pipeline_classes: Sequence[type[AbstractPipeline]] = ()):
        self._kept: dict[str, object] = {}
        self._classes = list(pipeline_classes)
        self.fresh_memory = True  # False where the C library cannot hand memory back (then reads may reuse warm memory)

    def open(self, key: str, pipeline: AbstractPipeline, sims) -> float:
        """Seconds a fresh copy of `pipeline` takes to open `sims`."""
        fresh = type(pipeline)(pipeline.cache_dir, pipeline.rollout_steps)
        self._prepare(key)
        seconds = _timed(lambda: fresh.open(sims))
        self._kept[key] = fresh
        return seconds

    def npy_load(self, key: str, files: list[Path]) -> float:
        """Seconds `np.load` takes for all `files` (the baseline)."""
        arrays = []
        self._prepare(key)
        seconds = _timed(lambda: arrays.extend(np.load(f) for f in files))
        self._kept[key] = arrays
        return seconds

    def npz_load(self, key: str, members: list[tuple[Path, list[str]]]) -> float:
        """Seconds numpy's own `.npz` reader takes for `members` (`np.load` of each file, then its listed members; it
        reads neither the pickled members nor the others)."""
        arrays = []
        self._prepare(key)
        seconds = _timed(lambda: arrays.extend(_npz_arrays(members)))
        self._kept[key] = arrays
        return seconds

    def _prepare(self, key: str) -> None:
        self._kept.pop(key, None)
        for cls in self._classes:
            cls.forget_read_caches()
        self.fresh_memory &= release_free_memory()


def npz_figures(reads: dict[str, list[float]]) -> dict:
    """The reference read's figures (`time_cold_reads` with `npz`): `npz_load_s`, `native_vs_npz_load`,
    `npz_vs_npy_load` (against the np.load reads of its own orders), and both ratios per repetition; empty without
    it."""
    if 'npz' not in reads:
        return {}
    native, npz, npy = (statistics.median(reads[name]) for name in ('native', 'npz', 'ref_npy'))
    return {'npz_load_s': npz, 'native_vs_npz_load': native / npz, 'npz_vs_npy_load': npz / npy,
            'per_repetition': {'native_vs_npz_load': ratios(reads['native'], reads['npz']),
                               'npz_vs_npy_load': ratios(reads['npz'], reads['ref_npy'])}}


def _npz_arrays(members: list[tuple[Path, list[str]]]) -> list[np.ndarray]:
    arrays = []
    for path, names in members:
        with np.load(path) as archive:
            arrays += [archive[name] for name in names]
    return arrays


def _timed(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start
