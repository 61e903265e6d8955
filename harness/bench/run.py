"""`python -m harness.bench SCENARIO [key=value ...]`: how fast and how lean each pipeline is, stage by stage, against the
memory-bandwidth floor, and how that scales; writes `bench.json` and prints a table.

`run_bench(config)` returns the content of `bench.json` (the compare report shows the same figures):

- `scenario`, `machine` (cpu, cores, torch threads, package versions, how native batches are gathered: `gather`, as
  the native class's `gather_method` states it), `config` (resolved), `wall_s`.
- `method`: repetitions, warm-up, statistic (median), interleaving, what "cold" means, how memory is measured.
- `bandwidth`: streaming copy bandwidth (`harness.floor.Bandwidth`): `bytes_per_s` and its two measurements, medians
  of the samples taken between the timed repetitions of the whole run (each floor uses the samples of its own
  repetitions: `bandwidth_bytes_per_s` beside it).
- `stages`: `write`, `read`, `iterate`, `convert`, `step` -> `legacy_s`, `native_s`, `speedup` (legacy / native) and
  each stage's baseline (`harness.stages.bench_stages`): `read.native_vs_npy_load`, `iterate.native_vs_floor`,
  `iterate.legacy_vs_floor`, `convert.native_vs_step`, ...; `per_repetition` holds those ratios taken repetition by
  repetition (each time paired with its reference measured in the same repetition).
- `memory`: per pipeline (`legacy`, `native`) peak resident memory of `open` + one epoch of the scenario's training
  sims (`harness.bench.memory.PeakMemory.to_dict`: `baseline_bytes`, `peak_bytes`, `epoch_bytes`, `cached_bytes`, `ratio`,
  and for a `for` loop that holds the previous batch, `loop_peak_bytes`, `loop_ratio`; `batch_ratio`).
- `scaling`: `{'resolution': [...], 'sims': [...]}`, one entry per size (`harness.scaling.bench_scaling`) with
  `legacy_s`, `native_s`, `speedup`, `native_vs_floor`, `legacy_vs_floor`, `per_repetition`, `adjustments`, and
  `memory` where measured.
- `mapped` (unless skipped): the native dataset mapped against loaded on a cache of >= 1 GiB
  (`harness.scaling.bench_mapped`): epoch times, `mapped_vs_loaded`, and per mode the memory of open + an epoch with
  its anonymous part (`anon_epoch_bytes`), against 3 batches + 64 MB (`anon_vs_limit`).
- `variants` (unless skipped): one training epoch of the scenario per native loader variant (prefetch off and on),
  loaded and mapped from a dropped page cache (`harness.bench.variants.bench_variants`): `epoch_s`, `vs_first` (over
  the first variant) and `per_repetition` per variant.
- `targets`: one row per target of the migration (`name`, `where`, `value`, `limit`, `met`, and `spread`: the first
  and third quartile of the same ratio per repetition, None for a single measurement). `met` judges `value`: where
  both sides of the ratio were timed in every repetition, the median of the per-repetition ratios, as compare's
  verdict judges its stages (a shared host that speeds up or slows down between repetitions moves both sides of one
  repetition alike, but can put the two medians in different repetitions: `of_medians`, the ratio of the medians, is
  kept beside it); else the single figure. A cold read row also holds `alternative` (the read over one train step,
  <= 1 %): it is met when either is.

Exit code: 0 after a run (targets missed are reported, not failed: timings on a shared machine are evidence, not
assertions), 2 for bad usage or a bad config.
"""
from __future__ import annotations

import inspect
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from harness.atomic import atomic_path
from harness.config import ScenarioConfig, load_config
from harness.pipeline import AbstractPipeline
from harness.bench.bandwidth import BandwidthProbe
from harness.bench.memory import measure_peaks
from harness.provenance import provenance
from harness.bench.scaling import bench_mapped, bench_scaling
from harness.bench.variants import REPEATS as VARIANT_REPEATS, bench_variants
from harness.data.simulate import simulate
from harness.bench.stages import bench_stages
from harness.bench.timing import middle_half

