"""Hyperparameter search over the task-3 design space, every trial tracked in MLflow.

    python -m src.tune [--study-name NAME] [--storage PATH|URL] [--n-trials N] [--timeout S]
    python -m src.tune apply [--study-name NAME] [--run]

The space, per-trial budget, sampler and pruner live in params.yaml (`tune`). A trial is
the base stage's config (`tune.base`, normally `improved`) with the sampled knobs put in
and the budget applied; it trains through the same `build_cnn` and `fit` as that stage.
The objective is the trial's best validation accuracy; the test split never reaches
the trials. Every validation is reported to the pruner (step k = k-th validation).

Storage: a journal file (default `optuna/journal.log`, shared by processes on one
machine) or an RDB URL (`postgresql://...`, shared by machines). The same command with
the same study name continues the study; `--n-trials` is the study's total, shared by
all its workers. A trial whose worker died or was interrupted ends FAIL and is run
again once; a trial that crashes (NaN loss, a bad combination) ends FAIL with its
reason, and the search goes on.

MLflow (experiment `<common.experiment>-tune`): one parent run per study and a nested
run per trial. The best trial's config is written to
`reports/tune/<study>/best_params.yaml`; `python -m src.tune apply` prints (with
`--run`, runs) the `dvc exp run` command that retrains the base stage with it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import re
import shlex
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
import yaml
from optuna.trial import FrozenTrial, TrialState

from src import tracking
from src.cli import EXIT_FAILED, guarded
from src.config import (
    CNNStageConfig,
    ConfigError,
    Params,
    build,
    config_hash,
    flatten,
    load_params,
    load_raw,
    resolve_path,
    to_dict,
)
from src.data import atomic_write_bytes, load_dataset
from src.models import build_cnn
from src.stage import input_pipeline, prepare_device
from src.train import NonFiniteLossError, Progress, TensorSplits, fit
from src.workers import worker_alive, worker_id

# Knobs that set one field of the base stage's config (its dotted path there).
FIELD_KNOBS = {
    "kernel_size": "model.kernel_size",
    "activation": "model.activation",
    "batch_norm": "model.batch_norm",
    "dropout": "model.dropout",
    "optimizer": "train.optimizer",
    "lr": "train.lr",
    "momentum": "train.momentum",
    "nesterov": "train.nesterov",
    "weight_decay": "train.weight_decay",
    "batch_size": "train.batch_size",
    "scheduler": "train.scheduler",
    "label_smoothing": "train.label_smoothing",
    "crop_padding": "train.augment.crop_padding",
    "hflip": "train.augment.hflip",
}
# Knobs that reshape `model.filters`: how many conv blocks, and a multiplier on widths.
FILTER_KNOBS = ("blocks", "width")
KNOBS = sorted([*FIELD_KNOBS, *FILTER_KNOBS])
# Machine settings: workers may differ in them, and `apply` never copies them.
MACHINE = ("device", "num_threads", "eval_batch_size")
# Nor the budget: the stage retrains the design at its own.
NOT_DESIGN = ("epochs", "subset", "dry_run", *MACHINE)
PER_RUN = ("study", "storage", "n_trials", "heartbeat_s")  # `tune` keys runs may change
MAX_RETRIES = 2  # reruns of a configuration whose worker stopped; then it stays failed
CONNECT_TIMEOUT_S = 10  # an unreachable database fails fast
FIGURES = (
    "optimization_history",
    "param_importances",
    "parallel_coordinate",
    "intermediate_values",
)

Choice = bool | int | float | str


class TuneError(RuntimeError):
    """The search cannot run: storage unreachable, study unknown or created differently."""


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
    storage: str = "optuna/journal.log"  # journal file (project-relative) or an RDB URL
    n_trials: int = 40  # the study's total, shared by all workers
    base: Literal["baseline", "improved"] = "improved"
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    heartbeat_s: int = 60  # RDB storages: a trial silent for 2x this is failed and rerun
    space: dict = field(default_factory=dict)  # knob name -> KnobSpec

    def __post_init__(self) -> None:
        _check(bool(self.study), "study", "must not be empty")
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


def conv_filters(base: tuple[int, ...], blocks: Any = None, width: Any = None) -> tuple[int, ...]:
    """The first `blocks` widths of `base` (doubling the last beyond it), times `width`."""
    filters = list(base)
    if blocks is not None:
        ok = isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 1
        _check(ok, "model.filters", f"blocks must be a whole number >= 1, got {blocks!r}")
        extra = blocks - len(base)
        filters = filters[:blocks] + [base[-1] * 2**i for i in range(1, extra + 1)]
    if width is not None:
        ok = isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0
        _check(ok, "model.filters", f"width must be a number > 0, got {width!r}")
        filters = [max(1, round(f * width)) for f in filters]
    return tuple(filters)


def trial_section(
    base: CNNStageConfig, knobs: dict[str, Any], budget: BudgetConfig
) -> CNNStageConfig:
    """`base` with the knob values put in and the budget applied, validated like
    params.yaml is (a bad combination raises ConfigError naming the field)."""
    raw = to_dict(base)
    if any(k in knobs for k in FILTER_KNOBS):
        filters = conv_filters(base.model.filters, knobs.get("blocks"), knobs.get("width"))
        raw["model"]["filters"] = list(filters)
    for knob, value in knobs.items():
        if knob in FIELD_KNOBS:
            *parents, last = FIELD_KNOBS[knob].split(".")
            node = raw
            for part in parents:
                node = node[part]
            node[last] = value
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


# --------------------------------------------------------------------------- storage


@dataclass
class StudyStorage:
    storage: optuna.storages.BaseStorage
    display: str  # path, or URL without its password: safe for messages and tags
    lock: Callable[[str], contextlib.AbstractContextManager]  # study name -> worker lock


def open_storage(spec: str, heartbeat_s: int = 60) -> StudyStorage:
    """A journal file (a path) or an RDB (a URL with '://'), and a lock that
    serialises study set-up and trial creation across all workers of a study."""
    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend

        path = resolve_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        lock_path = path.with_name(path.name + ".workers.lock")
        return StudyStorage(storage, str(path), lambda _name: _file_lock(lock_path))

    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(spec)
    except sqlalchemy.exc.ArgumentError as exc:
        raise TuneError(f"--storage {spec!r} is neither a file path nor a database URL") from exc
    backend = url.get_backend_name()
    engine_kwargs = {}
    if backend == "postgresql":
        engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        if url.drivername == "postgresql":  # SQLAlchemy 2.1 defaults to psycopg 3
            url = url.set(drivername=f"postgresql+{_postgres_driver()}")
    display = url.render_as_string(hide_password=True)
    try:
        # Workers starting together on a fresh database would race to create Optuna's
        # schema (PostgreSQL: duplicate pg_type rows); one at a time, the rest find it.
        schema_lock = contextlib.nullcontext()
        if backend == "postgresql":
            engine = sqlalchemy.create_engine(url, **engine_kwargs)
            schema_lock = _pg_lock(engine, "optuna-schema")
        with schema_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url.render_as_string(hide_password=False),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                heartbeat_stale_trial_callback=_on_stale_heartbeat,
            )
        if backend == "postgresql":
            engine.dispose()
    except Exception as exc:  # driver missing, host unreachable, bad credentials ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneError(f"cannot open the Optuna storage {display}: {reason}") from None
    if backend == "postgresql":
        lock = lambda name: _pg_lock(storage.engine, name)
    elif backend == "sqlite" and url.database:
        lock_path = Path(url.database + ".workers.lock")
        lock = lambda _name: _file_lock(lock_path)
    else:
        print(f"[tune] no cross-worker lock for {backend}: parallel workers may overshoot")
        lock = lambda _name: contextlib.nullcontext()
    return StudyStorage(storage, display, lock)


def _postgres_driver() -> str:
    """psycopg (3) when installed, else psycopg2 (what requirements.txt installs)."""
    import importlib.util

    return "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock that the kernel drops when its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pg_lock(engine: Any, study_name: str) -> Iterator[None]:
    """A PostgreSQL advisory lock per study (dropped with its connection)."""
    from sqlalchemy import text

    digest = hashlib.sha256(f"cifar-mlops/{study_name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            conn.commit()


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat while it runs (RDB storages; Optuna's ask/tell
    API leaves this to the caller)."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a hiccup must not end the heartbeat
                storage.record_heartbeat(trial._trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- trial bookkeeping


def retry(study: optuna.Study, trial: FrozenTrial) -> int | None:
    """Enqueue the configuration of a trial whose worker stopped; its original number."""
    original = trial.user_attrs.get("retry_of", trial.number)
    runs = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("retry_of") == original]
    if len(runs) >= MAX_RETRIES or not trial.params:
        return None
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": original})
    return original


def _close_trial_run(trial: FrozenTrial, reason: str) -> None:
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id and tracking.tracking_enabled():
        tracking.mark_run_killed(run_id)
        tracking.Run(run_id).set_tags({"optuna.trial_state": "FAIL", "optuna.fail_reason": reason})


def _on_stale_heartbeat(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna failed a trial whose heartbeat stopped (RDB storages)."""
    _close_trial_run(trial, "no heartbeat: its worker died")
    retry(study, trial)


