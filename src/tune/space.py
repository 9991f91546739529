"""The search space: knobs, the `tune` config and its validation, and a trial's config.

A trial is the base stage's config (`tune.base`) with the sampled knob values put in and
the per-trial budget applied, validated like params.yaml is.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from src.config.design import FIELD_KNOBS, FILTER_KNOBS, KNOBS, knobs_into
from src.config.schema import CNNStageConfig, Params
from src.config.stages import TUNABLE_STAGES
from src.config.typed import build, config_hash, flatten, to_dict
from src.runtime.errors import ConfigError

# Machine settings: workers may differ in them, and `apply` never copies them.
MACHINE = ("device", "num_threads", "eval_batch_size")
# Nor the budget: the stage retrains the design at its own.
NOT_DESIGN = ("epochs", "subset", "dry_run", *MACHINE)
PER_RUN = ("study", "storage", "n_trials", "heartbeat_s")  # `tune` keys runs may change

Choice = bool | int | float | str


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class KnobSpec:
    """One dimension of the space: an Optuna float, int or categorical distribution."""

    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Choice, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "categorical":
            _check(bool(self.choices), "choices", "a categorical knob needs choices")
            _check(len({repr(c) for c in self.choices}) == len(self.choices), "choices", "repeats")
            for name in ("low", "high", "step"):
                _check(getattr(self, name) is None, name, "categorical knobs take only 'choices'")
            _check(not self.log, "log", "categorical knobs take only 'choices'")
            return
        _check(not self.choices, "choices", f"only categorical knobs take choices, not {self.kind}")
        _check(self.low is not None, "low", f"required for a {self.kind} knob")
        _check(self.high is not None, "high", f"required for a {self.kind} knob")
        _check(self.low <= self.high, "low", f"{self.low} is above high ({self.high})")
        if self.log:
            _check(self.low > 0, "low", "must be > 0 with log: true")
            _check(self.step is None, "step", "cannot be combined with log: true")
        _check(self.step is None or self.step > 0, "step", "must be > 0")
        if self.kind == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                _check(value is None or float(value).is_integer(), name, "must be a whole number")


@dataclass(frozen=True)
class BudgetConfig:
    """Per-trial budget; None keeps the base stage's own value."""

    epochs: int | None = None
    subset: int | None = None  # training images per trial (0 = all)

    def __post_init__(self) -> None:
        _check(self.epochs is None or self.epochs >= 1, "epochs", "must be >= 1")
        _check(self.subset is None or self.subset >= 0, "subset", "must be >= 0 (0 = all)")


@dataclass(frozen=True)
class SamplerConfig:
    """TPE. Worker k of a study uses seed + k, so resumed and parallel workers differ."""

    seed: int = 0
    n_startup_trials: int = 10  # random trials before TPE models the space

    def __post_init__(self) -> None:
        _check(self.n_startup_trials >= 0, "n_startup_trials", "must be >= 0")


PRUNERS = {
    "median": "MedianPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "none": "NopPruner",
}


@dataclass(frozen=True)
class PrunerConfig:
    kind: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    args: dict = field(default_factory=dict)  # keyword arguments of the Optuna pruner


@dataclass(frozen=True)
class TuneConfig:
    study: str = "cifar10-improved"
    storage: str = "reports/tune/journal.log"  # journal file (project-relative) or an RDB URL
    n_trials: int = 40  # the study's total, shared by all workers
    base: str = "improved"  # a CNN stage of the catalog (src.config.stages.TUNABLE_STAGES)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    heartbeat_s: int = 60  # RDB storages: a trial silent for 2x this is failed and rerun
    space: dict = field(default_factory=dict)  # knob name -> KnobSpec

    def __post_init__(self) -> None:
        _check(bool(self.study), "study", "must not be empty")
        _check(
            self.base in TUNABLE_STAGES,
            "base",
            f"expected one of {list(TUNABLE_STAGES)}, got {self.base!r}",
        )
        _check(self.n_trials >= 1, "n_trials", "must be >= 1")
        _check(self.heartbeat_s >= 1, "heartbeat_s", "must be >= 1")
        _check(bool(self.space), "space", "needs at least one knob")
        space = {}
        for name, spec in self.space.items():
            key = f"space.{name}"
            _check(name in KNOBS, key, f"unknown knob; expected one of {KNOBS}")
            if not isinstance(spec, KnobSpec):
                _check(isinstance(spec, dict), key, "expected a mapping: kind, low/high or choices")
                spec = build(KnobSpec, spec, prefix=key)
            space[name] = spec
        object.__setattr__(self, "space", space)


