"""Peak resident memory of one pipeline's epoch, measured in a fresh subprocess so that peaks of pipelines never mix.

The worker (`python -m harness.bench.memory`) imports everything and runs the pipeline once on its first two sims (open, one
batch of two windows, then another), so that the code pages of every library on the path are resident before the
baseline is taken: a first call faults in the pages of the shared libraries it runs (more file-backed pages than a small
batch holds), and those belong to the interpreter's baseline, not to
the data. Their growth during the measurement is reported (`file_backed_bytes`, counted in the peaks). It then
hands freed memory back to the OS, notes its resident set as the baseline, resets the kernel's peak counter
(`/proc/self/clear_refs`), opens the pipeline on the cached sims and builds one epoch of model-ready batches
(`Pipeline.batches`: load + conversion) as the benchmarks time it, each batch let go before the next is built
(`harness.pipeline.drain`); that peak (`VmHWM`) is the figure the target judges. It then resets the counter and runs
the epoch again the way a `for` loop over batches does, the previous batch still referenced while the next is built:
that peak is reported beside it (about one batch more). Where the peak cannot be reset, `ru_maxrss` is used instead,
which also counts import-time peaks (then the figures can only be too high).
"""
from __future__ import annotations

import argparse
import ctypes
import functools
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

from harness.errors import HarnessError
from harness.pipeline import AbstractPipeline, class_spec

logger = logging.getLogger(__name__)
# Sims the warm-up opens (two windows of each, in batches of this many): two, not one, so that every code path runs with
# more than one element (sorting a single sim or window skips code whose pages a 2-core VM counted as 60-110 KB of RSS)
WARM_SIMS = 2


@dataclass(frozen=True)
class PeakMemory:
    """Peak resident memory of one pipeline's `open` + one epoch.

    Attributes:
        pipeline: 'legacy' or 'phiml'.
        baseline_bytes: Resident set after imports and a run on one sim (code pages resident, freed memory returned),
            before `open`.
        peak_bytes: Highest resident set during `open` and an epoch that lets each batch go before building the next.
        loop_peak_bytes: Highest resident set during a second epoch that holds the previous batch while building the
            next (a `for batch in ...` loop), with the data still open.
        cached_bytes: Bytes of the cache files opened.
        batch_bytes: Bytes of the tensors of one full batch (initial states and targets).
        file_backed_bytes: Growth of the file-backed resident set (`RssFile`: code pages of libraries, memory-mapped
            files) from the baseline to the end; part of the peaks, ~0 when the warm-up ran every code path.
        method: 'VmHWM after clear_refs' or 'ru_maxrss'.
        anon_epoch_bytes: Highest anonymous resident memory (`RssAnon`: what is not backed by a file, so not the
            pages of a memory-mapped cache) above its baseline, sampled after `open` and as each batch of the first
            epoch is handed over (when the batch just built is complete and the one before it let go).
        memory_mode: How the native dataset held the cache (`'load'` or `'map'`); None for other pipelines.
    """
    pipeline: str
    baseline_bytes: int
    peak_bytes: int
    loop_peak_bytes: int
    cached_bytes: int
    batch_bytes: int
    file_backed_bytes: int
    method: str
    anon_epoch_bytes: int = 0
    memory_mode: str | None = None

    @property
    def epoch_bytes(self) -> int:
        """What `open` and the epoch added on top of the baseline."""
        return self.peak_bytes - self.baseline_bytes

    @property
    def ratio(self) -> float:
        """`epoch_bytes / cached_bytes`: 1.0 means the pipeline holds the cached data once and nothing more."""
        return self.epoch_bytes / self.cached_bytes

    @property
    def loop_ratio(self) -> float:
        """The same for the epoch that holds the previous batch: at least `1 + 2 * batch_bytes / cached_bytes` for a
        pipeline that holds the data once."""
        return (self.loop_peak_bytes - self.baseline_bytes) / self.cached_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), 'epoch_bytes': self.epoch_bytes, 'ratio': self.ratio, 'loop_ratio': self.loop_ratio,
                'batch_ratio': self.batch_bytes / self.cached_bytes}


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
            command = [sys.executable, '-m', 'harness.bench.memory', class_spec(type(pipeline)), str(pipeline.cache_dir),
                       ','.join(map(str, sims)), str(rollout_steps), str(batch_size), str(seed), str(torch_threads),
                       str(result), *(['--memory', pipeline.memory] if getattr(pipeline, 'memory', None) else [])]
            worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, 'PYTHONWARNINGS': 'ignore', 'PYTHONPATH': _import_path()})
            workers[label] = (worker, result)
        try:
            return {label: _result(label, worker, result, timeout_s) for label, (worker, result) in workers.items()}
        finally:
            for worker, _ in workers.values():
                if worker.poll() is None:
                    worker.kill()
                    worker.communicate()


