"""The search loop: a worker joins the study, asks for trials under the study lock,
trains each through the base stage's `fit` in a nested MLflow run, and tells Optuna.
One MLflow parent run per study holds the optimisation history, figures and the best."""

from __future__ import annotations

import contextlib
import shlex
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from src.config.design import study_slug
from src.config.layout import Layout
from src.config.schema import CNNStageConfig, Params
from src.config.stages import get_stage
from src.config.typed import to_dict
from src.runtime.errors import ConfigError, NonFiniteLossError
from src.runtime.progress import Progress
from src.runtime.workers import worker_id
from src.tracking import store
from src.tracking.runs import Run, ValidationLogger, run_params, run_summary, stage_run
from src.training.device import Placement, prepare_device
from src.training.recipe import fit_recipe, stage_recipe
from src.training.splits import TensorSplits, load_splits
from src.tune import summary
from src.tune.apply import HAND_TUNED_ATTR, PROFILE_ATTR
from src.tune.space import (
    FIELD_KNOBS,
    PER_RUN,
    PRUNERS,
    TuneConfig,
    build_pruner,
    build_sampler,
    hand_tuned_knobs,
    search_signature,
    suggest_knobs,
    trial_section,
)
from src.tune.storage import StudyStorage, TuneError, open_storage
from src.tune.trials import (
    ask_within_budget,
    best_trial,
    fail_dead_trials,
    on_stale_heartbeat,
    retry,
    trials_done,
)

# The objective's name: each trial's best validation accuracy (its MLflow metric too).
# optuna-dashboard and Optuna's figures show it instead of "Objective 0".
OBJECTIVE = "best_val_accuracy"


@dataclass
class Search:
    """Everything a worker needs to run trials of one study."""

    study: optuna.Study
    storage: StudyStorage  # the one `study` was opened on
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


