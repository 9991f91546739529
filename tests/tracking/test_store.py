"""The project's MLflow store is where MLflow 3 looks by itself (./mlflow.db, artifacts
in ./mlruns/<experiment id>/); MLFLOW_TRACKING_URI overrides it."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

from src.tracking import store
from src.tracking.runs import set_experiment
from tests.conftest import _isolate


@pytest.fixture
def root(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    _isolate(monkeypatch, project)
    return project


def test_the_default_store_is_mlflows_own_default(root, monkeypatch):
    assert store.tracking_uri() == f"sqlite:///{root}/mlflow.db"
    assert not (root / "mlflow.db").exists() and not (root / "mlruns").exists()  # nothing yet
    monkeypatch.chdir(root.parent)  # a stage may run elsewhere (a --temp copy): same layout
    exp_id = set_experiment("cifar10")
    exp = mlflow.MlflowClient().get_experiment(exp_id)
    assert exp.artifact_location == (root / "mlruns" / exp_id).as_uri()
    default = mlflow.MlflowClient().get_experiment("0")
    assert default.artifact_location == (root / "mlruns" / "0").as_uri()
    assert not (root.parent / "mlruns").exists()
    # MLflow itself, from the root, with no variable, finds it
    code = (
        "import mlflow; print(mlflow.get_tracking_uri()); "
        "print(mlflow.get_experiment_by_name('cifar10').experiment_id)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [f"sqlite:///{root}/mlflow.db", exp_id]


def test_mlflow_tracking_uri_still_overrides(root, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/team.db")
    assert store.tracking_uri() == f"sqlite:///{tmp_path}/team.db"
