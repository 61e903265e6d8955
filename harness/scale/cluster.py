"""Where the harness's chunk tasks run: in this process (the default) or on a Dask cluster.

An executor runs one task function over a list of argument tuples and yields `(index, result)` as each task finishes.
Tasks are module-level functions (pickled by reference), idempotent and atomic in what they write, and return only
paths and small results; on Dask the scheduler reruns a task whose worker died (up to its `allowed-failures`).

    with open_executor(workers=2) as executor:          # a LocalCluster of 2 single-threaded worker processes
        for index, result in executor.run(task, [(a, b), (c, d)], name='migrate'):
            ...
"""
from __future__ import annotations

import abc
import contextlib
import logging
import uuid
import warnings
from typing import Any, Callable, ClassVar, Iterator, Sequence

from harness.errors import ConfigError, HarnessError

logger = logging.getLogger(__name__)
CHUNKS_PER_WORKER = 2  # a few tasks per worker: a lost worker costs little, and each traced shape is reused
CONNECT_TIMEOUT_S = 10


class AbstractExecutor(abc.ABC):
    """Runs chunk tasks somewhere and says where (`describe`, recorded in the report's provenance)."""
    distributed: ClassVar[bool]

    @abc.abstractmethod
    def run(self, task: Callable[..., Any], arguments: Sequence[tuple], *, name: str) -> Iterator[tuple[int, Any]]:
        """Calls `task(*arguments[i])` for every `i`; yields `(i, result)` as each finishes (in any order).

        Raises:
            Whatever a task raised (the first one seen); the tasks not yet finished are cancelled.
        """

    @property
    @abc.abstractmethod
    def n_workers(self) -> int:
        """Worker processes the tasks are spread over (1 in-process)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Where the tasks run: executor kind, scheduler address, workers and threads."""

    def chunks(self, sims: Sequence[int], per_worker: int = CHUNKS_PER_WORKER) -> list[list[int]]:
        """`sims` in contiguous chunks of near-equal size, `per_worker` chunks per worker (one chunk in-process)."""
        return split_sims(sims, self.n_workers * per_worker if self.distributed else 1)


def split_sims(sims: Sequence[int], n_chunks: int) -> list[list[int]]:
    """`sims` in `n_chunks` (at most one per sim) contiguous chunks whose sizes differ by at most one."""
    sims = list(sims)
    if n_chunks < 1:
        raise ValueError(f"`n_chunks` (={n_chunks}) must be at least 1")
    n_chunks = min(n_chunks, len(sims)) or 1
    size, extra = divmod(len(sims), n_chunks)
    chunks, start = [], 0
    for k in range(n_chunks):
        stop = start + size + (k < extra)
        chunks.append(sims[start:stop])
        start = stop
    return [c for c in chunks if c]


class InProcessExecutor(AbstractExecutor):
    """Runs every task here, one after another, in order: what the harness does without `--workers`/`--scheduler`."""
    distributed = False

    def run(self, task, arguments, *, name):
        for index, args in enumerate(arguments):
            yield index, task(*args)

    @property
    def n_workers(self) -> int:
        return 1

    def describe(self) -> dict[str, Any]:
        return {'executor': 'in-process', 'scheduler': None, 'workers': 1}


IN_PROCESS = InProcessExecutor()


