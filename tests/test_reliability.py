"""Interruptions: a stage killed at any moment resumes from its last checkpoint and
ends with the same metrics as an uninterrupted run; no MLflow run stays RUNNING."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from src.config import PROJECT_ROOT
from tests.conftest import update_params
from tests.test_tracking_server import mlflow_server  # noqa: F401 (a fixture)

METRIC_KEYS = ("final_train_loss", "final_val_loss", "test_loss", "test_accuracy", "steps")


def _stage(root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "DVC_ROOT": str(root)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.train_cnn", "baseline", "--no-progress", *extra],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _metrics(root: Path) -> dict:
    metrics = json.loads((root / "reports/baseline/metrics.json").read_text())
    return {k: metrics[k] for k in METRIC_KEYS} | {"run_id": metrics["mlflow_run_id"]}


def _runs(root: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("cifar10")
    return client.search_runs([exp.experiment_id], "attributes.run_name = 'baseline'")


@pytest.fixture
def long_enough(prepared: Path) -> Path:
    """Enough validations (and so checkpoints) to kill a run between two of them."""
    update_params(prepared, **{"baseline.train.epochs": 8, "baseline.train.early_stop_count": 0})
    return prepared


@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGKILL,
        pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
    ],
    ids=["SIGKILL", "SIGTERM", "SIGINT"],
)
def test_killed_stage_resumes_to_the_same_result(long_enough: Path, sig):
    root = long_enough
    done = _stage(root)
    assert done.wait(timeout=300) == 0, done.stdout.read()
    reference = _metrics(root)

    ckpt = root / "checkpoints/baseline.pt"
    proc = _stage(root)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the stage finished before it could be killed"
    time.sleep(0.3)  # somewhere between two checkpoints
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    output = proc.stdout.read()
    assert code != 0
    if sig != signal.SIGKILL:
        assert code == 130 and "resume" in output
    assert ckpt.exists(), "the checkpoint survives the kill"

    again = _stage(root)
    assert again.wait(timeout=300) == 0
    output = again.stdout.read()
    assert "resuming from checkpoint" in output
    resumed = _metrics(root)
    assert {k: resumed[k] for k in METRIC_KEYS} == {k: reference[k] for k in METRIC_KEYS}
    assert not ckpt.exists(), "a finished stage removes its checkpoint"

    runs = {r.info.run_id: r.info.status for r in _runs(root)}
    assert "RUNNING" not in runs.values()
    assert runs[resumed["run_id"]] == "FINISHED"
    assert len(runs) == 2, "the killed run was resumed, not duplicated"


# --------------------------------------------------------------------------- dead runs

# Runs a stage in a subprocess whose `attr` of `module` is replaced by a function that
# touches a marker file and waits: the test knows the stage is at that point, and kills it.
HOLD = """
import pathlib, sys, time
import {module} as target
def hold(*args, **kwargs):
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(600)
target.{attr} = hold
from pipelines import {stage_module}
{stage_module}.main({args})
"""


def _kill_at(root: Path, module: str, attr: str, stage_module: str, argv: list | None) -> None:
    marker = root / "held"
    args = "" if argv is None else repr(argv)
    code = HOLD.format(module=module, attr=attr, stage_module=stage_module, args=args)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(marker)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DVC_ROOT": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=30)[0] if proc.poll() is not None else ""
    proc.kill()
    proc.wait(timeout=60)


def _statuses(root: Path, name: str) -> dict[str, str]:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("cifar10")
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
    return {r.info.run_id: r.info.status for r in runs}


def test_stage_killed_before_its_first_checkpoint_leaves_no_running_run(prepared: Path):
    from pipelines import train_cnn

    _kill_at(prepared, "src.stage", "fit", "train_cnn", ["baseline", "--no-progress"])
    assert not (prepared / "checkpoints/baseline.pt").exists()
    (dead,) = _statuses(prepared, "baseline").items()
    assert dead[1] == "RUNNING", "the SIGKILLed process could not end its run"

    train_cnn.main(["baseline", "--no-progress"])
    runs = _statuses(prepared, "baseline")
    assert runs[dead[0]] == "KILLED"
    assert sorted(runs.values()) == ["FINISHED", "KILLED"]


def test_download_killed_midway_leaves_no_running_run(prepared: Path):
    from pipelines import download

    before = _statuses(prepared, "download")
    _kill_at(prepared, "pipelines.download", "load_dataset", "download", None)
    (dead,) = [run for run in _statuses(prepared, "download") if run not in before]
    assert _statuses(prepared, "download")[dead] == "RUNNING"

    download.main()
    runs = _statuses(prepared, "download")
    assert runs[dead] == "KILLED"
    assert "RUNNING" not in runs.values() and len(runs) == len(before) + 2


def _dead_worker() -> str:
    """The worker id of a process that has ended (and been reaped)."""
    import socket

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    return f"{socket.gethostname()}:{int(proc.stdout)}:1"


def _closes_only_dead_runs_of_this_stage_and_root(root: Path) -> None:
    from src import tracking
    from src.workers import worker_id

    exp = tracking.set_experiment("cifar10")
    client = mlflow.MlflowClient()
    dead, here = _dead_worker(), str(root)
    cases = {
        "dead": {"stage": "baseline", "worker": dead, "project_root": here},
        "resumed next": {"stage": "baseline", "worker": dead, "project_root": here},
        "alive": {"stage": "baseline", "worker": worker_id(), "project_root": here},
        "other host": {"stage": "baseline", "worker": "elsewhere:1:1", "project_root": here},
        "other root": {"stage": "baseline", "worker": dead, "project_root": f"{here}-copy"},
        "other stage": {"stage": "improved", "worker": dead, "project_root": here},
        "untagged": {"stage": "baseline", "project_root": here},
    }
    ids = {name: client.create_run(exp, tags=tags).info.run_id for name, tags in cases.items()}
    closed = tracking.close_dead_runs("baseline", exp, keep=ids["resumed next"])
    assert closed == [ids["dead"]]
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {name: "KILLED" if name == "dead" else "RUNNING" for name in cases}


def test_close_dead_runs_sqlite(project: Path):
    _closes_only_dead_runs_of_this_stage_and_root(project)


@pytest.mark.slow  # a real `mlflow server`: about 40 s
def test_close_dead_runs_tracking_server(project: Path, mlflow_server, monkeypatch):  # noqa: F811
    url, _ = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    _closes_only_dead_runs_of_this_stage_and_root(project)
