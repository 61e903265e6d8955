"""Scenario configs: typed, frozen, validated once at the edge.

A scenario is `harness/configs/<name>.yaml`. OmegaConf merges it onto the structured config below, so unknown keys and
wrong types are refused by OmegaConf; the ranges OmegaConf cannot know are checked by `validate`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / 'configs'
SPATIAL_NAMES = ('x', 'y', 'z')
PHYSICS = ('burgers', 'smoke')
ADVECTIONS = ('auto', 'semi_lagrangian', 'rusanov')  # `sim.advection` of burgers
MODEL_KINDS = ('u_net', 'conv_net')
MEMORY_MODES = ('auto', 'load', 'map')  # how the native dataset holds the cache (data.memory)
CAST_HINT = "the option data.cast_float32=true casts float16/float64 caches to float32 when opened"  # for dtype errors
TIERS = ('identical', 'equal', 'close')  # how equal batch values must be (see harness.equivalence.diff)
PIPELINES = ('legacy', 'phiml')  # `data.pipeline`
DEVICES = ('auto', 'cpu', 'cuda')  # `trainer.device`
QUICK = ('sim.resolution=[16,16]', 'sim.n_steps=10', 'data.n_sims=3', 'data.n_val_sims=1', 'data.rollout_steps=2',
         'data.batch_size=4', 'model.levels=1', 'model.filters=4', 'trainer.epochs=2', 'compare.timing_repeats=5',
         'compare.min_speedup.write=0', 'compare.min_speedup.read=0')
"""The overrides of `--quick` for a 2-D scenario; `quick_overrides` adapts them to any scenario. The cache write and
read of its few tiny files are timed, not judged: they time per-file overheads (phiml.math.save's ~4 ms a file against
torch.save's ~1 ms; a read of 3 files of 22 kB ties within 10 %) that the scenarios' own sizes do not show."""


@dataclass(frozen=True)
class SimConfig:
    resolution: List[int] = field(default_factory=lambda: [32, 32])
    domain_size: float = 1.0
    viscosity: float = 0.003
    dt: float = 0.01
    n_steps: int = 40
    noise_scale: float = 0.3
    noise_smoothness: float = 2.0
    noise_amplitude: float = 1.0     # the initial velocity is this times the unit-variance noise
    advection: str = 'auto'          # burgers: semi_lagrangian (2-D, 3-D) | rusanov (1-D); auto picks by dims
    buoyancy: float = 1.0            # smoke: upward acceleration per unit density
    inflow_rate: float = 1.0         # smoke: density added per unit time inside the inflow sphere
    inflow_radius: float = 0.08      # smoke: in units of the domain size
    inflow_center: List[float] = field(default_factory=lambda: [0.5, 0.15])  # smoke: x, y in units of the domain size

    @property
    def n_frames(self) -> int:
        """Frames per simulation, the initial frame included."""
        return self.n_steps + 1

    @property
    def spatial_dims(self) -> tuple[str, ...]:
        """Names of the spatial dims, `('x', 'y')` for 2-D."""
        return SPATIAL_NAMES[:len(self.resolution)]

    @property
    def burgers_advection(self) -> str:
        """The advection scheme of a burgers run: `advection`, or for `auto` semi-Lagrangian in 2-D and 3-D and the
        conservative Rusanov flux in 1-D (torch's `grid_sample`, behind semi-Lagrangian sampling, has no 1-D mode)."""
        if self.advection != 'auto':
            return self.advection
        return 'rusanov' if len(self.resolution) == 1 else 'semi_lagrangian'


@dataclass(frozen=True)
class DataConfig:
    n_sims: int = 8
    n_val_sims: int = 2
    rollout_steps: int = 4
    batch_size: int = 16
    memory: str = 'auto'         # native dataset: load | map (memory-map the cache files) | auto (load if it fits)
    memory_budget: float = 0.5   # auto loads when the cache files take at most this fraction of the RAM
    prefetch: bool = True        # native everyday iterator: build the next batch on a thread during the step
    channels: Dict[str, List[str]] = field(default_factory=dict)  # names of channels a legacy file's shape cannot name
    cast_float32: bool = False   # train on float16/float64 caches cast to float32 when opened (else they are refused)
    pipeline: str = 'legacy'         # what `python -m harness.train` trains on: legacy | phiml (flip after a GO)


@dataclass(frozen=True)
class ModelConfig:
    kind: str = 'u_net'
    levels: int = 2
    filters: int = 16


@dataclass(frozen=True)
class TrainerConfig:
    learning_rate: float = 1e-3
    epochs: int = 3
    torch_threads: int = 2
    device: str = 'auto'             # `python -m harness.train`: auto (cuda if available) | cpu | cuda


@dataclass  # not frozen: OmegaConf would create dict entries of a frozen type read-only and refuse to merge them
class FieldTolerance:
    """Per-field override of the value comparison (`compare.fields.<name>`); None keeps the run-wide value."""
    tier: Optional[str] = None
    rtol: Optional[float] = None
    atol: Optional[float] = None


@dataclass(frozen=True)
class StageSpeedups:
    """Per timed stage, the smallest speedup (legacy_s / native_s) that passes; 0: the stage is timed, not judged.
    `compare.min_speedup=X` sets every stage at once."""
    write: float = 0.9               # cache write
    read: float = 0.9                # cache read (a fresh open of the training sims)
    iterate: float = 0.9             # batch loading, one epoch
    convert: float = 0.9             # conversion to PhiML, one epoch
    step: float = 0.9                # one train step through each pipeline's own trainer

    @property
    def judged(self) -> bool:
        """Whether any stage decides the verdict (False for `compare.min_speedup=0`)."""
        return any(v > 0 for v in dataclasses.astuple(self))


@dataclass(frozen=True)
class CompareConfig:
    """Thresholds of the verdict and how the harness measures."""
    tier: str = 'identical'          # batch equality: identical (bitwise) | equal (NaN == NaN) | close
    rtol: float = 0.0                # used by tier=close
    atol: float = 0.0                # used by tier=close
    loss_rtol: float = 1e-5          # max relative difference of the two loss curves
    min_speedup: StageSpeedups = field(default_factory=StageSpeedups)  # per stage; a number sets every stage
    confidence: float = 0.9          # of the interval of each stage's median paired speedup
    timing_repeats: int = 5          # paired repetitions; a straddling stage gets up to 3x as many
    timing_warmup: int = 1
    timing_extra_s: float = field(default=15.0, metadata={'inf_allowed': True})  # re-measurement time, all stages
    max_memory_ratio: float = field(default=1.1, metadata={'inf_allowed': True})  # native / legacy epoch peak; .inf: off
    one_time_share: float = 0.05     # cache write / read: slower by at most this share of the compared training passes
    fields: Dict[str, FieldTolerance] = field(default_factory=dict)
    selftest: bool = True            # run the injected-bug catalogue and show it in the report
    selftest_sims: int = 8           # the self-test judges the first N training sims (more where its bugs need them); 0: all
    parity_seeds: int = 1            # >1: also train from N seeds and report the spread of the final-loss difference
    everyday_epochs: int = 2         # epochs of each pipeline's own loader and trainer that the everyday audit judges


@dataclass(frozen=True)
class HealthConfig:
    """What the data health scan (`harness.health`) lets through before training."""
    max_abs_value: float = field(default=100.0, metadata={'inf_allowed': True})  # |value| above it is a finding; .inf: no bound
    allow_nonfinite: bool = False    # NaN / Inf frames
    allow_constant: bool = False     # frames with the same value in every cell
    allow_repeated: bool = False     # frames equal to the one before


@dataclass(frozen=True)
class SanityConfig:
    """The physics sanity check (`harness.data.physics`): laws the simulation, and what each pipeline serves, must obey."""
    enabled: bool = True
    energy_rtol: float = 1.0e-4      # burgers: largest relative increase of the kinetic energy from one frame to the next
    momentum_rtol: float = 0.4       # burgers: mean-velocity budget residual, relative to the run's largest |<u div u>|
    momentum_atol: float = 1.0e-3    # burgers: the same, absolute (velocity per unit time; 1-D: the mean is conserved)
    max_divergence: float = 1.0e-3   # smoke: largest |div v| (per unit time)
    mass_rtol: float = 1.0e-3        # smoke: per-step mass change minus the inflow, relative to the inflow per step


@dataclass(frozen=True)
class PipelinesConfig:
    """The pipeline classes judged, as `MODULE:CLASS` (`harness.pipeline.load_pipeline`); `--legacy` / `--native`
    override them."""
    legacy: str = 'legacy:LegacyPipeline'        # the reference
    native: str = 'phiml_native:NativePipeline'  # the candidate: the self-test injects its bugs into this one


@dataclass(frozen=True)
class ScenarioConfig:
    name: str = 'burgers'
    physics: str = 'burgers'
    seed: int = 42
    sim: SimConfig = field(default_factory=SimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    sanity: SanityConfig = field(default_factory=SanityConfig)
    quick: List[str] = field(default_factory=list)  # extra overrides of `--quick`, after the generic ones
    pipelines: PipelinesConfig = field(default_factory=PipelinesConfig)

    @property
    def train_sims(self) -> list[int]:
        return list(range(self.data.n_sims))

    @property
    def val_sims(self) -> list[int]:
        return list(range(self.data.n_sims, self.data.n_sims + self.data.n_val_sims))

    @property
    def all_sims(self) -> list[int]:
        return self.train_sims + self.val_sims

    @property
    def windows_per_sim(self) -> int:
        """Sliding windows per simulation: `n_frames - rollout_steps`."""
        return self.sim.n_frames - self.data.rollout_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def available_scenarios() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))


def load_config(scenario: str, overrides: Sequence[str] = ()) -> ScenarioConfig:
    """Loads the scenario's YAML file (`scenario_path`), applies `key=value` overrides and validates the result.

    Raises:
        ConfigError: unknown scenario, malformed YAML, unknown key, wrong type or a value out of range.
    """
    return load_config_file(scenario_path(scenario), overrides)


def scenario_path(scenario: str) -> Path:
    """The YAML file of `scenario`: `harness/configs/<scenario>.yaml` for a scenario's name, the file itself for a path
    ending in `.yaml` or `.yml` (a team's own copy of a scenario: a GO flips its `data.pipeline`, and on a wheel install
    it lies outside site-packages).

    Raises:
        ConfigError: unknown scenario, or no such file.
    """
    if scenario.endswith(('.yaml', '.yml')):
        if not Path(scenario).is_file():
            raise ConfigError(f"config file {scenario!r} not found (expected a YAML file, or a scenario name: one of "
                              f"{available_scenarios()})")
        return Path(scenario)
    path = CONFIG_DIR / f'{scenario}.yaml'
    if not path.is_file():
        raise ConfigError(f"unknown scenario {scenario!r}: expected one of {available_scenarios()} or a .yaml file")
    return path


def quick_overrides(scenario: str) -> list[str]:
    """The overrides of `--quick` for `scenario`: `QUICK` with 16 cells along each of its spatial dims, then the
    scenario's own `quick:` list (e.g. a coarser 3-D grid or fewer steps)."""
    base = load_config(scenario)
    dims = len(base.sim.resolution)
    generic = [item for item in QUICK if not item.startswith('sim.resolution=')]
    return [f"sim.resolution=[{','.join(['16'] * dims)}]", *generic, *base.quick]


def load_config_file(path: Path, overrides: Sequence[str] = ()) -> ScenarioConfig:
    """Like `load_config` for a YAML file anywhere on disk."""
    for item in overrides:
        if '=' not in item or item.startswith('='):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. trainer.epochs=3)")
    overrides = speedup_spelling(plan_spelling(overrides))
    try:
        schema = _schema()
        from_file = OmegaConf.load(path)
        _expand_min_speedup(from_file)
        merged = OmegaConf.merge(schema, from_file, OmegaConf.from_dotlist(list(overrides)))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path.name} with overrides {list(overrides)}: {_one_line(err)}") from None
    except Exception as err:  # yaml.YAMLError and friends: malformed file
        raise ConfigError(f"{path}: not a valid YAML config ({_one_line(err)})") from None
    validate(config)
    return config


