"""The pipelines the commands judge by default: the one place in the harness that names `legacy` and `phiml_native`."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Sequence

from harness.config import PipelinesConfig, ScenarioConfig
from harness.errors import ConfigError
from harness.pipeline import AbstractPipeline, load_pipeline

DEFAULTS = dataclasses.asdict(PipelinesConfig())  # {'legacy': 'legacy:LegacyPipeline', 'native': ...}
PipelineClasses = tuple[type[AbstractPipeline], type[AbstractPipeline]]


def default_pipelines() -> PipelineClasses:
    """The built-in legacy and native pipeline classes."""
    return load_pipeline(DEFAULTS['legacy'], 'legacy'), load_pipeline(DEFAULTS['native'], 'native')


def pipeline_class(kind: str) -> type[AbstractPipeline]:
    """The built-in pipeline class that `data.pipeline` (`'legacy'` or `'phiml'`) names."""
    return load_pipeline(DEFAULTS['native' if kind == 'phiml' else 'legacy'], f"data.pipeline={kind}")


def add_pipeline_flags(parser: argparse.ArgumentParser, legacy: str = "the reference pipeline",
                       native: str = "the pipeline being judged") -> None:
    """`--legacy MODULE:CLASS` and `--native MODULE:CLASS`."""
    parser.add_argument('--legacy', metavar='MODULE:CLASS', help=f"{legacy}: any harness.pipeline.AbstractPipeline "
                        f"subclass (default: config `pipelines.legacy`, {DEFAULTS['legacy']})")
    parser.add_argument('--native', metavar='MODULE:CLASS', help=f"{native}: any harness.pipeline.AbstractPipeline "
                        f"subclass (default: config `pipelines.native`, {DEFAULTS['native']})")


def pipeline_classes(legacy: str | None, native: str | None,
                     config: ScenarioConfig | None = None) -> tuple[PipelineClasses, PipelinesConfig]:
    """The classes named by the `--legacy` / `--native` flags, else by the config's `pipelines` section, else the
    built-ins; and the specs used (for the config the run records).

    Raises:
        ConfigError: one line naming the flag (or config key) and its value: malformed, not importable, not a class
            implementing the interface, or two classes with the same `name` (caches and results are keyed by it).
    """
    configured = config.pipelines if config is not None else PipelinesConfig()
    classes, specs = [], {}
    for role, flag in (('legacy', legacy), ('native', native)):
        spec, where = (flag, f"--{role}") if flag is not None else (getattr(configured, role), f"`pipelines.{role}`")
        classes.append(load_pipeline(spec, where))
        specs[role] = (spec, where)
    if classes[0].name == classes[1].name:
        (a, wa), (b, wb) = specs['legacy'], specs['native']
        raise ConfigError(f"{wa} (={a!r}) and {wb} (={b!r}) are both pipelines named {classes[0].name!r}; expected two "
                          f"different `name`s (the caches and results of a run are keyed by them)")
    return (classes[0], classes[1]), PipelinesConfig(specs['legacy'][0], specs['native'][0])


def configure_pipelines(config: ScenarioConfig, legacy: str | None, native: str | None) \
        -> tuple[ScenarioConfig, PipelineClasses]:
    """`pipeline_classes` for a scenario: the config with its `pipelines` section set to the specs used, so the run's
    provenance records which classes were judged, and the classes."""
    classes, specs = pipeline_classes(legacy, native, config)
    return dataclasses.replace(config, pipelines=specs), classes


def report_folder(config: ScenarioConfig, classes: PipelineClasses) -> Path:
    """The default output folder: `reports/<scenario>/` for the built-in pair, `reports/<scenario>-<legacy
    name>-vs-<native name>/` for any other, so that judging another pipeline neither overwrites the built-ins' report
    nor meets their caches (a cache folder holds one pipeline's files)."""
    if dataclasses.asdict(config.pipelines) == DEFAULTS:
        return Path('reports') / config.name
    return Path('reports') / f"{config.name}-{classes[0].name}-vs-{classes[1].name}"


def pipeline_argv(legacy: str | None, native: str | None) -> list[str]:
    """The flags as given, for the reproduce line of a report."""
    return [*(['--legacy', legacy] if legacy else []), *(['--native', native] if native else [])]


def create_dataset(config: ScenarioConfig, sim_indices: Sequence[int], cache_dir: Path, *, use_phiml_data: bool,
                   seed: int = 0, epoch: int = 0):
    """The training data source behind the migration plan's `use_phiml_data` switch: the native `PhiMLDataset`
    (`create_phiml`), or the legacy shuffled `DataLoader`."""
    if use_phiml_data:
        from phiml_native import create_phiml
        return create_phiml(config, sim_indices, cache_dir)
    from legacy import LegacyPipeline
    pipeline = LegacyPipeline(cache_dir, config.data.rollout_steps)
    pipeline.open(sim_indices)
    return pipeline.data_loader(config.data.batch_size, seed=seed, epoch=epoch)