logger = logging.getLogger(__name__)
MEMORY_AT = ('128x128', '4x sims')
# timed repetitions per figure: at 128x128 both pipelines copy at the same memory-bound speed, and single repetitions
# on a shared 2-core VM put native/legacy anywhere in 0.86-1.55 around a median of 1.14; a median of 10 holds steady.
# Always even: the pipelines alternate their order repetition by repetition, and the one that runs second (after the
# other's code and data filled the CPU caches) is timed differently, so each order must run equally often.
REPEATS = 10
SPEED_TARGET = 1.5  # batch loading, native >= 1.5x legacy with 1-D and 32x32 frames (>= 1.0x at every other size)
FAST_SIZES = ('1d-256', '32x32')
FLOOR_TARGET = 1.5  # batch loading, native <= 1.5x the floor with 64x64 frames and larger
FLOOR_SIZES = ('64x64', '128x128', '32x32x32')
READ_TARGET = 1.5  # cold read <= 1.5x np.load of .npy files, or below READ_STEP_TARGET of a train step (the looser)
READ_STEP_TARGET = 0.01
CONVERT_TARGET = 0.01  # conversion < 1 % of a train step
SHARE_TARGET = 0.02  # batch loading / (batch loading + train step) <= 2 % at every size
MEMORY_TARGET = 1.3  # native epoch peak <= 1.3x the cached data (above the baseline)
MAPPED_TIME_TARGET = 1.3  # mapped epoch <= 1.3x the loaded epoch (warm page cache)
STEP_TARGET = 0.9  # train step speedup: compare's default min_speedup (the same work on equal batches)


def run_bench(config: ScenarioConfig, legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline],
              out: Path | None = None, *, repeats: int = REPEATS, warmup: int = 1, scaling: bool = True,
              memory: bool = True, mapped: bool = False, variants: bool = False, argv: list[str] | None = None
              ) -> dict:
    """Benchmarks both pipelines on `config`; writes `out/bench.json` when `out` is given. Keys: see the module doc.

    Args:
        config: The scenario (its training sims are timed; validation sims are not simulated).
        out: Folder for `bench.json`, created if needed.
        repeats: Timed repetitions per figure (>= 5 for the published figures; fewer for smoke tests), rounded up to
            an even number (see `REPEATS`).
        warmup: Untimed repetitions first.
        scaling: Include the scaling sweep (1-D, 32², 64², 128², 32³, 2x and 4x sims).
        memory: Measure peak resident memory (one subprocess per pipeline and size).
        mapped: Include the native dataset's mapped mode against its loaded mode on a cache of >= 1 GiB
            (`harness.scaling.bench_mapped`; the CLI runs it unless `--skip mapped`).
        variants: Include one training epoch per native loader variant (`harness.bench.variants`; the CLI runs it
            unless `--skip variants`).

    Raises:
        HarnessError: a memory worker failed, or `out` cannot be written.
    """
    started, repeats = time.perf_counter(), repeats + repeats % 2
    torch.set_num_threads(config.trainer.torch_threads)
    workdir = Path(tempfile.mkdtemp(prefix='harness-bench-'))
    try:
        probe = BandwidthProbe()
        probe.sample()  # warm-up (first copy, thread pool start), not counted
        warm = len(probe.samples)
        simulation = simulate(config)
        result = {
            'scenario': config.name,
            'machine': _machine(config, argv, native_cls),
            'method': _method(repeats, warmup),
            'stages': bench_stages(config, legacy_cls, native_cls, simulation, workdir / 'stages', probe, repeats=repeats, warmup=warmup),
        }
        if memory:
            rollout = config.data.rollout_steps
            caches = {'legacy': legacy_cls(workdir / 'stages' / 'legacy', rollout),
                      'native': native_cls(workdir / 'stages' / 'phiml', rollout)}
            result['memory'] = measure_peaks(caches, config.train_sims, rollout, config.data.batch_size,
                                             seed=config.seed, torch_threads=config.trainer.torch_threads)
        if variants:
            result['variants'] = bench_variants(config, native_cls, workdir / 'stages' / 'phiml',
                                                repeats=min(repeats, VARIANT_REPEATS), warmup=warmup)
        if scaling:
            result['scaling'] = bench_scaling(config, legacy_cls, native_cls, workdir / 'scaling', probe, repeats=repeats, warmup=warmup,
                                              memory_at=MEMORY_AT if memory else ())
        if mapped and 'memory' in inspect.signature(native_cls).parameters:  # a pipeline with a mapped mode
            result['mapped'] = bench_mapped(config, native_cls, workdir, repeats=repeats, warmup=warmup, memory=memory)
        result['bandwidth'] = probe.bandwidth(since=warm).to_dict()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result['targets'] = targets(result)
    result['wall_s'] = time.perf_counter() - started
    if out is not None:
        write_json(result, Path(out) / 'bench.json')
    return result


def write_json(result: dict, path: Path) -> Path:
    """Writes `result` atomically as indented JSON."""
    with atomic_path(path, '.json') as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=float))
    return path