def fail_dead_trials(study: optuna.Study, me: str) -> list[int]:
    """Fail (and enqueue again) RUNNING trials whose worker is gone; their numbers.

    Called under the study lock: a RUNNING trial without a `worker` attr lost its
    worker between `ask` and tagging, which happen under the same lock."""
    optuna.storages.fail_stale_trials(study)  # heartbeat storages only
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker == me or (worker and worker_alive(worker) is not False):
            continue
        reason = f"its worker ({worker or 'unknown'}) stopped mid-trial"
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            optuna.trial.Trial(study, trial._trial_id).set_user_attr("fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append(trial.number)
            _close_trial_run(trial, reason)
            retry(study, trial)
    return failed


def trials_done(study: optuna.Study) -> int:
    """Finished trials that count toward --n-trials (a rerun replaces the one it reruns)."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state.is_finished() for t in trials)
    return finished - sum("retry_of" in t.user_attrs for t in trials)


def ask_within_budget(study: optuna.Study, n_trials: int) -> optuna.Trial | None:
    """A waiting trial, or a new one while the study has fewer than `n_trials`.
    Called under the study lock, so N workers together make exactly `n_trials`."""
    trials = study.get_trials(deepcopy=False)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    slots_used = sum("retry_of" not in t.user_attrs for t in trials)
    if not waiting and slots_used >= n_trials:
        return None
    with warnings.catch_warnings():  # `_heartbeat` does for ask/tell what optimize does
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


# --------------------------------------------------------------------------- search


@dataclass
class Search:
    """Everything a worker needs to run trials of one study."""

    study: optuna.Study
    params: Params
    tcfg: TuneConfig
    data: TensorSplits
    device: torch.device
    experiment: str
    worker: str
    report_dir: Path
    progress: bool
    best_written: int | None = None

    @property
    def base(self) -> CNNStageConfig:
        return getattr(self.params, self.tcfg.base)


def search_data(params: Params, device: torch.device) -> TensorSplits:
    """Training and validation images on the device. The test split is left out: an
    empty one keeps `fit`'s final evaluation (and so every trial) away from it."""
    dataset = load_dataset(resolve_path(params.common.paths.data))
    t = torch.from_numpy
    no_images = t(dataset.test.images[:0])
    no_labels = t(dataset.test.labels[:0])
    return TensorSplits(
        t(dataset.train.images),
        t(dataset.train.labels),
        t(dataset.val.images),
        t(dataset.val.labels),
        no_images,
        no_labels,
    ).to(device)


class _Reporter:
    """`fit`'s on_validation for a trial: the row goes to the trial's MLflow run, its
    val_accuracy to Optuna (step k = k-th validation), and the pruner may stop it."""

    def __init__(self, trial: optuna.Trial, run: tracking.Run):
        self.trial, self.run = trial, run
        self.accuracies: list[float] = []

    def __call__(self, row: dict, step_losses: list[tuple[int, float]]) -> None:
        series = {k: [(row["step"], v)] for k, v in row.items() if k != "step"}
        series["train_step_loss"] = step_losses
        self.run.log_series(series)
        self.accuracies.append(row["val_accuracy"])
        self.trial.report(row["val_accuracy"], len(self.accuracies))
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"validation {len(self.accuracies)}: val_accuracy {row['val_accuracy']:.4f}"
            )

    @property
    def best(self) -> float | None:
        return max(self.accuracies, default=None)