class DaskExecutor(AbstractExecutor):
    """Runs tasks on the workers of a `distributed.Client`.

    Args:
        client: Connected to the scheduler.
        local: Whether the cluster is a `LocalCluster` this process started.
    """
    distributed = True

    def __init__(self, client, *, local: bool):
        self.client = client
        self.local = local
        self._started = self._workers_now()

    def _workers_now(self) -> dict[str, int]:
        return {address: info['nthreads'] for address, info in self.client.scheduler_info()['workers'].items()}

    @property
    def n_workers(self) -> int:
        return max(1, len(self._workers_now()))

    def describe(self) -> dict[str, Any]:
        """Also the torch thread counts the workers run with (one, from Dask's `OMP_NUM_THREADS=1`, unless their
        environment says otherwise), asked of the workers now."""
        import dask
        return {'executor': 'dask', 'scheduler': self.client.scheduler.address,
                'cluster': 'LocalCluster (worker processes on this machine)' if self.local else 'existing cluster',
                'workers': len(self._started), 'threads': sum(self._started.values()),
                'worker_addresses': sorted(self._started),
                'worker_torch_threads': sorted(set(self.client.run(torch_threads).values())), 'dask': dask.__version__}

    def run(self, task, arguments, *, name):
        from distributed import as_completed
        from distributed.scheduler import KilledWorker
        token = uuid.uuid4().hex[:8]
        with warnings.catch_warnings():
            # a chunk's fields ride in its task, held by the scheduler, so that the task can run again elsewhere when
            # its worker dies (data scattered to a worker would die with it): a large graph is intended
            warnings.filterwarnings('ignore', message='Sending large graph', category=UserWarning)
            futures = [self.client.submit(task, *args, key=f"{name}-{index}-{token}", pure=False)
                       for index, args in enumerate(arguments)]
        index_of = {future.key: index for index, future in enumerate(futures)}
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except KilledWorker as err:
                    raise HarnessError(f"task {name} #{index_of[future.key]} (of {len(futures)}) was running on "
                                       f"workers that died each time ({err}); expected it to finish within the "
                                       f"scheduler's `distributed.scheduler.allowed-failures` retries") from None
                yield index_of[future.key], result
        finally:
            self.client.cancel([f for f in futures if not f.done()])


def torch_threads() -> int:
    """The intra-op threads torch runs with in this process (run on each worker by `DaskExecutor.describe`)."""
    import torch
    return torch.get_num_threads()


@contextlib.contextmanager
def open_executor(workers: int | None = None, scheduler: str | None = None, *,
                  connect_timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[AbstractExecutor]:
    """The executor the flags `--workers N` / `--scheduler ADDRESS` ask for; in-process without either.

    `--workers N` starts a `LocalCluster` of `N` worker processes with one thread each (closed on exit); `--scheduler`
    connects to a running scheduler (left running).

    Raises:
        ConfigError: both given, `workers` below 1, or no scheduler answers at `scheduler`.
    """
    if workers is not None and scheduler is not None:
        raise ConfigError(f"`--workers` (={workers}) and `--scheduler` (={scheduler!r}) exclude each other: "
                          f"expected one")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"`--workers` (={workers!r}) must be a whole number of at least 1")
    if workers is None and scheduler is None:
        yield InProcessExecutor()
        return
    from distributed import Client, LocalCluster
    with _quiet('distributed'):
        yield from _dask_executor(Client, LocalCluster, workers, scheduler, connect_timeout_s)


def _dask_executor(Client, LocalCluster, workers, scheduler, connect_timeout_s):
    if workers is not None:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            logger.info("started a LocalCluster of %d worker processes at %s", workers, cluster.scheduler_address)
            yield DaskExecutor(client, local=True)
        return
    try:
        client = Client(scheduler, timeout=connect_timeout_s)
    except (OSError, TimeoutError, ValueError) as err:
        raise ConfigError(f"`--scheduler` (={scheduler!r}): no Dask scheduler answered within {connect_timeout_s:g} s "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); expected the "
                          f"address of a running scheduler, e.g. tcp://10.0.0.5:8786") from None
    with client:
        if not client.scheduler_info()['workers']:
            logger.warning("the scheduler at %s has no workers yet; tasks wait for one", scheduler)
        yield DaskExecutor(client, local=False)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Dask's own log lines only from warnings up with `-v`, errors otherwise (its INFO lines would reach the CLI's
    handler); the level is restored on exit."""
    dask_logger = logging.getLogger(name)
    old = dask_logger.level
    dask_logger.setLevel(logging.WARNING if logger.isEnabledFor(logging.INFO) else logging.ERROR)
    try:
        yield
    finally:
        dask_logger.setLevel(old)