def _import_path() -> str:
    """This process's `sys.path` as `PYTHONPATH`: a worker imports the pipeline class from where this process did (a
    team's module importable here, e.g. from the working folder, is importable there)."""
    return os.pathsep.join(str(Path(entry).resolve()) if entry else os.getcwd() for entry in sys.path)


def _result(label: str, worker: subprocess.Popen, result: Path, timeout_s: float) -> dict:
    try:
        _, err = worker.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"memory worker for {label!r} ran longer than {timeout_s} s") from None
    if worker.returncode != 0:
        last = (err.strip().splitlines() or ['no output'])[-1]
        raise HarnessError(f"memory worker for {label!r} failed (exit {worker.returncode}): {last}")
    return PeakMemory(**json.loads(result.read_text())).to_dict()


def release_free_memory() -> bool:
    """Hands the memory this process has freed back to the OS (glibc's `malloc_trim`), so that the next allocations
    get fresh pages, as in a new process; False where the C library has no such call (the memory stays warm then).

    Cold-read timings call this before each read: without it, `np.load`'s many small arrays landed in warm memory
    freed by the previous read, while a pipeline's one large array got fresh pages. Only memory already freed is handed
    back: results are freed by reference counting when dropped (no `gc.collect()`, which walks every object and leaves
    the next read with cold CPU caches).
    """
    trim = getattr(_libc(), 'malloc_trim', None)
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


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
    parser = argparse.ArgumentParser(prog='python -m harness.bench.memory', description=__doc__.splitlines()[0])
    parser.add_argument('pipeline', help="the pipeline class, MODULE:CLASS")
    parser.add_argument('cache_dir', type=Path)
    parser.add_argument('sims', help="comma-separated sim indices")
    parser.add_argument('rollout_steps', type=int)
    parser.add_argument('batch_size', type=int)
    parser.add_argument('seed', type=int)
    parser.add_argument('torch_threads', type=int)
    parser.add_argument('result', type=Path, help="JSON file the measurement is written to")
    parser.add_argument('--memory', choices=['auto', 'load', 'map'], help="how the native dataset holds the cache")
    args = parser.parse_args(argv)
    import torch
    from harness.pipeline import drain
    from harness.plan import make_plan
    from harness.pipeline import load_pipeline
    torch.set_num_threads(args.torch_threads)
    cls = load_pipeline(args.pipeline)
    options = {'memory': args.memory} if args.memory else {}  # the native dataset's mode (see measure_peaks)
    sims = [int(s) for s in args.sims.split(',')]
    make = lambda: cls(args.cache_dir, args.rollout_steps, **options)  # noqa: E731
    warm = make()  # code paths run once (see the module doc), then let go
    warm.open(sims[:WARM_SIMS])
    drain(warm.batches(make_plan(warm.window_keys()[:2 * WARM_SIMS], WARM_SIMS, seed=args.seed, epoch=0)))
    del warm
    cls.forget_read_caches()
    release_free_memory()
    pipeline = make()
    cached = sum(pipeline.cache_file(sim).stat().st_size for sim in sims)
    baseline, file_baseline, anon_baseline = (_status_bytes(key) for key in ('VmRSS', 'RssFile', 'RssAnon'))
    method = 'VmHWM after clear_refs' if _reset_peak() else 'ru_maxrss'
    if method == 'ru_maxrss':
        baseline = max(baseline, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    pipeline.open(sims)
    anon_peak = _status_bytes('RssAnon')
    plan = make_plan(pipeline.window_keys(), args.batch_size, seed=args.seed, epoch=0)
    batches = pipeline.batches(plan)
    while (batch := next(batches, None)) is not None:  # each batch let go before the next is built, as in `drain`
        anon_peak = max(anon_peak, _status_bytes('RssAnon'))
        del batch
    peak = _peak(method)
    _reset_peak()
    batch = None
    for batch in pipeline.batches(plan):  # noqa: B007  (a for loop holds the last batch while the next is built)
        pass
    loop_peak = _peak(method)
    del batch
    first = next(pipeline.batches(plan))
    batch_bytes = sum(t.native(t.shape.names).nbytes for value in first.values()
                      for t in (value.values() if isinstance(value, dict) else [value]))
    args.result.write_text(json.dumps({'pipeline': cls.name, 'baseline_bytes': baseline, 'peak_bytes': peak,
                                       'loop_peak_bytes': loop_peak, 'cached_bytes': cached, 'batch_bytes': batch_bytes,
                                       'file_backed_bytes': _status_bytes('RssFile') - file_baseline, 'method': method,
                                       'anon_epoch_bytes': anon_peak - anon_baseline,
                                       'memory_mode': getattr(getattr(pipeline, 'dataset', None), 'memory', None)}))
    return 0


def _peak(method: str) -> int:
    return _status_bytes('VmHWM') if method != 'ru_maxrss' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == '__main__':
    sys.exit(_worker(sys.argv[1:]))