def run_trial(s: Search, trial: optuna.Trial) -> FrozenTrial:
    """Train one trial through `fit` in its own nested MLflow run, then tell Optuna.
    Pruned: run KILLED. A crash (NaN loss, bad combination): FAIL, reason recorded."""
    knobs = suggest_knobs(trial, s.tcfg.space)
    tags = {"optuna.study_name": s.study.study_name, "optuna.trial_number": trial.number}
    tags.update({"optuna.worker": s.worker, **_retry_tag(trial)})
    name = f"trial-{trial.number:03d}"
    state, value = TrialState.FAIL, None
    with (
        tracking.stage_run(
            name, {"knob": knobs}, experiment=s.experiment, nested=True, tags=tags
        ) as run,
        _heartbeat(s.study, trial),
    ):
        trial.set_user_attr("mlflow_run_id", run.run_id)
        reporter = _Reporter(trial, run)
        try:
            section = trial_section(s.base, knobs, s.tcfg.budget)
            trial.set_user_attr("config", to_dict(section))
            run.log_params({"common": s.params.common, s.tcfg.base: section})
            result = train_trial(s, section, reporter, name)
            value = (
                reporter.best if reporter.best is not None else result.final["final_val_accuracy"]
            )
            final = {k: v for k, v in result.final.items() if not k.startswith("test")}
            final.update(epochs_run=result.epochs_run, train_time_s=result.train_time_s)
            run.log_metrics({**final, "images_per_s": result.images_per_s}, step=result.steps)
            state = TrialState.COMPLETE
        except optuna.TrialPruned as exc:
            state, run.end_status = TrialState.PRUNED, "KILLED"
            run.set_tags({"optuna.prune_reason": str(exc)})
        except KeyboardInterrupt:
            run.set_tags({"optuna.trial_state": "FAIL", "optuna.fail_reason": "interrupted"})
            _interrupted(s.study, trial)
            raise
        except Exception as exc:  # a crash fails the trial, not the search
            reason = f"{type(exc).__name__}: {exc}"[:2000]
            run.end_status = "FAILED"
            trial.set_user_attr("fail_reason", reason)
            run.set_tags({"optuna.fail_reason": reason})
            if not isinstance(exc, (ConfigError, NonFiniteLossError)):  # a bug: show where
                run.log_text(traceback.format_exc(), "error.txt")
                traceback.print_exc()
        if reporter.best is not None or value is not None:
            run.log_metrics({"best_val_accuracy": value if value is not None else reporter.best})
        run.set_tags({"optuna.trial_state": state.name})
        frozen = _tell(s.study, trial, value, state)
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    return frozen


