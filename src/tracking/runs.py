"""One MLflow run per stage execution: `stage_run` opens it (named after the stage, its
params and provenance tags logged) and ends it FINISHED, KILLED or FAILED; `Run` writes
to it, or does nothing when tracking is off (`src.tracking.store.tracking_enabled`).

Every run is tagged, from its creation, with the process that runs it (`worker`:
host, pid, start time) and the project root. A killed process cannot end its run,
so each stage's next start closes, KILLED, the RUNNING runs of that stage from this
project root whose process is gone from this host (`src.tracking.dead_runs`; any store:
SQLite, a tracking server, PostgreSQL).

This module is not the only one that talks to MLflow: in `src.tracking`, `store` opens
the store and creates experiments, `naming` describes them, `dead_runs` ends runs killed
processes left, `datasets` logs a run's inputs, `registry` logs and registers models,
`serving` is the logged model's code and `model_choice` reads the registry; outside it,
`src.predict` loads registered models and `src.quick` lists what its experiment logged.
Model, data and training code never import MLflow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.config.typed import config_hash, flatten
from src.tracking import naming as run_layout
from src.tracking import store
from src.tracking.dead_runs import close_dead_runs, identity_tags
from src.tracking.naming import chart_key, describe_experiment, metric_split
from src.tracking.provenance import git_info, params_changed, profile_label

MAX_PARAM_CHARS = 6000  # MLflow's limit per param value
BATCH_LIMIT = 1000  # metrics per log_batch call


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM while a run is open: ends the run KILLED, like Ctrl-C does."""


def run_params(params: Any, section: Any, **extra: Any) -> dict[str, Any]:
    """`run_layout.run_params`, its `profile` labelled by `provenance.profile_label`
    (a quick run's `-S` values say `quick`, other edits `custom`)."""
    return run_layout.run_params(params, section, profile=profile_label(params.profile), **extra)


def provenance_tags(stage: str, params: Any) -> dict[str, str]:
    changed = ", ".join(params_changed())
    tags = {
        "stage": stage,
        "params_hash": config_hash(params),
        "params_changed": _param_value(changed),  # keys that differ from the commit
        "dvc_stage": os.environ.get("DVC_STAGE", ""),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "python": sys.version.split()[0],
    }
    tags.update(git_info())
    try:
        import torch

        tags["torch"] = torch.__version__
    except ImportError:
        pass
    return tags


def set_experiment(name: str) -> str:
    """Create (artifacts under mlruns/<id>/ beside a SQLite store) or select an
    experiment; its id."""
    import mlflow

    uri = store.point_mlflow()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = store.create_experiment(client, uri, name)
        except Exception:  # another worker created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    describe_experiment(client, exp_id, name)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


