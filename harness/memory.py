"""Peak resident memory of one pipeline's epoch, measured in a fresh subprocess so that peaks of pipelines never mix.

The worker (`python -m harness.memory`) imports everything, notes its resident set as the baseline, resets the kernel's
peak counter (`/proc/self/clear_refs`), opens the pipeline on the cached sims, iterates one epoch of model-ready batches
(`Pipeline.batches`: load + conversion) the way a training loop does (the previous batch is still referenced while the
next one is built), and reports the peak (`VmHWM`). Where the peak cannot be reset, `ru_maxrss` is used instead, which
also counts import-time peaks (then the figure can only be too high).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .errors import HarnessError
from .pipeline import AbstractPipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeakMemory:
    """Peak resident memory of one pipeline's `open` + one epoch.

    Attributes:
        pipeline: 'legacy' or 'phiml'.
        baseline_bytes: Resident set after imports, before `open`.
        peak_bytes: Highest resident set during `open` and the epoch.
        cached_bytes: Bytes of the cache files opened.
        method: 'VmHWM after clear_refs' or 'ru_maxrss'.
    """
    pipeline: str
    baseline_bytes: int
    peak_bytes: int
    cached_bytes: int
    method: str

    @property
    def epoch_bytes(self) -> int:
        """What `open` and the epoch added on top of the baseline."""
        return self.peak_bytes - self.baseline_bytes

    @property
    def ratio(self) -> float:
        """`epoch_bytes / cached_bytes`: 1.0 means the pipeline holds the cached data once and nothing more."""
        return self.epoch_bytes / self.cached_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), 'epoch_bytes': self.epoch_bytes, 'ratio': self.ratio}


def measure_peaks(pipelines: Mapping[str, AbstractPipeline], sims: Sequence[int], rollout_steps: int, batch_size: int,
                  *, seed: int, torch_threads: int, timeout_s: float = 300) -> dict[str, dict]:
    """Peak memory of each pipeline's `open(sims)` + one epoch, one worker process per pipeline, run side by side.

    Args:
        pipelines: Label -> pipeline whose cache holds `sims` (only its class and cache folder are used).

    Returns:
        Label -> `PeakMemory.to_dict()`.

    Raises:
        HarnessError: a worker failed (its last stderr line is in the message).
    """
    workers = {}
    with tempfile.TemporaryDirectory(prefix='memory-') as tmp:
        for label, pipeline in pipelines.items():
            result = Path(tmp) / f'{label}.json'
            command = [sys.executable, '-m', 'harness.memory', pipeline.name, str(pipeline.cache_dir),
                       ','.join(map(str, sims)), str(rollout_steps), str(batch_size), str(seed), str(torch_threads),
                       str(result)]
            worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
            workers[label] = (worker, result)
        try:
            return {label: _result(label, worker, result, timeout_s) for label, (worker, result) in workers.items()}
        finally:
            for worker, _ in workers.values():
                if worker.poll() is None:
                    worker.kill()
                    worker.communicate()


def _result(label: str, worker: subprocess.Popen, result: Path, timeout_s: float) -> dict:
    try:
        _, err = worker.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"memory worker for {label!r} ran longer than {timeout_s} s") from None
    if worker.returncode != 0:
        last = (err.strip().splitlines() or ['no output'])[-1]
        raise HarnessError(f"memory worker for {label!r} failed (exit {worker.returncode}): {last}")
    return PeakMemory(**json.loads(result.read_text())).to_dict()


def _status_bytes(key: str) -> int:
    """A memory figure of this process from `/proc/self/status`: `'VmRSS'` (resident now) or `'VmHWM'` (peak)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(f'{key}:'):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def _reset_peak() -> bool:
    """Resets the kernel's peak resident set counter to the current resident set; False where that is not possible."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog='python -m harness.memory', description=__doc__.splitlines()[0])
    parser.add_argument('pipeline', choices=['legacy', 'phiml'])
    parser.add_argument('cache_dir', type=Path)
    parser.add_argument('sims', help="comma-separated sim indices")
    parser.add_argument('rollout_steps', type=int)
    parser.add_argument('batch_size', type=int)
    parser.add_argument('seed', type=int)
    parser.add_argument('torch_threads', type=int)
    parser.add_argument('result', type=Path, help="JSON file the measurement is written to")
    args = parser.parse_args(argv)
    import torch
    from harness.plan import make_plan
    from legacy import LegacyPipeline
    from phiml_native import NativePipeline
    torch.set_num_threads(args.torch_threads)
    cls = LegacyPipeline if args.pipeline == 'legacy' else NativePipeline
    sims = [int(s) for s in args.sims.split(',')]
    pipeline = cls(args.cache_dir, args.rollout_steps)
    cached = sum(pipeline.manager.get_cached_path(sim).stat().st_size for sim in sims)
    baseline = _status_bytes('VmRSS')
    method = 'VmHWM after clear_refs' if _reset_peak() else 'ru_maxrss'
    if method == 'ru_maxrss':
        baseline = max(baseline, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    pipeline.open(sims)
    plan = make_plan(pipeline.window_keys(), args.batch_size, seed=args.seed, epoch=0)
    batch = None
    for batch in pipeline.batches(plan):  # noqa: B007  (a training loop holds the last batch while the next is built)
        pass
    peak = _status_bytes('VmHWM') if method != 'ru_maxrss' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del batch
    args.result.write_text(json.dumps({'pipeline': args.pipeline, 'baseline_bytes': baseline, 'peak_bytes': peak,
                                       'cached_bytes': cached, 'method': method}))
    return 0


if __name__ == '__main__':
    sys.exit(_worker(sys.argv[1:]))
