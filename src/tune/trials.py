"""Trial bookkeeping: which worker runs a trial, failing the trials of workers that
died, rerunning their configuration, and counting trials against --n-trials."""

from __future__ import annotations

import contextlib
import copy
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from src.runtime.workers import worker_alive
from src.tracking import dead_runs, store
from src.tracking.runs import Run
from src.tune.storage import StudyStorage

MAX_RETRIES = 2  # reruns of a configuration whose worker stopped; then it stays failed


# --------------------------------------------------------------------------- failed trials


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue the configuration of a trial whose worker stopped, at most MAX_RETRIES
    times per configuration.

    Optuna's RetryHeartbeatStaleTrialCallback (RetryFailedTrialCallback before Optuna
    4.9) queues it and keeps the chain in system attrs (`retried_trial_number`,
    `retry_history`, which also cap it). It would copy the failed trial's user attrs (its
    worker, fail reason, MLflow run); the rerun gets only `retry_of`, the original trial's
    number, which the MLflow tags, `trials_done` and `ask_within_budget` read."""
    if not trial.params:  # failed before sampling: nothing to rerun
        return
    template = copy.deepcopy(trial)  # the callback appends to its retry_history list
    template.user_attrs = {"retry_of": trial.user_attrs.get("retry_of", trial.number)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        requeue = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        requeue(study, template)


def close_trial_run(trial: FrozenTrial, reason: str) -> None:
    """The MLflow run of a trial whose worker stopped: KILLED, with the reason."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id and store.tracking_enabled():
        dead_runs.mark_run_killed(run_id)
        Run(run_id).set_tags({"optuna.trial_state": "FAIL", "optuna.fail_reason": reason})


def on_stale_heartbeat(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna failed a trial whose heartbeat stopped (RDB storages)."""
    close_trial_run(trial, "no heartbeat: its worker died")
    retry(study, trial)


def fail_dead_trials(ss: StudyStorage, study: optuna.Study, me: str) -> list[int]:
    """Fail (and enqueue again) RUNNING trials whose worker is gone; their numbers.

    Called under the study lock: a RUNNING trial without a `worker` attr lost its
    worker between `ask` and tagging, which happen under the same lock."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeat storages only
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker == me or (worker and worker_alive(worker) is not False):
            continue
        reason = f"its worker ({worker or 'unknown'}) stopped mid-trial"
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            ss.set_trial_user_attr(study, trial.number, "fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append(trial.number)
            close_trial_run(trial, reason)
            retry(study, trial)
    return failed


# --------------------------------------------------------------------------- counting


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
    with warnings.catch_warnings():  # StudyStorage.heartbeat does for ask/tell what optimize does
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None
