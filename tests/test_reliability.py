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
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
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