def targets(result: dict) -> list[dict]:
    """The migration's performance targets, each with the measured value and whether it is met (a cold read row
    also carries its `alternative`: the read over a train step, met when either is)."""
    rows = []

    def add(name: str, where: str, figures: dict, key: str, limit: float, at_most: bool, alternative=None):
        paired = figures.get('per_repetition', {}).get(key, [])  # both sides of a ratio timed in each repetition
        value = statistics.median(paired) if paired else figures[key]
        met = value <= limit if at_most else value >= limit
        row = {'name': name, 'where': where, 'value': value, 'limit': limit, 'spread': middle_half(paired)}
        if paired:
            row['of_medians'] = figures[key]
        if alternative is not None:
            row['alternative'] = alternative
            met = met or alternative['value'] <= alternative['limit']
        rows.append({**row, 'met': bool(met)})

    def read(where: str, figures: dict):
        alternative = {'name': 'native / train step', 'value': figures['native_vs_step'], 'limit': READ_STEP_TARGET} \
            if 'native_vs_step' in figures else None
        add('cold read, native / np.load of .npy', where, figures, 'native_vs_npy_load', READ_TARGET, True, alternative)

    stages = result['stages']
    read('scenario', stages['read'])
    for stage, title in (('write', 'cache write'), ('read', 'cold read')):  # never slower than legacy, as compare judges
        figures = stages[stage]
        alternative = {'name': 'native extra / training it feeds', 'value': figures['extra_vs_training'],
                       'limit': figures['one_time_share']} if 'extra_vs_training' in figures else None
        add(f'{title}, speedup over legacy', 'scenario', figures, 'speedup', 1.0, False, alternative)
    add('conversion, speedup over legacy', 'scenario', stages['convert'], 'speedup', 1.0, False)
    add('conversion, native / train step', 'scenario', stages['convert'], 'native_vs_step', CONVERT_TARGET, True)
    add('batch loading, speedup over legacy', 'scenario', stages['iterate'], 'speedup', 1.0, False)
    if 'loading_share' in stages['iterate']:
        add('batch loading share of a train step', 'scenario', stages['iterate'], 'loading_share', SHARE_TARGET, True)
    add('train step, speedup over legacy', 'scenario', stages['step'], 'speedup', STEP_TARGET, False)
    for entry in [*result.get('scaling', {}).get('resolution', []), *result.get('scaling', {}).get('sims', [])]:
        speed = SPEED_TARGET if entry['label'] in FAST_SIZES else 1.0
        add('batch loading, speedup over legacy', entry['label'], entry, 'speedup', speed, False)
        if entry['label'] in FLOOR_SIZES:
            add('batch loading, native / floor', entry['label'], entry, 'native_vs_floor', FLOOR_TARGET, True)
        if 'loading_share' in entry:
            add('batch loading share of a train step', entry['label'], entry, 'loading_share', SHARE_TARGET, True)
        if 'read' in entry:
            read(entry['label'], entry['read'])
        if 'memory' in entry:
            add('peak memory, native epoch / cached data', entry['label'], entry['memory']['native'], 'ratio',
                MEMORY_TARGET, True)
    if 'memory' in result:
        add('peak memory, native epoch / cached data', 'scenario', result['memory']['native'], 'ratio', MEMORY_TARGET, True)
        epochs = {name: result['memory'][name]['epoch_bytes'] for name in ('legacy', 'native')}
        add('peak memory, native epoch / legacy epoch', 'scenario', {'ratio': epochs['native'] / epochs['legacy']},
            'ratio', 1.0, True)
    if 'mapped' in result:
        where = f"{result['mapped']['cached_bytes'] / 2 ** 30:.2f} GiB"
        add('mapped epoch / loaded epoch', where, result['mapped'], 'mapped_vs_loaded', MAPPED_TIME_TARGET, True)
        if 'anon_vs_limit' in result['mapped']:
            add('mapped epoch anonymous memory / (3 batches + 64 MB)', where, result['mapped'], 'anon_vs_limit', 1.0,
                True)
    return rows


