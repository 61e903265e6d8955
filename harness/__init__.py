"""The migration harness: runs the legacy and the PhiML-native data pipelines on the same simulations and seeds,
diffs their batches, times their stages, trains the same model with both and reports a go / no-go verdict.

Packages, in the direction imports run: `cli` (the commands and the registry of default pipelines) -> `run`
(`run_compare`) -> the wings `equivalence`, `cache`, `selftest`, `bench`, `report` -> `data` -> the contract
modules every pipeline may import: `pipeline` (interface and types), `config`, `errors`, `plan`, `model`, `atomic`.

The public names below are imported on first use, so that `python -m harness.<command>` starts without loading
PhiML or torch before its own guard is in place.
"""
import importlib

_PUBLIC = {
    'ScenarioConfig': 'harness.config', 'load_config': 'harness.config',
    'CacheError': 'harness.errors', 'ConfigError': 'harness.errors', 'HarnessError': 'harness.errors',
    'AbstractPipeline': 'harness.pipeline', 'Pipeline': 'harness.pipeline', 'BatchPlan': 'harness.pipeline',
    'WindowKey': 'harness.pipeline', 'FieldLayout': 'harness.pipeline', 'load_pipeline': 'harness.pipeline',
    'run_compare': 'harness.run', 'run_training': 'harness.training_run',
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