def load_tune_config(params: Params) -> TuneConfig:
    """The validated `tune` section; every knob's bounds are tried on the base config."""
    tcfg = build(TuneConfig, params.tune or {}, prefix="tune")
    base = getattr(params, tcfg.base)
    try:
        trial_section(base, {}, tcfg.budget)
    except ConfigError as exc:
        raise ConfigError("tune.budget", f"gives an invalid {tcfg.base} config: {exc}") from None
    for name, spec in tcfg.space.items():
        probes = spec.choices or (spec.low, spec.high)
        for value in probes:
            value = int(value) if spec.kind == "int" else value
            try:
                trial_section(base, {name: value}, tcfg.budget)
            except ConfigError as exc:
                raise ConfigError(
                    f"tune.space.{name}",
                    f"{value!r} gives an invalid {tcfg.base} config ({exc.key}: {exc.message})",
                ) from None
    build_pruner(tcfg.pruner)
    return tcfg


def build_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    cls = getattr(optuna.pruners, PRUNERS[cfg.kind])
    accepted = sorted(inspect.signature(cls).parameters)
    for key in cfg.args:
        _check(
            key in accepted,
            f"tune.pruner.args.{key}",
            f"not an argument of optuna.pruners.{cls.__name__}; expected one of {accepted}",
        )
    try:
        return cls(**cfg.args)
    except (TypeError, ValueError) as exc:
        raise ConfigError("tune.pruner.args", f"optuna.pruners.{cls.__name__}: {exc}") from None


def build_sampler(cfg: SamplerConfig, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(
        seed=cfg.seed + worker_index, n_startup_trials=cfg.n_startup_trials
    )


# --------------------------------------------------------------------------- trial config


def trial_section(
    base: CNNStageConfig, knobs: dict[str, Any], budget: BudgetConfig
) -> CNNStageConfig:
    """`base` with the knob values put in and the budget applied, validated like
    params.yaml is (a bad combination raises ConfigError naming the field)."""
    raw = knobs_into(to_dict(base), knobs)
    if budget.epochs is not None:
        raw["train"]["epochs"] = budget.epochs
    if budget.subset is not None:
        raw["train"]["subset"] = budget.subset
    return build(type(base), raw)


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def hand_tuned_knobs(base: CNNStageConfig, space: dict[str, KnobSpec]) -> tuple[dict, list[str]]:
    """The base design as knob values (clipped into the space), and notes on what moved."""
    flat = flatten(base)
    current = {"blocks": len(base.model.filters), "width": 1.0}
    values, notes = {}, []
    for name, spec in space.items():
        value = current[name] if name in FILTER_KNOBS else flat[FIELD_KNOBS[name]]
        if spec.kind == "categorical":
            if any(_same(value, c) for c in spec.choices):
                values[name] = value
            else:
                notes.append(f"{name}={value!r} is not among {list(spec.choices)}: sampled")
            continue
        clipped = min(max(value, spec.low), spec.high)
        clipped = int(clipped) if spec.kind == "int" else float(clipped)
        if clipped != value:
            notes.append(f"{name}={value!r} lies outside [{spec.low}, {spec.high}]: {clipped}")
        values[name] = clipped
    return values, notes


def suggest_knobs(trial: optuna.Trial, space: dict[str, KnobSpec]) -> dict[str, Any]:
    values = {}
    for name, s in space.items():
        if s.kind == "float":
            values[name] = trial.suggest_float(name, s.low, s.high, log=s.log, step=s.step)
        elif s.kind == "int":
            step = int(s.step or 1)
            values[name] = trial.suggest_int(name, int(s.low), int(s.high), step=step, log=s.log)
        else:
            values[name] = trial.suggest_categorical(name, list(s.choices))
    return values


def search_signature(tcfg: TuneConfig, params: Params) -> str:
    """What makes trials comparable: space, budget, sampler, pruner, base config, data."""
    base = to_dict(getattr(params, tcfg.base))
    for key in MACHINE:
        base["train"].pop(key, None)
    return config_hash(
        {
            "tune": {k: v for k, v in to_dict(tcfg).items() if k not in PER_RUN},
            "base": base,
            "seed": params.common.seed,
            "data": {"val_fraction": params.data.val_fraction, "seed": params.data.split_seed},
        }
    )
