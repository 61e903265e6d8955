"""The migration harness: runs the legacy and the PhiML-native data pipelines on the same simulations and seeds,
diffs their batches, times their stages, trains the same model with both and reports a go / no-go verdict.

The core imported by both pipelines: `pipeline` (interface and types), `config`, `model`, `errors`, `atomic`.
"""
from .config import ScenarioConfig, load_config
from .errors import CacheError, ConfigError, HarnessError
from .pipeline import AbstractPipeline, BatchPlan, Pipeline, WindowKey

__all__ = ['ScenarioConfig', 'load_config', 'CacheError', 'ConfigError', 'HarnessError', 'AbstractPipeline',
           'Pipeline', 'BatchPlan', 'WindowKey']