def plan_spelling(overrides: Sequence[str]) -> list[str]:
    """The overrides with the migration plan's `use_phiml_data=true|false` spelt `data.pipeline=phiml|legacy`.

    Raises:
        ConfigError: `use_phiml_data` is not `true` or `false`.
    """
    result = []
    for item in overrides:
        key, _, value = item.partition('=')
        if key.strip() == 'use_phiml_data':
            flag = value.strip().lower()
            if flag not in ('true', 'false'):
                raise ConfigError(f"`use_phiml_data` (={value!r}) must be true or false (the same as "
                                  f"data.pipeline=phiml or data.pipeline=legacy)")
            item = f"data.pipeline={'phiml' if flag == 'true' else 'legacy'}"
        result.append(item)
    return result


def speedup_spelling(overrides: Sequence[str]) -> list[str]:
    """The overrides with `compare.min_speedup=X` (a number) spelt as one override per stage of `StageSpeedups`."""
    result = []
    for item in overrides:
        key, _, value = item.partition('=')
        if key.strip() == 'compare.min_speedup' and not value.strip().startswith('{'):
            result += [f"compare.min_speedup.{stage}={value.strip()}" for stage in _SPEEDUP_STAGES]
        else:
            result.append(item)
    return result


def _expand_min_speedup(node) -> None:
    """`compare: {min_speedup: X}` in a YAML file (a number) as the same X for every stage."""
    compare = node.get('compare') if OmegaConf.is_dict(node) else None
    if OmegaConf.is_dict(compare) and 'min_speedup' in compare and not OmegaConf.is_config(compare.min_speedup):
        value = compare.min_speedup
        compare.min_speedup = {stage: value for stage in _SPEEDUP_STAGES}


