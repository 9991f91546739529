"""The project's MLflow store is where MLflow 3 looks by itself (./mlflow.db, artifacts
in ./mlruns/<experiment id>/), and a store at the project's old place is named with
the command that moves it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def _old_store(root):
    """A store as the project kept it before: mlruns/mlflow.db, artifacts in
    mlruns/artifacts/<experiment> (absolute paths), one run with one artifact."""
    (root / "mlruns").mkdir()
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    location = (root / "mlruns" / "artifacts" / "cifar10").as_uri()
    exp_id = client.create_experiment("cifar10", artifact_location=location)
    run = client.create_run(exp_id, run_name="baseline")
    client.log_text(run.info.run_id, "hello", "note.txt")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


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
    _old_store(root)  # not looked at when the user names a store
    assert store.tracking_uri() == f"sqlite:///{tmp_path}/team.db"


def test_a_store_at_the_old_place_is_named_and_moving_it_keeps_its_artifacts(root, capsys):
    run_id = _old_store(root)
    with pytest.raises(store.StoreError, match="mv mlruns/mlflow.db mlflow.db") as info:
        store.tracking_uri()
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    shutil.move(root / "mlruns" / "mlflow.db", root / "mlflow.db")  # what it says to do
    uri = store.tracking_uri()
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).info.run_name == "baseline"
    # its artifact paths were absolute: they still lead to the files
    local = mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=uri)
    assert (Path(local) / "note.txt").read_text() == "hello"


def test_an_empty_store_made_by_a_bare_mlflow_command_is_named(root, capsys):
    _old_store(root)
    mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db").search_experiments()  # creates it
    assert (root / "mlflow.db").is_file() and not store.holds_runs(root / "mlflow.db")
    with pytest.raises(store.StoreError, match="rm mlflow.db && mv mlruns/mlflow.db mlflow.db"):
        store.tracking_uri()
    # once the new store holds runs, the old one is only noted
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    client.create_run(client.create_experiment("other"))
    assert store.tracking_uri() == f"sqlite:///{root}/mlflow.db"
    assert "is not read" in capsys.readouterr().err


def test_a_stage_stops_before_work_on_an_old_store(root, official_archive, capsys):
    from pipelines import download
    from tests.conftest import write_project

    shutil.rmtree(root)
    write_project(root, official_archive)
    _old_store(root)
    with pytest.raises(SystemExit) as info:
        download.main()
    assert info.value.code == 2
    assert "mv mlruns/mlflow.db mlflow.db" in capsys.readouterr().err
    assert not (root / "data").exists()
