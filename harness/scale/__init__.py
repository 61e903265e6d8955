"""Scale-out: the harness's simulation, cache builds, migration and batch comparison split by chunks of sims and run
as tasks on a Dask cluster (`--workers N` starts a `LocalCluster`, `--scheduler ADDRESS` joins an existing one), or in
this process as before when neither is given.

Tasks are idempotent, write their files atomically and return only paths and small results; the client alone
writes every `manifest.json`. See `cluster` (executors), `tasks` (what a worker does), and the stage modules
`simulate`, `build`, `migrate`, `compare` (what the client does), gathered in `stages`.
"""
from harness.scale.cluster import (IN_PROCESS, AbstractExecutor, DaskExecutor, InProcessExecutor, open_executor,
                                   split_sims)

__all__ = ['IN_PROCESS', 'AbstractExecutor', 'DaskExecutor', 'InProcessExecutor', 'open_executor', 'split_sims']
