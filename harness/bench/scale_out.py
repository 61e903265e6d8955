"""How much `--workers N` buys on this machine, in one run: both caches built from scratch (simulation included) and
the legacy cache migrated, in this process and on a `LocalCluster` of N single-threaded workers; the cluster's fixed
costs (start, a trivial task's round trip, the workers' first imports, close); and cold builds of fewer sims, from
which the crossover follows (the number of sims from which `--workers N` is faster).

Each size is built in this process and then on the cluster, one right after the other, so that the load of the
machine changes little between the two; both sides are warmed up alike (imports, a tiny simulation) and trace the
real sizes in their timed runs.

    python -m harness.scale_out --legacy legacy:LegacyPipeline --native phiml_native:NativePipeline \\
        --sims 64 --resolution 64 --workers 2 --crossover-sims 4,8,16,32 --out reports/scale_out.json
"""
from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

# The harness, torch and PhiFlow are imported inside the functions, so that importing this module costs nothing that
# would be timed as the cluster's start (its command, `harness.scale_out`, imports nothing before its `__main__` guard).
if TYPE_CHECKING:
    from harness.config import ScenarioConfig
    from harness.pipeline import AbstractPipeline

ROUND_TRIPS = 20
WARM_UP = ('sim.resolution=[8,8]', 'sim.n_steps=2', 'data.n_sims=1', 'data.n_val_sims=0', 'data.rollout_steps=1')


def _noop(x: int) -> int:
    return x


def _warm(x: int = 0) -> int:
    """What a process does once before its first real task: the imports of PhiFlow's torch backend and the harness
    (a tiny simulation; the real sizes are traced in the timed runs, by each process)."""
    from harness.config import load_config
    from harness.data.simulate import simulate
    simulate(load_config('burgers', WARM_UP))
    return x


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def scenario(sims: int, resolution: int) -> ScenarioConfig:
    """The benchmark's burgers scenario: `sims` training sims of the default 41 frames at `resolution`²."""
    from harness.config import load_config
    return load_config('burgers', [f'sim.resolution=[{resolution},{resolution}]', f'data.n_sims={sims}',
                                   'data.n_val_sims=0'])


def build_here(config: ScenarioConfig, classes: Sequence[type[AbstractPipeline]], folder: Path) -> dict[str, float]:
    """Seconds to simulate and write every pipeline's cache in this process (as `harness.compare` does)."""
    from harness.cache.build import build_cache
    from harness.data.simulate import simulate
    r = config.data.rollout_steps
    times = {}
    start = time.perf_counter()
    simulation = simulate(config)
    times['simulate_s'] = time.perf_counter() - start
    for cls in classes:
        times[f'write_{cls.name}_s'] = _seconds(lambda: build_cache(cls(folder / cls.name, r), config, simulation))
    times['build_s'] = time.perf_counter() - start
    return times


def build_on(executor, config: ScenarioConfig, classes: Sequence[type[AbstractPipeline]], folder: Path,
             *, simulate_first: bool = False) -> float:
    """Seconds to build every pipeline's cache on `executor`: each write task simulates its chunk (`harness.train`'s
    path), or, with `simulate_first`, the simulation tasks return the fields and the write tasks get them shipped
    back (`harness.compare`'s path, which needs the fields here)."""
    from harness.scale import stages
    pipelines = [cls(folder / cls.name, config.data.rollout_steps) for cls in classes]

    def build():
        simulation = stages.simulate(executor, config) if simulate_first else None
        stages.build_caches(executor, pipelines, config, simulation)
    return _seconds(build)


def crossover(sizes: Sequence[int], here_s: Mapping[int, float], dask_s: Mapping[int, float],
              overhead_s: float) -> dict[str, float | int | None]:
    """Where `--workers` starts to win: the smallest measured size whose in-process build took longer than the Dask
    build plus `overhead_s`, and the size where the difference crosses zero, interpolated linearly between the
    measured sizes around it (None when it never does, or already at the smallest size: then `below` says so).

    Args:
        sizes: Numbers of sims measured, ascending.
        here_s, dask_s: Seconds of each size's build, in this process and on the cluster.
        overhead_s: What the cluster adds once per command (0 for a cluster already running).
    """
    gain = [here_s[n] - dask_s[n] - overhead_s for n in sizes]
    first = next((i for i, g in enumerate(gain) if g > 0), None)
    result: dict[str, float | int | None] = {'first_faster_sims': None if first is None else sizes[first],
                                             'interpolated_sims': None, 'below': False}
    if first == 0:
        result['below'] = True  # faster already at the smallest size measured
    elif first is not None:
        (n0, g0), (n1, g1) = (sizes[first - 1], gain[first - 1]), (sizes[first], gain[first])
        result['interpolated_sims'] = n0 + (n1 - n0) * -g0 / (g1 - g0)
    return result