def format_table(result: dict) -> str:
    """The figures of `result` as plain-text tables: stages, scaling, memory, targets."""
    import pandas as pd
    bandwidth = result['bandwidth']['bytes_per_s']
    lines = [f"{result['scenario']} on {result['machine']['cpu']} ({result['machine']['cpu_count']} cores, "
             f"torch threads {result['machine']['torch_threads']}); copy bandwidth {bandwidth / 1e9:.2f} GB/s; "
             f"medians of {result['method']['repeats']} interleaved repetitions; {streaming_note(result['machine'])}"]
    stages = pd.DataFrame([{'stage': name, 'speedup': s['speedup'], 'legacy ms': s['legacy_s'] * 1e3,
                            'native ms': s['native_s'] * 1e3, 'baseline': _baseline(name, s)}
                           for name, s in result['stages'].items()])
    lines += ['', stages.to_string(index=False, float_format=lambda v: f'{v:.3g}')]
    if 'scaling' in result:
        rows = [{'size': e['label'], 'speedup': e['speedup'], 'native/floor': e['native_vs_floor'],
                 'legacy/floor': e['legacy_vs_floor'], 'legacy ms': e['legacy_s'] * 1e3, 'native ms': e['native_s'] * 1e3,
                 'floor ms': e['floor_s'] * 1e3, 'MB/epoch': e['epoch_bytes'] / 1e6,
                 'read: native/np.load': e['read']['native_vs_npy_load'],
                 'read: npz/np.load': e['read'].get('npz_vs_npy_load', float('nan')),
                 'read speedup': e['read']['speedup'],
                 'step s': e.get('step_s', float('nan')), 'loading share': e.get('loading_share', float('nan'))}
                for part in ('resolution', 'sims') for e in result['scaling'][part]]
        lines += ['', 'by size: one epoch of batch loading (speedup = legacy / native), and the cold open of all sims:',
                  pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f'{v:.3g}')]
    where = [('scenario', result['memory'])] if 'memory' in result else []
    where += [(e['label'], e['memory']) for e in [*result.get('scaling', {}).get('resolution', []),
                                                 *result.get('scaling', {}).get('sims', [])] if 'memory' in e]
    memory = [{'where': label, **{f'{p} x cached': m['ratio'] for p, m in peaks.items()},
               **{f'{p} for loop': m.get('loop_ratio', float('nan')) for p, m in peaks.items()},
               'batch x cached': peaks['native'].get('batch_ratio', float('nan')),
               'cached MB': peaks['native']['cached_bytes'] / 1e6} for label, peaks in where]
    if memory:
        lines += ['', 'peak memory of open + one epoch above the baseline, per byte of cached data (for loop: a second '
                      'epoch holding the previous batch while building the next):',
                  pd.DataFrame(memory).to_string(index=False, float_format=lambda v: f'{v:.3g}')]
    if 'mapped' in result:
        m = result['mapped']
        lines += ['', f"mapped mode, {m['n_sims']} sims of {m['frame']} frames ({m['cached_bytes'] / 1e9:.2f} GB): epoch "
                      f"{m['mapped_s']:.3g} s mapped, {m['loaded_s']:.3g} s loaded"]
        if 'memory' in m:
            lines += [f"  anonymous memory of open + epoch: mapped {m['memory']['map']['anon_epoch_bytes'] / 1e6:.1f} MB "
                      f"(limit {m['anon_limit_bytes'] / 1e6:.1f} MB), loaded "
                      f"{m['memory']['load']['anon_epoch_bytes'] / 1e6:.1f} MB "
                      f"({m['memory']['load']['anon_epoch_bytes'] / m['cached_bytes']:.3g}x the cache files)"]
    lines += variant_lines(result)
    lines += ['', 'targets (the median of the ratio taken repetition by repetition, where both sides are timed in each; '
                  'spread: its middle half; of medians: the ratio of the two medians):']
    lines += [f"  {'met ' if t['met'] else 'MISS'} {t['name']} [{t['where']}]: {t['value']:.3g} "
              f"({'<=' if 'speedup' not in t['name'] else '>='} {t['limit']:g})" + _alternative(t) + _spread(t)
              for t in result['targets']]
    return '\n'.join(lines)


def streaming_note(machine: dict) -> str:
    """How the native batches of the run recorded in `machine` were gathered, in words (also for the records of
    bench runs from before the compiled gather was removed: `streaming_gather`)."""
    if 'gather' in machine:
        return f"native batches gathered with {machine['gather']}"
    streaming = machine.get('streaming_gather')
    if streaming is None:
        return 'streaming gather not recorded'
    return f"native batches of {streaming['min_batch_bytes'] / 2 ** 20:g} MiB and more streamed" if streaming['on'] \
        else 'native batches taken with np.take'


def _alternative(target: dict) -> str:
    alternative = target.get('alternative')
    return f" or {alternative['name']} {alternative['value']:.3g} (<= {alternative['limit']:g})" if alternative else ''