def _retry_tag(trial: optuna.Trial) -> dict:
    retry_of = trial.user_attrs.get("retry_of")
    return {} if retry_of is None else {"optuna.retry_of": retry_of}


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState):
    try:
        return study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:  # failed meanwhile: no heartbeat
        print(f"[tune] trial {trial.number} was failed by another worker meanwhile")
        return study.get_trials(deepcopy=False)[trial.number]


def train_trial(s: Search, section: CNNStageConfig, on_validation: Callable, name: str):
    """Exactly what the stage does around `fit`, minus tracking and outputs."""
    torch.manual_seed(s.params.common.seed)
    model = build_cnn(section.model).to(s.device)
    if s.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    pipeline = input_pipeline(section.train, s.device)
    return fit(
        model,
        s.data,
        section.train,
        pipeline,
        seed=s.params.common.seed,
        on_validation=on_validation,
        progress=s.progress,
        name=name,
    )


def _interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """Ctrl-C or SIGTERM mid-trial: the trial ends FAIL and its configuration is rerun."""
    with contextlib.suppress(Exception):
        trial.set_user_attr("fail_reason", "interrupted (Ctrl-C or SIGTERM)")
        frozen = study.tell(trial, state=TrialState.FAIL)
        retry(study, frozen)


class _TrialsBar(Progress):
    """A progress bar over the study's trials (all workers) with the best value so far."""

    def __init__(self, s: Search, n_trials: int):
        initial = min(trials_done(s.study), n_trials)
        name = f"study {s.study.study_name}"
        super().__init__(n_trials, name, s.progress, initial=initial, unit="trial")
        self.show(s.study)

    def show(self, study: optuna.Study) -> None:
        if self.bar is not None:
            self.bar.n = min(trials_done(study), self.bar.total)
            best = best_trial(study)
            if best is not None:
                self.bar.set_postfix(best=f"{best.value:.4f}", trial=best.number, refresh=False)
            self.bar.refresh()


