"""How much `--workers N` buys on this machine: both caches built from scratch (simulation included) and the legacy
cache migrated, in this process and on a `LocalCluster` of N single-threaded workers, in one run; and the cluster's
fixed costs (start with the workers' imports, a warm-up task, a task's round trip, close), from which the crossover
size follows. Both sides are warmed up alike (imports, a tiny simulation); each traces the real sizes in its timed run.

    python -m harness.bench.scale_out --legacy legacy:LegacyPipeline --native phiml_native:NativePipeline \\
        --sims 64 --resolution 64 --workers 2 --out reports/scale_out.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from harness.cache.build import build_cache
from harness.cache.migrate import migrate_cache
from harness.config import ScenarioConfig, load_config
from harness.data.simulate import simulate
from harness.pipeline import AbstractPipeline, load_pipeline
from harness.provenance import provenance
from harness.scale import open_executor, stages


def _noop(x: int) -> int:
    return x


WARM_UP = ('sim.resolution=[8,8]', 'sim.n_steps=2', 'data.n_sims=1', 'data.n_val_sims=0', 'data.rollout_steps=1')


def _warm(x: int) -> int:
    """What a process does once before its first real task: the imports of PhiFlow's torch backend and the harness
    (a tiny simulation; the real sizes are traced in the timed runs, by each process)."""
    simulate(load_config('burgers', WARM_UP))
    return x


def measure(config: ScenarioConfig, legacy_cls: type[AbstractPipeline], native_cls: type[AbstractPipeline],
            workers: int, folder: Path) -> dict:
    """Seconds of each stage in-process and on `workers` worker processes, and their ratios (in-process / Dask).

    The in-process side runs with torch on `config.trainer.torch_threads` threads (as `harness.compare` does); each
    worker runs one thread.
    """
    r = config.data.rollout_steps
    result = {'n_sims': len(config.all_sims), 'resolution': list(config.sim.resolution),
              'n_frames': config.sim.n_frames, 'workers': workers, 'load_before': os.getloadavg()}
    torch.set_num_threads(config.trainer.torch_threads)
    _warm(0)
    here = {}
    start = time.perf_counter()
    simulation = simulate(config)
    here['simulate_s'] = time.perf_counter() - start
    for cls in (legacy_cls, native_cls):
        start = time.perf_counter()
        build_cache(cls(folder / 'here' / cls.name, r), config, simulation)
        here[f'write_{cls.name}_s'] = time.perf_counter() - start
    here['build_s'] = here['simulate_s'] + sum(here[f'write_{c.name}_s'] for c in (legacy_cls, native_cls))
    start = time.perf_counter()
    migrate_cache(folder / 'here' / legacy_cls.name, folder / 'here' / 'migrated', legacy_cls=legacy_cls,
                  native_cls=native_cls)
    here['migrate_s'] = time.perf_counter() - start
    del simulation

    dask = {}
    start = time.perf_counter()
    with open_executor(workers=workers) as executor:
        dask['cluster_start_s'] = time.perf_counter() - start
        start = time.perf_counter()
        list(executor.run(_warm, [(k,) for k in range(workers)], name='warm'))
        dask['first_task_s'] = time.perf_counter() - start  # the warm-up this process did before its timed runs
        start = time.perf_counter()
        list(executor.run(_noop, [(k,) for k in range(100)], name='noop'))
        dask['task_round_trip_s'] = (time.perf_counter() - start) / 100
        start = time.perf_counter()
        pipelines = [cls(folder / 'dask' / cls.name, r) for cls in (legacy_cls, native_cls)]
        stages.build_caches(executor, pipelines, config)
        dask['build_s'] = time.perf_counter() - start
        start = time.perf_counter()
        stages.migrate_cache(executor, folder / 'dask' / legacy_cls.name, folder / 'dask' / 'migrated',
                             legacy_cls=legacy_cls, native_cls=native_cls)
        dask['migrate_s'] = time.perf_counter() - start
        dask['close_start'] = time.perf_counter()
    dask['cluster_close_s'] = time.perf_counter() - dask.pop('close_start')
    result.update(in_process=here, dask=dask, load_after=os.getloadavg())
    fixed = dask['cluster_start_s'] + dask['first_task_s'] + dask['cluster_close_s']
    result['ratios'] = {'build': here['build_s'] / dask['build_s'], 'migrate': here['migrate_s'] / dask['migrate_s'],
                        'build_with_fixed_costs': here['build_s'] / (dask['build_s'] + fixed)}
    result['fixed_s'] = fixed
    per_sim_here, per_sim_dask = here['build_s'] / result['n_sims'], dask['build_s'] / result['n_sims']
    # in-process a*n; on Dask fixed + b*n (both linear in n past the jit trace): equal at n = fixed / (a - b)
    result['crossover_sims'] = fixed / (per_sim_here - per_sim_dask) if per_sim_here > per_sim_dask else None
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.bench.scale_out', description=__doc__.split('\n\n')[0])
    parser.add_argument('--legacy', required=True, metavar='MODULE:CLASS')
    parser.add_argument('--native', required=True, metavar='MODULE:CLASS')
    parser.add_argument('--sims', type=int, default=64)
    parser.add_argument('--resolution', type=int, default=64)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args(argv)
    config = load_config('burgers', [f'sim.resolution=[{args.resolution},{args.resolution}]',
                                     f'data.n_sims={args.sims}', 'data.n_val_sims=0'])
    folder = Path(tempfile.mkdtemp(prefix='scale-out-'))
    try:
        result = measure(config, load_pipeline(args.legacy, '--legacy'), load_pipeline(args.native, '--native'),
                         args.workers, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result['provenance'] = {k: v for k, v in provenance(config).items() if k != 'config'}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ('in_process', 'dask', 'ratios', 'fixed_s', 'crossover_sims',
                                             'load_before', 'load_after')}, indent=2))
    return 0


if __name__ == '__main__':  # worker processes are spawned: they import this module without running it
    raise SystemExit(main())