def machine() -> dict[str, str | list[float]]:
    """What the machine was and how loaded while measured: `lscpu`'s model name, `uptime`, the load averages."""
    def run(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ''
    model = next((line.split(':', 1)[1].strip() for line in run('lscpu').splitlines()
                  if line.startswith('Model name:')), '')
    return {'lscpu_model': model, 'uptime': run('uptime'), 'load': list(os.getloadavg())}


def measure(config: ScenarioConfig, legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline],
            workers: int, folder: Path, crossover_sims: Sequence[int] = ()) -> dict:
    """Seconds of each stage in this process and on `workers` worker processes, their ratios (in-process / Dask),
    the cluster's fixed costs and the crossover.

    The in-process side runs torch on `config.trainer.torch_threads` threads (as `harness.compare` does); each worker
    runs one thread.
    """
    import torch

    from harness.cache.migrate import migrate_cache
    from harness.scale import open_executor, stages
    classes = (legacy_cls, native_cls)
    n_sims, resolution = len(config.all_sims), config.sim.resolution[0]
    sizes = sorted({*crossover_sims, n_sims})
    result = {'n_sims': n_sims, 'resolution': list(config.sim.resolution), 'n_frames': config.sim.n_frames,
              'workers': workers, 'torch_threads_in_process': config.trainer.torch_threads,
              'machine_before': machine()}
    torch.set_num_threads(config.trainer.torch_threads)
    _warm()
    here, dask, cluster = {}, {}, {}
    here_builds, dask_builds = {}, {}
    start = time.perf_counter()
    with open_executor(workers=workers) as executor:
        cluster['start_s'] = time.perf_counter() - start
        cluster['first_round_trip_s'] = _seconds(lambda: list(executor.run(_noop, [(0,)], name='noop')))
        cluster['workers_warm_up_s'] = _seconds(lambda: executor.client.run(_warm))  # on every worker, at once
        trips = [_seconds(lambda: list(executor.run(_noop, [(k,)], name='noop'))) for k in range(ROUND_TRIPS)]
        cluster['round_trip_s'] = statistics.median(trips)
        for n in sizes:
            sized = config if n == n_sims else scenario(n, resolution)
            here_builds[n] = build_here(sized, classes, folder / f'here-{n}')
            dask_builds[n] = build_on(executor, sized, classes, folder / f'dask-{n}')
        here.update(here_builds[n_sims])
        dask['build_s'] = dask_builds[n_sims]
        dask['build_simulate_first_s'] = build_on(executor, config, classes, folder / 'dask-compare',
                                                  simulate_first=True)
        source = folder / f'here-{n_sims}' / legacy_cls.name
        here['migrate_s'] = _seconds(lambda: migrate_cache(source, folder / 'migrated-here', legacy_cls=legacy_cls,
                                                           native_cls=native_cls))
        dask['migrate_s'] = _seconds(lambda: stages.migrate_cache(executor, source, folder / 'migrated-dask',
                                                                  legacy_cls=legacy_cls, native_cls=native_cls))
        closing = time.perf_counter()
    cluster['close_s'] = time.perf_counter() - closing
    cluster['fixed_overhead_s'] = cluster['start_s'] + cluster['first_round_trip_s']
    cluster['cold_command_overhead_s'] = (cluster['fixed_overhead_s'] + cluster['workers_warm_up_s']
                                          + cluster['close_s'])
    here_s = {n: here_builds[n]['build_s'] for n in sizes}
    result.update(in_process=here, dask=dask, cluster=cluster, machine_after=machine())
    result['builds'] = [{'n_sims': n, 'in_process_s': here_s[n], 'dask_s': dask_builds[n],
                         'ratio': here_s[n] / dask_builds[n]} for n in sizes]
    result['ratios'] = {
        'build': here['build_s'] / dask['build_s'],
        'build_simulate_first': here['build_s'] / dask['build_simulate_first_s'],
        'migrate': here['migrate_s'] / dask['migrate_s'],
        'build_with_cold_command_overhead': here['build_s'] / (dask['build_s'] + cluster['cold_command_overhead_s'])}
    result['crossover'] = {
        'running_cluster': crossover(sizes, here_s, dask_builds, 0.0),
        'cold_command': crossover(sizes, here_s, dask_builds, cluster['cold_command_overhead_s'])}
    return result