def describe(trial: FrozenTrial) -> str:
    knobs = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        outcome = f"val_accuracy {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values
        outcome = f"at validation {max(last)}" if last else ""
    else:
        outcome = trial.user_attrs.get("fail_reason", "")
    return f"[tune] trial {trial.number} {trial.state.name} {outcome} ({knobs})"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_search(
    params: Params,
    tcfg: TuneConfig,
    *,
    study_name: str,
    storage: str,
    n_trials: int,
    timeout: float | None = None,
    progress: bool = True,
) -> optuna.Study:
    """One worker: join (or create) the study and run trials until it holds `n_trials`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    started = time.monotonic()
    ss = open_storage(storage, tcfg.heartbeat_s)
    device = prepare_device(getattr(params, tcfg.base).train)
    data = search_data(params, device)
    me = worker_id()
    experiment = f"{params.common.experiment}-tune"
    report_dir = resolve_path(params.common.paths.reports) / "tune" / _slug(study_name)
    with contextlib.ExitStack() as stack:
        with ss.lock(study_name):
            study, index, parent_id = _join(ss, study_name, params, tcfg, me)
            parent_name = f"tune-{study_name}"
            parent = stack.enter_context(
                tracking.stage_run(
                    parent_name,
                    _parent_params(params, tcfg),
                    experiment=experiment,
                    run_id=parent_id,
                    tags=_parent_tags(study, ss, tcfg, n_trials),
                )
            )
            if parent.active and parent.run_id != parent_id:
                runs = dict(study.user_attrs.get("mlflow_parent_runs", {}))
                runs[tracking.tracking_uri()] = parent.run_id
                study.set_user_attr("mlflow_parent_runs", runs)
                parent.log_dict(to_dict(tcfg), "tune_config.json")
        study.sampler = build_sampler(tcfg.sampler, index)
        study.pruner = build_pruner(tcfg.pruner)
        s = Search(study, params, tcfg, data, device, experiment, me, report_dir, progress)
        print(
            f"[tune] study {study_name!r} in {ss.display}: {trials_done(study)}/{n_trials} "
            f"trials done; worker {index} ({me}) on {device}; MLflow experiment {experiment!r}"
        )
        bar = _TrialsBar(s, n_trials)
        try:
            while timeout is None or time.monotonic() - started < timeout:
                with ss.lock(study_name):
                    for number in fail_dead_trials(study, me):
                        bar.write(f"[tune] trial {number}: worker gone; marked FAIL, rerun queued")
                    trial = ask_within_budget(study, n_trials)
                    if trial is None:
                        break
                    trial.set_user_attr("worker", me)
                frozen = run_trial(s, trial)
                bar.write(describe(frozen))
                _after_trial(s, parent, frozen)
                bar.show(study)
        except KeyboardInterrupt:
            bar.close()
            with contextlib.suppress(Exception):
                write_best(s)
            raise
        bar.close()
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        parent.end_status = "RUNNING" if running else None  # another worker is still busy
        summarise(s, parent, ss, n_trials)
    return study


def _join(
    ss: StudyStorage, name: str, params: Params, tcfg: TuneConfig, me: str
) -> tuple[optuna.Study, int, str | None]:
    """Under the study lock: create or load the study, set it up if this worker is the
    first, check it was made with the same settings; (study, worker index, parent run)."""
    signature = search_signature(tcfg, params)
    study = optuna.create_study(
        study_name=name, storage=ss.storage, direction="maximize", load_if_exists=True
    )
    attrs = study.user_attrs
    if "signature" not in attrs:
        study.set_user_attr("signature", signature)
        study.set_user_attr("base", tcfg.base)
        study.set_user_attr("tune", to_dict(tcfg))
        values, notes = hand_tuned_knobs(getattr(params, tcfg.base), tcfg.space)
        study.enqueue_trial(values, user_attrs={"hand_tuned": True})
        for note in notes:
            print(f"[tune] hand-tuned trial: {note}")
    elif attrs["signature"] != signature:
        raise TuneError(
            f"study {name!r} in {ss.display} was created with other search settings "
            "(space, budget, sampler, pruner, base config or data split). Run it with the "
            "settings it was created with, or start a new study with --study-name."
        )
    index = attrs.get("workers_joined", 0)
    study.set_user_attr("workers_joined", index + 1)
    fail_dead_trials(study, me)
    parent_id = study.user_attrs.get("mlflow_parent_runs", {}).get(_tracking_uri())
    if parent_id and tracking.run_summary(parent_id) is None:
        parent_id = None  # deleted, or this store never had it: start a new parent
    return study, index, parent_id


def _tracking_uri() -> str | None:
    return tracking.tracking_uri() if tracking.tracking_enabled() else None


def _parent_params(params: Params, tcfg: TuneConfig) -> dict:
    tune = {k: v for k, v in to_dict(tcfg).items() if k not in PER_RUN}
    return {"tune": tune, tcfg.base: getattr(params, tcfg.base), "common": params.common}


def _parent_tags(study: optuna.Study, ss: StudyStorage, tcfg: TuneConfig, n: int) -> dict:
    return {
        "optuna.study_name": study.study_name,
        "optuna.storage": ss.display,
        "optuna.n_trials": n,
        "optuna.sampler": f"TPESampler(seed={tcfg.sampler.seed}+worker)",
        "optuna.pruner": f"{PRUNERS[tcfg.pruner.kind]}({tcfg.pruner.args})",
        "optuna.dashboard": f"optuna-dashboard {shlex.quote(ss.display)}",
    }


def _after_trial(s: Search, parent: tracking.Run, trial: FrozenTrial) -> None:
    """The parent run's optimisation history, and best_params.yaml when the best moved."""
    best = best_trial(s.study)
    series = {"trials_done": [(trial.number, trials_done(s.study))]}
    if trial.state == TrialState.COMPLETE:
        series["trial_val_accuracy"] = [(trial.number, trial.value)]
    if best is not None:
        series["best_val_accuracy"] = [(trial.number, best.value)]
    parent.log_series(series)
    if best is not None and best.number != s.best_written:
        write_best(s)