class Run:
    """An open MLflow run, or a no-op stand-in when tracking is off."""

    def __init__(self, run_id: str | None, experiment: str = ""):
        self.run_id = run_id
        self.experiment = experiment  # registered models are named <experiment>-<stage>
        # The status `stage_run` ends the run with when its block exits normally
        # (default FINISHED); e.g. FAILED for a crashed Optuna trial.
        self.end_status: str | None = None
        # split -> mlflow Dataset that metrics link to (`src.tracking.datasets.log_datasets`)
        self.datasets: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _client(self):
        import mlflow

        return mlflow.MlflowClient()

    def log_params(self, params: Any, prefix: str = "") -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        flat = flatten(params, prefix)
        existing = self._client().get_run(self.run_id).data.params
        items = [Param(k, _param_value(v)) for k, v in flat.items() if k not in existing]
        for start in range(0, len(items), 100):
            self._client().log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(
        self, metrics: dict[str, float], step: int | None = None, model_id: str | None = None
    ) -> None:
        """One value per metric; with `model_id` they are the model's figures too (the
        Models tab shows them), each linked to the split it was measured on."""
        if not self.active:
            return
        if model_id is None:
            self.log_series({k: [(step or 0, v)] for k, v in metrics.items()})
            return
        import mlflow

        by_split: dict[str | None, dict[str, float]] = {}
        for name, value in metrics.items():  # in order: the Models tab shows that order
            by_split.setdefault(metric_split(name), {})[chart_key(name)] = float(value)
        for split, values in by_split.items():
            mlflow.log_metrics(
                values,
                step=step or 0,
                run_id=self.run_id,
                model_id=model_id,
                dataset=self.datasets.get(split),
                synchronous=True,
            )

    def log_series(self, series: dict[str, list[tuple[int, float]]]) -> None:
        """Many (step, value) points in as few database writes as possible."""
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [
            Metric(chart_key(name), float(value), now, int(step))
            for name, pairs in series.items()
            for step, value in pairs
        ]
        client = self._client()
        for start in range(0, len(points), BATCH_LIMIT):
            client.log_batch(self.run_id, metrics=points[start : start + BATCH_LIMIT])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.active:
            from mlflow.entities import RunTag

            self._client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def rename(self, name: str) -> None:
        if self.active:
            self._client().update_run(self.run_id, name=name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._client().log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self.active:
            self._client().log_dict(self.run_id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self._client().log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        if self.active:
            self._client().log_figure(self.run_id, figure, artifact_file)


@contextlib.contextmanager
def activate(run_id: str) -> Iterator[None]:
    """Make `run_id` the active fluent run for APIs that have no client form."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        yield


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum, frame):  # noqa: ARG001
        raise RunInterrupted(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Any,
    *,
    experiment: str = "cifar10",
    run_id: str | None = None,
    nested: bool = False,
    tags: dict[str, Any] | None = None,
    log_params: bool = True,
    system_metrics: bool = True,
) -> Iterator[Run]:
    """Open (or, with `run_id`, reopen) a run named after the stage.

    The run ends FINISHED on success, KILLED on Ctrl-C or SIGTERM and FAILED on
    any other exception; the exception propagates. `params` (see `run_params`) are
    logged flattened, and provenance tags (git commit, dirty tree, DVC stage and
    experiment, params hash) are set. A top-level run first closes the runs its
    dead predecessors left RUNNING (`close_dead_runs`). With `system_metrics`, MLflow
    samples CPU, memory (and GPU, with nvidia-ml-py) every SYSTEM_METRICS_INTERVAL_S
    seconds ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it) as `system/...`.
    """
    if not store.tracking_enabled():
        with _sigterm_as_interrupt():
            yield Run(None)
        return
    import mlflow

    experiment_id = set_experiment(experiment)
    if not nested:
        close_dead_runs(stage, experiment_id, keep=run_id)
    if system_metrics:
        _setup_system_metrics()
    all_tags = {**provenance_tags(stage, params), **(tags or {})}
    with _sigterm_as_interrupt():
        # identity tags at creation: a kill right after start_run leaves a closable run
        active = mlflow.start_run(
            run_id=run_id,
            run_name=None if run_id else _run_name(stage, params, nested),
            nested=nested,
            tags=identity_tags(stage),
            log_system_metrics=system_metrics,
        )
        run = Run(active.info.run_id, experiment)
        status = "FAILED"
        try:
            run.set_tags(all_tags)
            if log_params:
                run.log_params(params)
            yield run
            status = run.end_status or "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            mlflow.end_run(status=status)


def _run_name(stage: str, params: Any, nested: bool) -> str:
    """A top-level run says what it is beside its stage (`run_layout.run_name`)."""
    if nested:
        return stage
    profile = params.get("profile") if isinstance(params, dict) else None
    return run_layout.run_name(stage, profile, os.environ.get("DVC_EXP_NAME", ""))


SYSTEM_METRICS_INTERVAL_S = 5.0  # MLflow's default 10 s leaves a short stage without any


def _setup_system_metrics() -> None:
    """Sampling interval (unless the user set one), and no INFO lines per run."""
    import logging

    import mlflow

    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


def write_figure(figure: Any, path: Path, run: Run | None = None, artifact_file: str = "") -> Path:
    """Save a matplotlib figure atomically as PNG (and log it when a run is given)."""
    from src import artifacts

    artifacts.write_figure(figure, path)
    if run is not None and run.active:
        run.log_artifact(path, str(Path(artifact_file).parent) if artifact_file else "figures")
    return path


def run_summary(run_id: str | None) -> dict[str, Any] | None:
    """Name, status, tags and latest metrics of a run; None when tracking is off or
    the run is not in this store (the report says so rather than failing)."""
    if not run_id or not store.tracking_enabled():
        return None
    import mlflow

    store.point_mlflow()
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:  # another store, or a deleted run
        return None
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
    }


class ValidationLogger:
    """A stage's `on_validation`: the validation row and the per-step losses since
    the last one, as one batched tracking write; `seconds` sums the time spent."""

    def __init__(self, run: Run):
        self.run = run
        self.seconds = 0.0

    def __call__(self, row: dict, step_losses: list[tuple[int, float]]) -> None:
        import time

        tic = time.perf_counter()
        step = row["step"]
        series = {k: [(step, v)] for k, v in row.items() if k != "step"}
        series["train_step_loss"] = step_losses
        self.run.log_series(series)
        self.seconds += time.perf_counter() - tic
