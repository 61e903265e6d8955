"""A fixture shared by the cache, manifest and migration tests: both caches of the tiny scenario, built with
`build_cache` (so with manifests). Import it into a test module: `from built_caches import built`."""
import pytest

from harness.cache.build import build_cache
from conftest import PIPELINE_IDS, PIPELINES


@pytest.fixture(scope='module')
def built(tiny_sim, tiny_config, tmp_path_factory):
    """Folder with `legacy/` and `phiml/`: the tiny scenario's caches and manifests. Do not modify; copy first."""
    root = tmp_path_factory.mktemp('built')
    for name in PIPELINE_IDS:
        build_cache(PIPELINES[name](root / name, tiny_config.data.rollout_steps), tiny_config, tiny_sim)
    return root