def summarise(s: Search, parent: tracking.Run, ss: StudyStorage, n_trials: int) -> None:
    """Figures, counts and the best configuration: files, the parent run, stdout."""
    study = s.study
    counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED)}
    counts["fail"] = 0
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished():
            counts[t.state.name.lower()] += 1
    parent.log_metrics({f"n_{k}": v for k, v in counts.items()})
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        print("[tune] other workers are still running trials: the last one draws the figures")
    else:
        for path in write_figures(study, s.report_dir).values():
            parent.log_artifact(path, "figures")
    with contextlib.suppress(Exception):
        table = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
        parent.log_text(table.to_csv(index=False), "trials.csv")
    best = write_best(s)
    print(
        f"[tune] study {study.study_name!r}: {trials_done(study)}/{n_trials} trials done "
        f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed)"
    )
    if best is None:
        print("[tune] no completed trial yet")
        return
    trial, path, command = best
    parent.set_tags({f"best.{k}": v for k, v in trial.params.items()})
    parent.set_tags({"best.trial": trial.number, "best.value": f"{trial.value:.4f}"})
    parent.log_artifact(path)
    print(f"[tune] best: trial {trial.number}, val_accuracy {trial.value:.4f}")
    print(f"[tune] best config: {path}")
    print(f"[tune] retrain the {s.tcfg.base} stage with it:\n  {shlex.join(command)}")
    print(f"[tune] dashboard: optuna-dashboard {shlex.quote(ss.display)}")