def variant_lines(result: dict) -> list[str]:
    """One line per mode of the loader-variant epochs in `result` (none where they were not run)."""
    return [f"one training epoch per native loader variant, {mode}: " + ', '.join(
        f"{label} {figures['epoch_s'][label]:.3g} s ({ratio:.3g}x{_spread_of(figures['per_repetition'][label])})"
        for label, ratio in figures['vs_first'].items()) for mode, figures in result.get('variants', {}).items()]


def _spread_of(values: list[float]) -> str:
    spread = middle_half(values)
    return f", per repetition {spread[0]:.3g}-{spread[1]:.3g}" if spread and spread[0] != spread[1] else ''


def _spread(target: dict) -> str:
    spread, of_medians = target.get('spread'), target.get('of_medians')
    return (f"; spread {spread[0]:.3g}-{spread[1]:.3g}" if spread else '') + \
        (f"; of medians {of_medians:.3g}" if of_medians is not None else '')


def _baseline(stage: str, figures: dict) -> str:
    if stage == 'read':
        reference = f" (numpy's .npz reader {figures['npz_vs_npy_load']:.2f}x)" if 'npz_vs_npy_load' in figures else ''
        return f"native {figures['native_vs_npy_load']:.2f}x np.load of .npy" + reference
    if stage == 'iterate':
        return f"native {figures['native_vs_floor']:.2f}x, legacy {figures['legacy_vs_floor']:.2f}x the floor"
    if stage == 'convert':
        return f"per batch: native {figures['native_vs_step']:.2%}, legacy {figures['legacy_vs_step']:.2%} of a step"
    return ''


def _machine(config: ScenarioConfig, argv: list[str] | None, native_cls: type[AbstractPipeline]) -> dict:
    info = provenance(config, argv)
    machine = {key: info[key] for key in ('cpu', 'cpu_count', 'torch_threads', 'python', 'platform', 'packages',
                                          'git_commit', 'date', 'argv')}
    machine['gather'] = getattr(native_cls, 'gather_method', f'a method {native_cls.__name__} does not state')
    return machine


def _method(repeats: int, warmup: int) -> dict:
    return {
        'repeats': repeats, 'warmup': warmup, 'statistic': 'median',
        'interleaved': 'legacy and native alternate within each repetition, order reversed every other repetition '
                       '(an even number of repetitions: each order as often)',
        'cold_read': 'a fresh pipeline object opens every training sim, the native reader\'s layout caches cleared; '
                     'each repetition reads legacy, native and np.load of .npy files in the order legacy-native-npy, '
                     'then legacy-npy-native, and takes the mean of each one\'s two reads (so native and its baseline '
                     'each follow the legacy read once); for phiml.math.save files then, for reference, numpy\'s own '
                     '.npz reader of the field members (np.load of each file, then each member) in the orders '
                     'legacy-npz-npy and legacy-npy-npz, with legacy and np.load reads of its own (a read right after '
                     'it is faster: those stay out of the target\'s samples); '
                     'before each read (and each np.load baseline) the previous result is dropped and freed memory is '
                     'handed back to the OS (malloc_trim), so every read gets fresh pages as a new process does; the '
                     'OS page cache stays warm (dropping it needs root and would time the disk)',
        'iterate': 'one epoch of load_batches, each batch let go before the next is built',
        'floor': 'bytes one epoch moves into batches (each window: initial frame + rollout frames) / streaming copy '
                 'bandwidth (one copy between two 256 MiB arrays by numpy and one by torch after every timed '
                 'repetition of the same figure; median of each, the faster one counts)',
        'memory': 'peak resident set (VmHWM, reset after imports) of open + one epoch (each batch let go before the '
                  'next is built) in a fresh subprocess per pipeline, minus the resident set after imports, over the '
                  'bytes of the cache files; loop_ratio: the same for a second epoch in a for loop that holds the '
                  'previous batch while the next is built',
        'convert': 'to_phiml of each batch plus the native() view math.native_call hands the network',
        'loading_share': 'native batch loading per batch (one epoch / batches) over that plus one native train step on '
                         'a full batch (scaling: median of 2 after one untimed)',
        'mapped': 'a synthetic cache of >= 1 GiB; each repetition one epoch of the loaded dataset (opened once) and one '
                  'of a freshly opened mapped one (pages faulted in from the warm page cache), order alternating; '
                  'anonymous memory (RssAnon) sampled after open and as each batch is handed over',
        'variants': f'{VARIANT_REPEATS} epochs (fewer where `repeats` is) per native loader variant after the '
                    'warm-up, each a training epoch from everyday_epochs on a fresh pipeline and a fresh copy of one '
                    'network, variants in an order reversed every other repetition; mapped: the page cache of the '
                    'cache files dropped first (posix_fadvise DONTNEED)',
    }

