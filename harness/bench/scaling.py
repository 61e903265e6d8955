"""The scaling part of `python -m harness.bench`: one epoch of batch loading, legacy vs native, against the floor and
against the train step, and the cold open of all sims against `np.load` of `.npy` files and the train step, with 1-D
frames (x=256), 32², 64², 128² and 3-D 32³ frames, and 2x and 4x the scenario's number of sims; and the native
dataset's mapped mode against its loaded mode on a cache of at least `MAPPED_BYTES` (`bench_mapped`).

Each size is simulated with the scenario's config, changed only where the size demands it (every change is listed in
the entry's `adjustments`): the resolution, and the viscosity where explicit diffusion would be unstable on the finer
grid (`viscosity * dt / dx**2 <= 0.45`); batch loading copies bytes, so the values do not change what is timed. The
sims sweep simulates 4x the sims once and opens the first 1x, 2x and 4x of them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from harness import model
from harness.cache.build import write_cache
from harness.config import ScenarioConfig, validate
from harness.bench.bandwidth import BandwidthProbe, epoch_bytes, floor_seconds
from harness.bench.memory import measure_peaks
from harness.pipeline import AbstractPipeline, drain
from harness.plan import make_plan
from harness.data.simulate import simulate
from harness.bench.stages import (frame_bytes as batch_frame_bytes, network_for, npz_figures, npz_members,
                                  time_cold_reads, write_npy)
from harness.bench.timing import ratios

logger = logging.getLogger(__name__)
RESOLUTIONS = (('1d-256', [256]), ('32x32', [32, 32]), ('64x64', [64, 64]), ('128x128', [128, 128]),
               ('32x32x32', [32, 32, 32]))
MIN_TIMED_S = 4.0  # batch loading is repeated until about this long is timed per size (at least `repeats`)
MAX_REPEAT_FACTOR = 5  # and at most this many times `repeats`
STEP_REPEATS = 2  # timed train steps per size (after one untimed): a step takes seconds on a CPU
MAPPED_BYTES = 2 ** 30  # the mapped-mode cache holds at least this many bytes of cache files
MAPPED_FRAME = (128, 128)
SIM_FACTORS = (2, 4)
MAX_DIFFUSION_NUMBER = 0.45


def sized_config(config: ScenarioConfig, resolution: Sequence[int] | None = None, n_sims: int | None = None
                 ) -> tuple[ScenarioConfig, list[str]]:
    """`config` with another resolution and/or number of training sims, no validation sims, and stable diffusion.

    Returns:
        The config, and one line per change beyond the requested ones.
    """
    sim, data, notes = config.sim, config.data, []
    if resolution is not None:
        sim = dataclasses.replace(sim, resolution=list(resolution))
    if n_sims is not None:
        data = dataclasses.replace(data, n_sims=n_sims)
    data = dataclasses.replace(data, n_val_sims=0)
    dx = sim.domain_size / max(sim.resolution)
    limit = MAX_DIFFUSION_NUMBER * dx ** 2 / sim.dt
    if sim.viscosity > limit:
        notes.append(f"sim.viscosity {sim.viscosity:g} -> {limit:.3g}: explicit diffusion is unstable above "
                     f"viscosity * dt / dx**2 = {MAX_DIFFUSION_NUMBER} on a {sim.resolution} grid")
        sim = dataclasses.replace(sim, viscosity=limit)
    result = dataclasses.replace(config, sim=sim, data=data)
    validate(result)
    return result, notes


def bench_scaling(config: ScenarioConfig, legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline],
                  workdir: Path, probe: BandwidthProbe, *, repeats: int, warmup: int,
                  memory_at: Sequence[str] = (), progress: Callable[[int], None] | None = None,
                  min_timed_s: float = MIN_TIMED_S) -> dict[str, list[dict]]:
    """Times one epoch of both pipelines at every size.

    Args:
        workdir: Scratch folder (its contents are removed per size).
        probe: Samples the streaming copy bandwidth once per timed repetition of each size, for that size's floor.
        memory_at: Labels of the entries (e.g. `'128x128'`, `'4x sims'`) whose peak memory is measured as well.
        min_timed_s: Epochs are repeated until about this long is timed per size (`repeats` to 5x `repeats`,
            judged from the warm-up), so that sizes with short epochs get more repetitions.

    Returns:
        `{'resolution': [entry, ...], 'sims': [entry, ...]}`; each entry holds `label`, `resolution`, `n_sims`,
        `legacy_s`, `native_s`, `speedup`, `floor_s`, `native_vs_floor`, `legacy_vs_floor` (one epoch of batch
        loading), `bandwidth_bytes_per_s`, `epoch_bytes`, `cached_bytes`, `windows`, `batches`, `adjustments`,
        `read` (cold open of all sims: `legacy_s`, `native_s`, `speedup`, `npy_load_s`, `native_vs_npy_load`,
        `legacy_vs_npy_load`, `native_vs_step`; for `phiml.math.save` files also the reference read by numpy's `.npz`
        reader, see `harness.bench.stages.npz_figures`), `step_s` (one native train step on a full batch, median of
        `STEP_REPEATS`), `loading_share` (native loading per batch / (that + `step_s`)), and `memory` (per pipeline,
        see `harness.bench.memory.PeakMemory.to_dict`) where measured.
    """
    result = {'resolution': [], 'sims': []}
    for label, resolution in RESOLUTIONS:
        sized, notes = sized_config(config, resolution=resolution)
        simulation = simulate(sized)
        folder = workdir / label
        entry = _entry(label, (legacy_cls, native_cls), sized, simulation, sized.train_sims, folder, probe, repeats, warmup,
                       label in memory_at, min_timed_s)
        result['resolution'].append({**entry, 'adjustments': notes})
        shutil.rmtree(folder, ignore_errors=True)
        if progress:
            progress(1)
    base = config.data.n_sims
    sized, notes = sized_config(config, n_sims=base * max(SIM_FACTORS))
    simulation = simulate(sized)
    folder = workdir / 'sims'
    for factor in (1, *SIM_FACTORS):
        label = f'{factor}x sims'
        entry = _entry(label, (legacy_cls, native_cls), sized, simulation, list(range(base * factor)), folder, probe, repeats, warmup,
                       label in memory_at, min_timed_s)
        result['sims'].append({**entry, 'adjustments': notes})
        if progress:
            progress(1)
    shutil.rmtree(folder, ignore_errors=True)
    return result


def _entry(label: str, classes: tuple[type[AbstractPipeline], type[AbstractPipeline]], config: ScenarioConfig, simulation, sims: list[int], folder: Path, probe: BandwidthProbe,
           repeats: int, warmup: int, with_memory: bool, min_timed_s: float) -> dict:
    rollout = config.data.rollout_steps
    pipelines = {'legacy': classes[0](folder / 'legacy', rollout), 'native': classes[1](folder / 'phiml', rollout)}
    for pipeline in pipelines.values():
        missing = [s for s in sims if not pipeline.cache_file(s).is_file()]
        write_cache(pipeline, simulation, missing)
        pipeline.open(sims)
    plan = make_plan(pipelines['native'].window_keys(), config.data.batch_size, seed=config.seed, epoch=0)
    npy_files = write_npy(pipelines['native'], sims, folder / 'npy')
    times = {name: [] for name in pipelines}
    samples_before = len(probe.samples)
    rep, timed, started = 0, repeats, time.perf_counter()
    while rep < warmup + timed:
        if rep == warmup and rep:  # short epochs scatter most on a shared machine: more repetitions, same time
            per_rep = (time.perf_counter() - started) / warmup
            timed = min(MAX_REPEAT_FACTOR * repeats, max(repeats, math.ceil(min_timed_s / per_rep)))
            timed += timed % 2  # each order as often (see `harness.bench.run.REPEATS`)
        order = list(pipelines.items()) if rep % 2 == 0 else list(pipelines.items())[::-1]
        samples = {}
        for name, p in order:
            start = time.perf_counter()
            drain(p.load_batches(plan))
            samples[name] = time.perf_counter() - start
        if rep >= warmup:
            for name, seconds in samples.items():
                times[name].append(seconds)
        probe.sample()  # in warm-up too: its time counts in the repetition's length
        if rep < warmup:
            probe.samples.pop()
        rep += 1
    # cold reads in a loop of their own: each hands freed memory back to the OS first, and an epoch right after one
    # would pay for faulting in fresh pages for its first batches
    reads, fresh_memory = time_cold_reads(pipelines, sims, npy_files, repeats=repeats, warmup=warmup,
                                          npz=npz_members(pipelines['native'], sims))
    step_s = time_native_step(pipelines['native'], plan, config)
    frame_bytes = batch_frame_bytes(next(pipelines['native'].batches(plan)))
    moved = epoch_bytes(plan.n_windows, frame_bytes, rollout)
    bandwidth = probe.bandwidth(since=samples_before)
    floor = floor_seconds(moved, bandwidth)
    legacy_s, native_s = (statistics.median(times[name]) for name in ('legacy', 'native'))
    read = {'legacy_s': statistics.median(reads['legacy']), 'native_s': statistics.median(reads['native']),
            'npy_load_s': statistics.median(reads['npy']), 'fresh_memory': fresh_memory,
            'per_repetition': {'native_vs_npy_load': ratios(reads['native'], reads['npy'])}}
    read.update(speedup=read['legacy_s'] / read['native_s'], native_vs_npy_load=read['native_s'] / read['npy_load_s'],
                legacy_vs_npy_load=read['legacy_s'] / read['npy_load_s'], native_vs_step=read['native_s'] / step_s)
    reference = npz_figures(reads)
    read['per_repetition'].update(reference.pop('per_repetition', {}))
    read.update(reference)
    per_batch = native_s / len(plan)
    entry = {
        'label': label, 'resolution': list(config.sim.resolution), 'n_sims': len(sims), 'n_frames': config.sim.n_frames,
        'legacy_s': legacy_s, 'native_s': native_s, 'speedup': legacy_s / native_s, 'floor_s': floor,
        'native_vs_floor': native_s / floor, 'legacy_vs_floor': legacy_s / floor,
        'bandwidth_bytes_per_s': bandwidth.bytes_per_s, 'epoch_bytes': moved,
        'cached_bytes': {name: sum(p.cache_file(s).stat().st_size for s in sims)
                         for name, p in pipelines.items()},
        'windows': plan.n_windows, 'batches': len(plan), 'repeats': timed, 'read': read, 'step_s': step_s,
        'loading_share': per_batch / (per_batch + step_s),
        'per_repetition': {'speedup': ratios(times['legacy'], times['native']),
                           'native_vs_floor': ratios(times['native'], [moved / b for b in probe.per_sample(samples_before)])},
    }
    logger.info("%s: legacy %.2f ms, native %.2f ms (x%.2f), native/floor %.2f", label, legacy_s * 1e3, native_s * 1e3,
                entry['speedup'], entry['native_vs_floor'])
    if with_memory:
        entry['memory'] = measure_peaks(pipelines, sims, rollout, config.data.batch_size, seed=config.seed,
                                        torch_threads=config.trainer.torch_threads)
    return entry



def time_native_step(native: AbstractPipeline, plan, config: ScenarioConfig) -> float:
    """Median seconds of `STEP_REPEATS` native train steps on the plan's first (full) batch, after one untimed."""
    batch = next(iter(native.load_batches(plan)))
    network = network_for(config, batch)
    optimizer = model.make_optimizer(network, config.trainer.learning_rate)
    times = []
    for _ in range(1 + STEP_REPEATS):
        start = time.perf_counter()
        model.train_step(network, optimizer, batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def bench_mapped(config: ScenarioConfig, native_cls: type[AbstractPipeline], workdir: Path, *, repeats: int, warmup: int,
                 memory: bool = True) -> dict:
    """The native dataset (`native_cls`, which takes `memory='load' | 'map'`) mapped against loaded, on a synthetic cache of `MAPPED_FRAME` velocity frames holding at
    least `MAPPED_BYTES` (random values: batch loading copies bytes, whatever they are).

    Each repetition times one epoch of the loaded dataset (opened once) and one of a freshly opened mapped dataset
    (its maps fault their pages in from the warm page cache during the epoch), in alternating order.

    Returns:
        `n_sims`, `cached_bytes`, `batch_bytes`, `loaded_s`, `mapped_s` (medians), `mapped_vs_loaded`,
        `per_repetition`, and with `memory` `memory` (`{'load': PeakMemory.to_dict(), 'map': ...}`, with
        `anon_epoch_bytes`) and `anon_limit_bytes` (3 batches + 64 MB).
    """
    from phiml import math
    rollout, frames = config.data.rollout_steps, config.sim.n_frames
    sim_bytes = frames * MAPPED_FRAME[0] * MAPPED_FRAME[1] * 2 * 4
    n_sims = -(-MAPPED_BYTES // sim_bytes)
    folder = workdir / 'mapped'
    writer = native_cls(folder, rollout)
    rng = np.random.default_rng(config.seed)
    shape = math.batch(time=frames) & math.spatial(x=MAPPED_FRAME[0], y=MAPPED_FRAME[1]) & math.channel(vector='x,y')
    for sim in range(n_sims):
        values = math.wrap(rng.random((frames, *MAPPED_FRAME, 2), np.float32), shape)
        writer.write_fields(sim, {'velocity': values}, {'sim_index': sim, 'n_frames': frames, 'fields': ['velocity']})
    sims = list(range(n_sims))
    loaded = native_cls(folder, rollout, memory='load')
    loaded.open(sims)
    plan = make_plan(loaded.window_keys(), config.data.batch_size, seed=config.seed, epoch=0)
    times = {'load': [], 'map': []}
    for rep in range(warmup + repeats):
        for mode in (('load', 'map') if rep % 2 == 0 else ('map', 'load')):
            pipeline = loaded if mode == 'load' else native_cls(folder, rollout, memory='map')
            if mode == 'map':
                pipeline.open(sims)
            start = time.perf_counter()
            drain(pipeline.load_batches(plan))
            if rep >= warmup:
                times[mode].append(time.perf_counter() - start)
            del pipeline
    loaded_s, mapped_s = statistics.median(times['load']), statistics.median(times['map'])
    batch_bytes = config.data.batch_size * (1 + rollout) * MAPPED_FRAME[0] * MAPPED_FRAME[1] * 2 * 4
    result = {'n_sims': n_sims, 'frame': list(MAPPED_FRAME), 'cached_bytes': sum(writer.cache_file(s).stat().st_size
                                                                              for s in sims),
              'batch_bytes': batch_bytes, 'loaded_s': loaded_s, 'mapped_s': mapped_s, 'batches': len(plan),
              'mapped_vs_loaded': mapped_s / loaded_s, 'anon_limit_bytes': 3 * batch_bytes + 64 * 2 ** 20,
              'per_repetition': {'mapped_vs_loaded': ratios(times['map'], times['load'])}}
    del loaded
    if memory:
        result['memory'] = measure_peaks({mode: native_cls(folder, rollout, memory=mode) for mode in ('load', 'map')},
                                         sims, rollout, config.data.batch_size, seed=config.seed,
                                         torch_threads=config.trainer.torch_threads)
        result['anon_vs_limit'] = result['memory']['map']['anon_epoch_bytes'] / result['anon_limit_bytes']
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("mapped %d sims (%.2f GB): epoch %.3f s mapped, %.3f s loaded", n_sims, result['cached_bytes'] / 1e9,
                mapped_s, loaded_s)
    return result