def write_figures(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """Optuna's matplotlib figures as PNG (plotly would need kaleido); skips the ones
    the study cannot draw yet (importances need two completed trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    written = {}
    for name in FIGURES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(vis, f"plot_{name}")(study)
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            written[name] = tracking.write_figure(figure, out_dir / f"{name}.png")
        except Exception as exc:  # too few trials for this figure
            print(f"[tune] figure {name} skipped: {str(exc).splitlines()[0] if str(exc) else exc}")
            plt.close("all")
    return written


# --------------------------------------------------------------------------- applying the best


def best_overrides(config: dict, base: str) -> dict[str, Any]:
    """Dotted `<base>.*` keys where the trial's config differs from params.yaml (profile
    full), leaving out budget and machine settings: the design, at the stage's budget."""
    reference = flatten(getattr(load_params(overrides={"profile": "full"}), base), base)
    trial = flatten(config, base)
    skip = {f"{base}.train.{key}" for key in NOT_DESIGN}
    return {k: v for k, v in trial.items() if k not in skip and reference.get(k) != v}


def _hydra(value: Any) -> str:
    """A value in the override syntax of `dvc exp run -S` (Hydra's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][\w.-]*", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value) if isinstance(value, float) else str(value)


def dvc_command(study_name: str, overrides: dict[str, Any], base: str) -> list[str]:
    command = ["dvc", "exp", "run", "-n", f"tuned-{_slug(study_name)}"]
    if load_raw().get("profile", "full") != "full":
        command += ["-S", "profile=full"]
    for key, value in overrides.items():
        command += ["-S", f"{key}={_hydra(value)}"]
    return [*command, base]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "study"


def write_best(s: Search) -> tuple[FrozenTrial, Path, list[str]] | None:
    trial = best_trial(s.study)
    if trial is None:
        return None
    base = s.study.user_attrs.get("base", s.tcfg.base)
    path, command = write_best_params(s.study, trial, base, s.report_dir)
    s.best_written = trial.number
    return trial, path, command


def write_best_params(
    study: optuna.Study, trial: FrozenTrial, base: str, report_dir: Path
) -> tuple[Path, list[str]]:
    """reports/tune/<study>/best_params.yaml: dotted keys, and the command using them."""
    config = trial.user_attrs["config"]
    overrides = best_overrides(config, base)
    command = dvc_command(study.study_name, overrides, base)
    train = config["train"]
    header = [
        f"# Best trial of Optuna study {study.study_name!r}: trial {trial.number}, "
        f"val_accuracy {trial.value:.4f}",
        f"# (trained {train['epochs']} epochs on {train['subset'] or 'all'} training images).",
        f"# {base}.* keys that differ from params.yaml; retrain the {base} stage with them:",
        f"#   {shlex.join(command)}",
    ]
    body = yaml.safe_dump(overrides, sort_keys=False, default_flow_style=None) if overrides else ""
    path = report_dir / "best_params.yaml"
    atomic_write_bytes(path, ("\n".join(header) + "\n" + body).encode())
    return path, command


def apply_best(params: Params, study_name: str, storage: str, run: bool = False) -> int:
    """`python -m src.tune apply`: write best_params.yaml, print (or run) the command."""
    ss = open_storage(storage)
    names = optuna.study.get_all_study_names(ss.storage)
    if study_name not in names:
        raise TuneError(f"no study {study_name!r} in {ss.display}; it holds {sorted(names)}")
    study = optuna.load_study(study_name=study_name, storage=ss.storage)
    trial = best_trial(study)
    if trial is None:
        raise TuneError(f"study {study_name!r} has no completed trial yet")
    base = study.user_attrs.get("base", "improved")
    report_dir = resolve_path(params.common.paths.reports) / "tune" / _slug(study_name)
    path, command = write_best_params(study, trial, base, report_dir)
    print(f"# trial {trial.number}, val_accuracy {trial.value:.4f}; written to {path}")
    print(shlex.join(command))
    if not run:
        return 0
    return subprocess.run(command, cwd=resolve_path(".")).returncode


# --------------------------------------------------------------------------- CLI


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("", f"-S expects KEY=VALUE (dotted params key), got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.tune",
        description=(
            "Optuna (TPE + pruner) search over params.yaml `tune.space`. Each trial trains\n"
            "the `tune.base` stage's config with the sampled knobs, through that stage's\n"
            "builder and training loop, and scores its best validation accuracy (the test\n"
            "split is never used). The same study name continues a study; any number of\n"
            "workers may run it at once. MLflow: experiment <common.experiment>-tune, one\n"
            "parent run per study, a nested run per trial."
        ),
        epilog=(
            "examples:\n"
            "  python -m src.tune --n-trials 40                 # the default study\n"
            "  python -m src.tune --profile quick --study-name cpu --timeout 900\n"
            "  python -m src.tune --storage postgresql://user:pw@host/optuna  # many machines\n"
            "  python -m src.tune apply --study-name cpu       # print the dvc exp run command"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "command",
        nargs="?",
        choices=("search", "apply"),
        default="search",
        help="search (default): run trials. apply: write the best trial's config to "
        "reports/tune/<study>/best_params.yaml and print the `dvc exp run` command that "
        "retrains the base stage with it",
    )
    p.add_argument(
        "--study-name",
        metavar="NAME",
        help="the study to create or continue (default: params tune.study)",
    )
    p.add_argument(
        "--storage",
        metavar="PATH|URL",
        help="where trials are kept: a journal file path, shared by workers on this "
        "machine (default: params tune.storage, relative to the project), or a database "
        "URL such as postgresql://user:password@host/db, shared by workers on many "
        "machines",
    )
    p.add_argument(
        "--n-trials",
        type=int,
        metavar="N",
        help="the study's total number of trials, counted over all workers and runs; "
        "a run stops when the study holds that many (default: params tune.n_trials)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="start no new trial after this many seconds (the running one finishes)",
    )
    p.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key for this run, as dvc exp run -S does, e.g. "
        "-S tune.budget.epochs=1 -S improved.train.num_threads=1 (YAML values)",
    )
    p.add_argument(
        "--profile", metavar="NAME", help="params profile to apply (e.g. quick: a CPU-sized base)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--run", action="store_true", help="apply: also run the dvc exp run command")
    return p


@guarded
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    overrides = _overrides(args.set_param)
    if args.profile:
        overrides["profile"] = args.profile
    params = load_params(overrides=overrides)
    tcfg = load_tune_config(params)
    study_name = args.study_name or tcfg.study
    storage = args.storage or tcfg.storage
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError("", f"--n-trials must be >= 1, got {args.n_trials}")
    try:
        if args.command == "apply":
            code = apply_best(params, study_name, storage, run=args.run)
            if code:
                sys.exit(code)
            return
        run_search(
            params,
            tcfg,
            study_name=study_name,
            storage=storage,
            n_trials=args.n_trials or tcfg.n_trials,
            timeout=args.timeout,
            progress=not args.no_progress,
        )
    except TuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
