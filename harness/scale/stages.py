"""Every stage the harness can run on an executor, by the names of their in-process counterparts: each takes the
executor first and runs in this process, exactly as before, when it is not distributed.

    from harness.scale import stages
    simulation = stages.simulate(executor, config)
"""
from harness.scale.build import build_cache, build_caches
from harness.scale.compare import compare_pipelines
from harness.scale.migrate import migrate_cache
from harness.scale.simulate import simulate

__all__ = ['build_cache', 'build_caches', 'compare_pipelines', 'migrate_cache', 'simulate']