_SPEEDUP_STAGES = tuple(f.name for f in dataclasses.fields(StageSpeedups))


def config_from_dict(values: dict) -> ScenarioConfig:
    """Builds and validates a config from a plain dict (e.g. `summary.json`'s provenance)."""
    try:
        config = OmegaConf.to_object(OmegaConf.merge(_schema(), OmegaConf.create(values)))
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None
    validate(config)
    return config


def _schema():
    """The structured schema, unlocked for merging: frozen dataclasses make every node read-only, the result stays frozen."""
    schema = OmegaConf.structured(ScenarioConfig)
    _unlock(schema)
    return schema


def _unlock(node) -> None:
    OmegaConf.set_readonly(node, False)
    if OmegaConf.is_dict(node):
        for key in node:
            child = node._get_node(key)
            if OmegaConf.is_config(child):
                _unlock(child)


def validate(config: ScenarioConfig) -> None:
    """Checks the ranges that the types alone cannot express.

    Raises:
        ConfigError: naming the parameter, its value and what was expected.
    """
    _finite(config)
    sim, data = config.sim, config.data
    if config.physics not in PHYSICS:
        raise ConfigError(f"`physics` (={config.physics!r}) must be one of {list(PHYSICS)}")
    if not 1 <= len(sim.resolution) <= 3:
        raise ConfigError(f"`sim.resolution` (={list(sim.resolution)}) must have 1, 2 or 3 entries (one per spatial dim)")
    if min(sim.resolution) < 4:
        raise ConfigError(f"`sim.resolution` (={list(sim.resolution)}) must be at least 4 cells along every axis")
    _positive(sim.domain_size, 'sim.domain_size')
    _positive(sim.dt, 'sim.dt')
    _positive(sim.noise_scale, 'sim.noise_scale')
    _positive(sim.noise_smoothness, 'sim.noise_smoothness')
    if sim.advection not in ADVECTIONS:
        raise ConfigError(f"`sim.advection` (={sim.advection!r}) must be one of {list(ADVECTIONS)}")
    if sim.advection == 'semi_lagrangian' and len(sim.resolution) == 1:
        raise ConfigError("`sim.advection` (='semi_lagrangian') needs 2 or 3 spatial dims: torch's grid_sample has no "
                          "1-D mode; use rusanov (or auto) for `sim.resolution` with one entry")
    if sim.advection == 'rusanov' and len(sim.resolution) != 1:
        raise ConfigError(f"`sim.advection` (='rusanov') is the 1-D conservative flux; `sim.resolution` "
                          f"(={list(sim.resolution)}) has {len(sim.resolution)} entries: use semi_lagrangian (or auto)")
    if config.physics == 'smoke':
        if len(sim.resolution) != 2:
            raise ConfigError(f"`sim.resolution` (={list(sim.resolution)}) must have 2 entries (x, y) for "
                              f"physics='smoke'")
        if len(sim.inflow_center) != 2 or not all(0 < c < 1 for c in sim.inflow_center):
            raise ConfigError(f"`sim.inflow_center` (={list(sim.inflow_center)}) must be 2 fractions of the domain "
                              f"size in (0, 1)")
        _positive(sim.inflow_radius, 'sim.inflow_radius')
        _positive(sim.inflow_rate, 'sim.inflow_rate')
    _positive(sim.noise_amplitude, 'sim.noise_amplitude')
    if sim.viscosity < 0:
        raise ConfigError(f"`sim.viscosity` (={sim.viscosity}) must be >= 0")
    if sim.n_steps < 1:
        raise ConfigError(f"`sim.n_steps` (={sim.n_steps}) must be >= 1")
    if data.n_sims < 1:
        raise ConfigError(f"`data.n_sims` (={data.n_sims}) must be >= 1: there are no training sims")
    if data.n_val_sims < 0:
        raise ConfigError(f"`data.n_val_sims` (={data.n_val_sims}) must be >= 0")
    if not 1 <= data.rollout_steps < sim.n_frames:
        raise ConfigError(f"`data.rollout_steps` (={data.rollout_steps}) must be >= 1 and smaller than the frames per sim "
                          f"(`sim.n_steps` + 1 = {sim.n_frames})")
    if data.batch_size < 1:
        raise ConfigError(f"`data.batch_size` (={data.batch_size}) must be >= 1")
    if data.memory not in MEMORY_MODES:
        raise ConfigError(f"`data.memory` (={data.memory!r}) must be one of {', '.join(MEMORY_MODES)}")
    if not 0 < data.memory_budget <= 1:
        raise ConfigError(f"`data.memory_budget` (={data.memory_budget}) must be a fraction of the RAM in (0, 1]")
    if config.model.kind not in MODEL_KINDS:
        raise ConfigError(f"`model.kind` (={config.model.kind!r}) must be one of {list(MODEL_KINDS)}")
    if config.model.levels < 1 or config.model.filters < 1:
        raise ConfigError(f"`model.levels` (={config.model.levels}) and `model.filters` (={config.model.filters}) must be >= 1")
    if config.model.kind == 'u_net' and min(sim.resolution) % 2 ** config.model.levels:
        raise ConfigError(f"`sim.resolution` (={list(sim.resolution)}) must be divisible by 2**`model.levels` "
                          f"(={2 ** config.model.levels}) for a u_net")
    _positive(config.trainer.learning_rate, 'trainer.learning_rate')
    if config.trainer.epochs < 1:
        raise ConfigError(f"`trainer.epochs` (={config.trainer.epochs}) must be >= 1")
    cmp = config.compare
    if cmp.tier not in TIERS:
        raise ConfigError(f"`compare.tier` (={cmp.tier!r}) must be one of {list(TIERS)}")
    if cmp.rtol < 0 or cmp.atol < 0 or cmp.loss_rtol < 0:
        raise ConfigError(f"`compare.rtol` (={cmp.rtol}), `compare.atol` (={cmp.atol}) and `compare.loss_rtol` "
                          f"(={cmp.loss_rtol}) must be >= 0")
    for name, ft in cmp.fields.items():
        if ft.tier is not None and ft.tier not in TIERS:
            raise ConfigError(f"`compare.fields.{name}.tier` (={ft.tier!r}) must be one of {list(TIERS)}")
        if (ft.rtol is not None and ft.rtol < 0) or (ft.atol is not None and ft.atol < 0):
            raise ConfigError(f"`compare.fields.{name}.rtol` (={ft.rtol}) and `.atol` (={ft.atol}) must be >= 0")
    if cmp.parity_seeds < 1:
        raise ConfigError(f"`compare.parity_seeds` (={cmp.parity_seeds}) must be >= 1")
    for stage, value in dataclasses.asdict(cmp.min_speedup).items():
        if value < 0:
            raise ConfigError(f"`compare.min_speedup.{stage}` (={value}) must be >= 0 (0: timed, not judged)")
    if not 0.5 <= cmp.confidence < 1:
        raise ConfigError(f"`compare.confidence` (={cmp.confidence}) must be in [0.5, 1), e.g. 0.9")
    _positive(cmp.max_memory_ratio, 'compare.max_memory_ratio')
    if cmp.timing_extra_s < 0:
        raise ConfigError(f"`compare.timing_extra_s` (={cmp.timing_extra_s}) must be >= 0 (0: no re-measurement)")
    if cmp.one_time_share < 0:
        raise ConfigError(f"`compare.one_time_share` (={cmp.one_time_share}) must be >= 0 (0: cache write and read "
                          f"are judged as every other stage)")
    if cmp.selftest_sims < 0:
        raise ConfigError(f"`compare.selftest_sims` (={cmp.selftest_sims}) must be >= 0 (0: every training sim)")
    if cmp.everyday_epochs < 2:
        raise ConfigError(f"`compare.everyday_epochs` (={cmp.everyday_epochs}) must be >= 2 (epochs must differ)")
    if cmp.timing_repeats < 1 or cmp.timing_warmup < 0:
        raise ConfigError(f"`compare.timing_repeats` (={cmp.timing_repeats}) must be >= 1 and `compare.timing_warmup` "
                          f"(={cmp.timing_warmup}) >= 0")
    if data.pipeline not in PIPELINES:
        raise ConfigError(f"`data.pipeline` (={data.pipeline!r}) must be one of {list(PIPELINES)}")
    if config.trainer.device not in DEVICES:
        raise ConfigError(f"`trainer.device` (={config.trainer.device!r}) must be one of {list(DEVICES)}")
    if config.trainer.torch_threads < 1:
        raise ConfigError(f"`trainer.torch_threads` (={config.trainer.torch_threads}) must be >= 1")
    _positive(config.health.max_abs_value, 'health.max_abs_value')
    for name in ('energy_rtol', 'momentum_rtol', 'momentum_atol', 'max_divergence', 'mass_rtol'):
        if getattr(config.sanity, name) < 0:
            raise ConfigError(f"`sanity.{name}` (={getattr(config.sanity, name)}) must be >= 0")


def _finite(node, prefix: str = '') -> None:
    """Refuses NaN and ±inf in every float of the config, nested sections and `compare.fields` entries included.

    A field whose metadata says `inf_allowed` may be +inf (e.g. `health.max_abs_value`: no bound).
    """
    for f in dataclasses.fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _finite(value, f"{key}.")
        elif isinstance(value, dict):
            for name, entry in value.items():
                if dataclasses.is_dataclass(entry):
                    _finite(entry, f"{key}.{name}.")
        elif isinstance(value, float) and not math.isfinite(value) \
                and not (value == math.inf and f.metadata.get('inf_allowed')):
            raise ConfigError(f"`{key}` (={value}) must be a finite number")


def _positive(value: float, name: str) -> None:
    if not value > 0:
        raise ConfigError(f"`{name}` (={value}) must be > 0")


def _one_line(err: Exception) -> str:
    key = getattr(err, 'full_key', None)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    keep = [line for line in lines if not line.startswith(('full_key:', 'object_type=', 'reference_type='))]
    message = '; '.join(keep or lines)
    return f"`{key}`: {message}" if key else message