class _Reporter:
    """`fit`'s on_validation for a trial: the row goes to the trial's MLflow run as a
    stage's does (`ValidationLogger`), its val_accuracy to Optuna (step k = k-th
    validation), and the pruner may stop it."""

    def __init__(self, trial: optuna.Trial, run: Run):
        self.trial, self.log = trial, ValidationLogger(run)
        self.accuracies: list[float] = []

    def __call__(self, row: dict, step_losses: list[tuple[int, float]]) -> None:
        self.log(row, step_losses)
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
    Pruned: run FINISHED, named `trial-NNN (pruned)`. A crash (NaN loss, bad
    combination): FAIL, run FAILED, reason recorded."""
    knobs = suggest_knobs(trial, s.tcfg.space)
    tags = {"optuna.study_name": s.study.study_name, "optuna.trial_number": trial.number}
    tags.update({"optuna.worker": s.worker, **_retry_tag(trial)})
    tags.update(Placement.for_device(s.device, precision=s.params.common.precision).describe())
    name = f"trial-{trial.number:03d}"
    state, value = TrialState.FAIL, None
    # The knobs under the param names the stages use (`train.lr`), the search-only ones
    # (`width`, `blocks`) under their own; the resolved config joins them below.
    logged = {FIELD_KNOBS.get(k, k): v for k, v in knobs.items()}
    with (
        stage_run(name, logged, experiment=s.experiment, nested=True, tags=tags) as run,
        s.storage.heartbeat(s.study, trial.number),
    ):
        trial.set_user_attr("mlflow_run_id", run.run_id)
        reporter = _Reporter(trial, run)
        try:
            section = trial_section(s.base, knobs, s.tcfg.budget)
            trial.set_user_attr("config", to_dict(section))
            run.log_params(run_params(s.params, section, precision=s.params.common.precision))
            result = train_trial(s, section, reporter, name)
            value = (
                reporter.best if reporter.best is not None else result.final["final_val_accuracy"]
            )
            final = {k: v for k, v in result.final.items() if not k.startswith("test")}
            final.update(
                epochs_run=result.epochs_run,
                train_time_s=result.train_time_s,
                train_images_per_s=result.images_per_s,
            )
            run.log_metrics(final, step=result.steps)
            state = TrialState.COMPLETE
        except optuna.TrialPruned as exc:
            # FINISHED, not KILLED: the runs list shows KILLED and FAILED with one red icon,
            # so a pruned trial ends green and says so in its name.
            state = TrialState.PRUNED
            run.rename(f"{name} (pruned)")
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
    """Exactly what the base stage does around `fit` (`src.training.recipe`), minus
    tracking and outputs, on the search's data."""
    placement = Placement.for_device(s.device, precision=s.params.common.precision)
    seed = s.params.common.seed
    stage = get_stage(s.tcfg.base)
    recipe = stage_recipe(stage, section, placement, seed=seed, data=s.data, params_key="train")
    return fit_recipe(
        recipe, seed=seed, on_validation=on_validation, progress=s.progress, name=name
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
    ss = open_storage(storage, tcfg.heartbeat_s, on_stale=on_stale_heartbeat)
    device = prepare_device(getattr(params, tcfg.base).train).device
    # the test split left out: every trial's final evaluation stays away from it
    data = load_splits(device, test=False, user="tuning")[1]
    me = worker_id()
    experiment = f"{params.common.experiment}-tune"
    report_dir = Layout().tune_reports / study_slug(study_name)
    with contextlib.ExitStack() as stack:
        with ss.lock(study_name):
            study, index, parent_id = _join(ss, study_name, params, tcfg, me)
            parent_name = f"tune-{study_name}"
            parent = stack.enter_context(
                stage_run(
                    parent_name,
                    _parent_params(params, tcfg),
                    experiment=experiment,
                    run_id=parent_id,
                    tags=_parent_tags(study, ss, tcfg, n_trials),
                    system_metrics=False,  # each trial run records its own
                )
            )
            if parent.active and parent.run_id != parent_id:
                runs = dict(study.user_attrs.get("mlflow_parent_runs", {}))
                runs[store.tracking_uri()] = parent.run_id
                study.set_user_attr("mlflow_parent_runs", runs)
                parent.log_dict(to_dict(tcfg), "tune_config.json")
        study.sampler = build_sampler(tcfg.sampler, index)
        study.pruner = build_pruner(tcfg.pruner)
        s = Search(study, ss, params, tcfg, data, device, experiment, me, report_dir, progress)
        print(
            f"[tune] study {study_name!r} in {ss.display}: {trials_done(study)}/{n_trials} "
            f"trials done; worker {index} ({me}) on {device}; MLflow experiment {experiment!r}"
        )
        bar = _TrialsBar(s, n_trials)
        try:
            while timeout is None or time.monotonic() - started < timeout:
                with ss.lock(study_name):
                    for number in fail_dead_trials(ss, study, me):
                        bar.write(f"[tune] trial {number}: worker gone; marked FAIL, rerun queued")
                    trial = ask_within_budget(study, n_trials)
                    if trial is None:
                        break
                    trial.set_user_attr("worker", me)
                frozen = run_trial(s, trial)
                bar.write(summary.describe(frozen))
                _after_trial(s, parent, frozen)
                bar.show(study)
        except KeyboardInterrupt:
            bar.close()
            with contextlib.suppress(Exception):
                _write_best(s)
            raise
        bar.close()
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        parent.end_status = "RUNNING" if running else None  # another worker is still busy
        summary.summarise(
            study,
            parent,
            n_trials,
            base=s.tcfg.base,
            report_dir=s.report_dir,
            storage=ss.display,
        )
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
    if study.metric_names != [OBJECTIVE]:  # also names it in studies created before
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE])
    attrs = study.user_attrs
    if "signature" not in attrs:
        study.set_user_attr("signature", signature)
        study.set_user_attr("base", tcfg.base)
        study.set_user_attr(PROFILE_ATTR, params.profile)  # `apply` names it
        study.set_user_attr("tune", to_dict(tcfg))
        values, notes = hand_tuned_knobs(getattr(params, tcfg.base), tcfg.space)
        study.enqueue_trial(values, user_attrs={HAND_TUNED_ATTR: True})
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
    fail_dead_trials(ss, study, me)
    parent_id = study.user_attrs.get("mlflow_parent_runs", {}).get(_tracking_uri())
    if parent_id and run_summary(parent_id) is None:
        parent_id = None  # deleted, or this store never had it: start a new parent
    return study, index, parent_id


def _tracking_uri() -> str | None:
    return store.tracking_uri() if store.tracking_enabled() else None


def _parent_params(params: Params, tcfg: TuneConfig) -> dict:
    tune = {k: v for k, v in to_dict(tcfg).items() if k not in PER_RUN}
    # `base.*`, not the trials' own names: the parent is no point of the search, and
    # must not land in the experiment's parallel-coordinates plot as one
    return {"tune": tune, "base": run_params(params, getattr(params, tcfg.base))}


def _parent_tags(study: optuna.Study, ss: StudyStorage, tcfg: TuneConfig, n: int) -> dict:
    return {
        "optuna.study_name": study.study_name,
        "optuna.storage": ss.display,
        "optuna.n_trials": n,
        "optuna.sampler": f"TPESampler(seed={tcfg.sampler.seed}+worker)",
        "optuna.pruner": f"{PRUNERS[tcfg.pruner.kind]}({tcfg.pruner.args})",
        "optuna.dashboard": f"optuna-dashboard {shlex.quote(ss.display)}",
    }


def _after_trial(s: Search, parent: Run, trial: FrozenTrial) -> None:
    """The parent run's optimisation history, and best_params.yaml when the best moved."""
    best = best_trial(s.study)
    series = {"trials_done": [(trial.number, trials_done(s.study))]}
    if trial.state == TrialState.COMPLETE:
        series["trial_val_accuracy"] = [(trial.number, trial.value)]
    if best is not None:
        series["best_val_accuracy"] = [(trial.number, best.value)]
    parent.log_series(series)
    if best is not None and best.number != s.best_written:
        _write_best(s)


def _write_best(s: Search) -> None:
    best = summary.write_best(s.study, s.tcfg.base, s.report_dir)
    if best is not None:
        s.best_written = best[0].number
