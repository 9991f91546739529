"""Experiment tracking: the one module that talks to MLflow.

Default store: ``sqlite:///<root>/mlruns/mlflow.db`` with artifacts under
``<root>/mlruns/artifacts``, where <root> is the repository (``config.repo_root``: the
one a ``--temp`` or queued experiment's temporary copy was made from).
``MLFLOW_TRACKING_URI`` points it at a team's server instead. With
``CIFAR_MLOPS_TRACKING=off`` (or no mlflow installed) every call is a no-op, so
training and benchmarks run on machines that have only torch.

Every run is tagged, from its creation, with the process that runs it (`worker`:
host, pid, start time) and the project root. A killed process cannot end its run,
so each stage's next start closes, KILLED, the RUNNING runs of that stage from this
project root whose process is gone from this host (any store: SQLite, a tracking
server, PostgreSQL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.config import config_hash, flatten, project_root, repo_root
from src.dead_runs import close_dead_runs, identity_tags
from src.run_layout import (  # noqa: F401 (CHART_GROUPS and chart_key: the stages' names)
    CHART_GROUPS,
    chart_key,
    describe_experiment,
    run_params,
)

TRACKING_SWITCH_ENV = "CIFAR_MLOPS_TRACKING"
MAX_PARAM_CHARS = 6000  # MLflow's limit per param value
BATCH_LIMIT = 1000  # metrics per log_batch call


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM while a run is open: ends the run KILLED, like Ctrl-C does."""


def tracking_enabled() -> bool:
    if os.environ.get(TRACKING_SWITCH_ENV, "").lower() in {"off", "0", "false", "no"}:
        return False
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def tracking_uri() -> str:
    if _store_uri:
        return _store_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = repo_root() / "mlruns" / "mlflow.db"  # a --temp experiment's too
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


_store_uri: str | None = None  # set by `use_store` while its block runs


@contextlib.contextmanager
def use_store(uri: str) -> Iterator[None]:
    """Track into the store at `uri` while the block runs (the benchmark's temporary
    SQLite store, say), whatever the environment says; afterwards MLflow points where
    it pointed before (MLflow mirrors its URI in $MLFLOW_TRACKING_URI)."""
    global _store_uri
    before, previous = os.environ.get("MLFLOW_TRACKING_URI"), _store_uri
    _store_uri = uri
    try:
        yield
    finally:
        _store_uri = previous
        if "mlflow" in sys.modules:  # set_experiment pointed MLflow at `uri`
            sys.modules["mlflow"].set_tracking_uri(before)


def artifact_location(experiment: str) -> str | None:
    """A SQLite store keeps artifacts beside its database (mlruns/artifacts/<experiment>);
    a tracking server or another database decides for itself."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    # Decided from the URI, not from $MLFLOW_TRACKING_URI: mlflow.set_tracking_uri sets
    # that variable itself, so its presence says nothing about a server.
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "artifacts" / experiment).as_uri()


# Git-tracked files that `dvc repro` itself rewrites while a pipeline runs (the lock after
# each stage, the metrics and history it keeps in git): a change there is the run's own
# output, not an edit of the code or params it ran, so it does not make the tree dirty.
DVC_WRITTEN = frozenset({"dvc.lock", "metrics.json", "history.csv"})


def git_info(root: Path | None = None) -> dict[str, str]:
    """The commit and whether code or params differ from it (`git_dirty`)."""
    root = root or project_root()

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    status = git("status", "--porcelain", "--untracked-files=no")  # "XY path" lines
    changed = [line[2:].strip().split(" -> ")[-1] for line in status.splitlines()]
    dirty = [path for path in changed if Path(path).name not in DVC_WRITTEN]
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def provenance_tags(stage: str, params: Any) -> dict[str, str]:
    tags = {
        "stage": stage,
        "params_hash": config_hash(params),
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
    """Create (with its artifact root under mlruns/) or select an experiment; its id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_location(name))
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
        self.dataset: Any = None  # the mlflow Dataset that metrics and models link to

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
        Models tab shows them), measured on the run's data set."""
        if not self.active:
            return
        if model_id is None:
            self.log_series({k: [(step or 0, v)] for k, v in metrics.items()})
            return
        import mlflow

        mlflow.log_metrics(
            {chart_key(k): float(v) for k, v in metrics.items()},
            step=step or 0,
            run_id=self.run_id,
            model_id=model_id,
            dataset=self.dataset,
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

    def log_model(
        self,
        stage: str,
        model_file: Path,
        input_example: Any,
        *,
        final_metrics: dict[str, float],
        step: int = 0,
        smoke: list[str] | None = None,
    ) -> str | None:
        """The stage's model, logged, linked to its final metrics and registered
        (`src.registry.log_model`); a line for the stage's log."""
        if not self.active:
            return None
        from src import registry

        return registry.log_model(
            self,
            stage,
            model_file,
            input_example,
            final_metrics=final_metrics,
            step=step,
            smoke=smoke,
        )

    def log_dataset(self, manifest: dict, data_dir: Path, images: Any, labels: Any) -> None:
        """Record the prepared data set as the run's input (its digest, and its source:
        the download URL, or the prepared folder for a local copy); final metrics and
        models are linked to it."""
        if not self.active:
            return
        import mlflow

        source = manifest.get("source", {})
        self.dataset = mlflow.data.from_numpy(
            features=images,
            targets=labels,
            source=_dataset_source(source.get("url"), data_dir),
            name=f"cifar10-{source.get('kind', 'prepared')}",
            digest=config_hash(manifest.get("sha256", {})),
        )
        with activate(self.run_id):
            mlflow.log_input(self.dataset, context="training")


def _dataset_source(url: str | None, data_dir: Path) -> Any:
    """An explicit DatasetSource: given a plain string, MLflow 3.17 picks between two
    registrations of LocalArtifactDatasetSource and warns in every stage."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if url:
        return HTTPDatasetSource(url)
    for source in get_registered_sources():
        if source.__name__ == "LocalArtifactDatasetSource":
            return source(data_dir.as_uri())
    return data_dir.as_uri()  # MLflow resolves it (and may warn)


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
    if not tracking_enabled():
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
            run_name=None if run_id else stage,
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
    if not run_id or not tracking_enabled():
        return None
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
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


def mark_run_killed(run_id: str) -> None:
    """Used when resuming: a run left RUNNING by a SIGKILLed process ends KILLED."""
    if not tracking_enabled():
        return
    import mlflow

    from src import dead_runs

    mlflow.set_tracking_uri(tracking_uri())
    dead_runs.mark_run_killed(run_id)
