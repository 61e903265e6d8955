"""The native pipeline's loader variants (for the built-in one: prefetching off and on) in the loop a user runs: one
training epoch of the scenario per variant, through `everyday_epochs` and one `harness.model.train_step` per batch.

The cache is loaded and, where the pipeline has a mapped mode (`memory=`), also mapped with the page cache of its files
dropped before each epoch (`posix_fadvise(DONTNEED)`), so that batches wait on the disk: where building the next batch
during the step can pay most. Each repetition runs every variant once, the order reversed every other repetition, each
on a freshly opened pipeline and a fresh copy of one seeded network; opening is not timed.
"""
from __future__ import annotations

import inspect
import os
import statistics
import time
from pathlib import Path

from harness import model
from harness.config import ScenarioConfig
from harness.pipeline import AbstractPipeline
from harness.bench.stages import network_for
from harness.bench.timing import ratios

REPEATS = 4  # timed epochs per variant and mode (after the warm-up): an epoch is the scenario's whole training epoch


def variant_label(variant: dict) -> str:
    return ', '.join(f'{key}={value}' for key, value in variant.items()) or 'default'


def bench_variants(config: ScenarioConfig, native_cls: type[AbstractPipeline], cache_dir: Path, *,
                   repeats: int = REPEATS, warmup: int = 1) -> dict:
    """Times one training epoch of the native cache in `cache_dir` per loader variant.

    Returns:
        `{mode: {'epoch_s': {label: median seconds}, 'vs_first': {label: median / the first variant's},
        'per_repetition': {label: [epoch / the first variant's epoch of the same repetition]}}}` for mode `'load'`
        and, with a mapped mode, `'map (page cache dropped)'`; `'default'` labels a pipeline's one variant.
    """
    rollout, sims = config.data.rollout_steps, config.train_sims
    variants = native_cls(cache_dir, rollout).loader_variants()
    labels = [variant_label(v) for v in variants]
    modes = {'load': {'memory': 'load'}, 'map (page cache dropped)': {'memory': 'map'}} \
        if 'memory' in inspect.signature(native_cls).parameters else {'load': {}}
    probe = native_cls(cache_dir, rollout)
    probe.open(sims)
    (batches,) = probe.everyday_epochs(config.data.batch_size, seed=config.seed, epochs=1)
    network = network_for(config, next(batches))  # each epoch trains a fresh copy of it
    del probe, batches
    result = {}
    for mode, options in modes.items():
        times = {label: [] for label in labels}
        for rep in range(warmup + repeats):
            for label, variant in (list(zip(labels, variants)) if rep % 2 == 0 else list(zip(labels, variants))[::-1]):
                pipeline = native_cls(cache_dir, rollout, **options)
                if options.get('memory') == 'map':
                    drop_page_cache([pipeline.cache_file(sim) for sim in sims])
                pipeline.open(sims)
                seconds = _time_epoch(pipeline, config, model.clone_network(network), variant)
                if rep >= warmup:
                    times[label].append(seconds)
                del pipeline
        first = times[labels[0]]
        result[mode] = {'epoch_s': {label: statistics.median(t) for label, t in times.items()},
                        'vs_first': {label: statistics.median(t) / statistics.median(first) for label, t in times.items()},
                        'per_repetition': {label: ratios(t, first) for label, t in times.items()}}
    return result


def _time_epoch(pipeline: AbstractPipeline, config: ScenarioConfig, network, variant: dict) -> float:
    """Seconds of one training epoch of `network` from `pipeline`'s everyday loader with `variant`."""
    optimizer = model.make_optimizer(network, config.trainer.learning_rate)
    (batches,) = pipeline.everyday_epochs(config.data.batch_size, seed=config.seed, epochs=1, **variant)
    start = time.perf_counter()
    for batch in batches:
        model.train_step(network, optimizer, batch)
    return time.perf_counter() - start


def drop_page_cache(files: list[Path]) -> None:
    """Asks the kernel to drop the cached pages of `files` (clean pages go; the next read comes from the disk)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
