"""Stages end to end on tiny data: every declared out, and the MLflow run read back."""

from __future__ import annotations

import json
import os

import mlflow
import pytest
import torch
import yaml

from src.artifacts import load_state_strict, read_model_file
from src.config.cifar import CIFAR10_CLASSES
from src.config.layout import PROJECT_ROOT
from src.config.load import load_params
from src.training.models import WeightsError, build_cnn
from tests.conftest import update_params


def _client(root):
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.MlflowClient()


def _declared_outs(stage: str, root) -> list:
    """The stage's outs, metrics and plots from dvc.yaml, with paths resolved."""
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    names = []
    for kind in ("outs", "metrics", "plots"):
        for entry in dvc["stages"][stage].get(kind, []):
            names.append(root / (entry if isinstance(entry, str) else next(iter(entry))))
    return names


def test_download_stage_outputs_and_run(prepared):
    from pipelines import figures

    for path in _declared_outs("download", prepared):
        assert path.exists(), path
    figures.main(["download"])
    for path in _declared_outs("figures-download", prepared):
        assert path.exists(), path
    metrics = json.loads((prepared / "reports/download/metrics.json").read_text())
    run = _client(prepared).get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "download"
    assert run.data.params["val_fraction"] == "0.2"
    assert run.data.metrics["n_val"] == metrics["n_val"]
    assert run.data.tags["git_commit"] and run.data.tags["params_hash"]
    artifacts = {a.path for a in _client(prepared).list_artifacts(run.info.run_id)}
    assert {"manifest.json", "figures"} <= artifacts
    # MLflow's own layout: mlruns/<experiment id>/<run id>/artifacts/
    exp_id = run.info.experiment_id
    assert (prepared / "mlruns" / exp_id / run.info.run_id / "artifacts/manifest.json").is_file()


@pytest.mark.parametrize("stage", ["baseline", "improved"])
def test_cnn_stage_writes_outs_and_tracks_everything(prepared, stage):
    from pipelines import train

    train.main([stage, "--no-progress"])
    for path in _declared_outs(stage, prepared):
        assert path.exists(), path
    assert not list((prepared / f"reports/{stage}").glob("*.png")), "figures come downstream"
    predictions = (prepared / f"reports/{stage}/predictions.csv").read_text().splitlines()
    assert predictions[0] == "actual,predicted" and len(predictions) > 1
    assert all(c in CIFAR10_CLASSES for row in predictions[1:] for c in row.split(","))
    from pipelines import figures

    figures.main([stage])
    for path in _declared_outs(f"figures-{stage}", prepared):
        assert path.exists(), path
    metrics = json.loads((prepared / f"reports/{stage}/metrics.json").read_text())
    for key in (
        "final_train_accuracy",
        "final_val_accuracy",
        "final_train_loss",
        "final_val_loss",
        "test_accuracy",
        "test_loss",
        "epochs_run",
        "early_stop_step",
        "train_time_s",
        "train_images_per_s",
        "mlflow_run_id",
    ):
        assert key in metrics
    assert metrics["machine"].endswith(f", {os.cpu_count()} cores")  # whose times these are
    # conftest: a CPU without native bf16, so `auto` resolves to float32
    assert metrics["numerics"] == "fp32" and metrics["numerics_reason"] == "cpu without native bf16"
    shares = metrics["time_shares"]
    assert set(shares) == {
        "startup",
        "training",
        "evaluation",
        "feature_caching",
        "tracking",
        "other",
    }
    assert all(shares[k] >= 0 for k in shares if k != "other")
    assert shares["training"] > 0 and shares["evaluation"] > 0 and shares["startup"] > 0
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert abs(shares["other"]) < 0.5 and metrics["wall_time_s"] > 0
    history = (prepared / f"reports/{stage}/history.csv").read_text().splitlines()
    assert history[0].startswith("step,epoch,train_loss") and len(history) >= 2

    client = _client(prepared)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == stage
    assert run.data.params["train.lr"] == "0.05"
    assert run.data.params["precision"] == "auto"
    assert run.data.tags["numerics"] == "fp32" and run.data.tags["channels_last"] == "False"
    assert "channels_last" not in run.data.metrics  # a tag, not a figure
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    val_history = client.get_metric_history(run.info.run_id, "curves/val_loss")
    assert len(val_history) == len(history) - 1
    step_losses = client.get_metric_history(run.info.run_id, "curves/train_step_loss")
    assert len(step_losses) > len(val_history)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "predictions.csv", "config.json", "metrics.json", "figures"} <= artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/learning_curves.png", "figures/confusion_matrix.png"} <= figures
    assert run.inputs.dataset_inputs, "prepared data set logged as the run's input"
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert any(m.source_run_id == run.info.run_id for m in models)

    # the saved model file reloads into the architecture its config describes
    params = load_params(prepared / "params.yaml")
    model = build_cnn(getattr(params, stage).model)
    payload = read_model_file(prepared / f"models/{stage}.pt")
    load_state_strict(model, payload["model"], stage)
    assert payload["config"]["model"]["filters"] == list(getattr(params, stage).model.filters)


def test_figures_of_a_run_missing_from_the_store_are_drawn_and_say_so(prepared, capsys):
    from pipelines import figures, train

    train.main(["baseline", "--no-progress"])
    metrics_file = prepared / "reports/baseline/metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "mlflow_run_id": "0" * 32}))
    figures.main(["baseline"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].endswith(f"MLflow run {'0' * 32} is not in this store: not logged")
    assert (prepared / "reports/baseline/confusion_matrix.png").stat().st_size > 0


def test_model_file_for_another_architecture_is_refused(prepared):
    from pipelines import train

    train.main(["baseline", "--no-progress"])
    wrong = build_cnn(load_params(prepared / "params.yaml").improved.model)
    with pytest.raises(WeightsError, match="another architecture"):
        load_state_strict(wrong, read_model_file(prepared / "models/baseline.pt")["model"], "x")
    (prepared / "models/broken.pt").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="corrupt"):
        read_model_file(prepared / "models/broken.pt")


def test_two_runs_with_one_seed_give_identical_metrics(prepared):
    from pipelines import train

    update_params(prepared, **{"baseline.train.augment": {"crop_padding": 4, "hflip": True}})
    results = []
    for _ in range(2):
        train.main(["baseline", "--no-progress"])
        m = json.loads((prepared / "reports/baseline/metrics.json").read_text())
        results.append({k: m[k] for k in m if k.endswith(("_loss", "_accuracy"))})
    assert results[0] == results[1]


def test_failed_stage_ends_its_run_failed(prepared, monkeypatch):
    from pipelines import train
    from src.training import recipe

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(recipe, "fit", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train.main(["baseline", "--no-progress"])
    runs = _client(prepared).search_runs(
        [_client(prepared).get_experiment_by_name("cifar10").experiment_id],
        filter_string="attributes.run_name = 'baseline'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_dry_run_param_runs_the_real_path_quickly(prepared):
    from pipelines import train

    update_params(prepared, **{"improved.train.dry_run": True, "improved.train.epochs": 30})
    train.main(["improved", "--no-progress"])
    metrics = json.loads((prepared / "reports/improved/metrics.json").read_text())
    assert metrics["steps"] == 4
    assert torch.load(prepared / "models/improved.pt", weights_only=True)["stage"] == "improved"


def test_subset_smaller_than_a_batch_stops_before_training(prepared, capsys):
    from pipelines import train

    update_params(prepared, **{"baseline.train.subset": 8})  # the fixture's batch is 16
    with pytest.raises(SystemExit) as info:
        train.main(["baseline", "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'baseline.train.subset'" in err and "fewer than one batch" in err
    assert "Traceback" not in err
    assert not (prepared / "models/baseline.pt").exists()


def test_crafted_checkpoint_is_refused_without_running_it(prepared, capsys):
    """Each crafted checkpoint stops the stage (exit 1, one line naming the file and the
    global) and stays as it was: no run from step 0 overwrites the evidence."""
    from pipelines import train
    from src.training.checkpoint import CHECKPOINT_VERSION
    from tests.crafted import crafted_files

    marker = prepared / "code-ran"
    ckpt = prepared / "checkpoints/baseline.pt"
    files = crafted_files(
        prepared / "crafted", marker, wrap=lambda p: {"version": CHECKPOINT_VERSION, "pwn": p}
    )
    for name, crafted in files.items():
        ckpt.parent.mkdir(exist_ok=True)
        ckpt.write_bytes(crafted.read_bytes())
        with pytest.raises(SystemExit) as info:
            train.main(["baseline", "--no-progress"])
        assert info.value.code == 1, name
        err = capsys.readouterr().err
        (line,) = err.strip().splitlines()
        assert line.startswith(f"error: {ckpt}: refused: reading it needs arbitrary unpickling")
        assert f"it names {name})" in line and "Traceback" not in err
        assert ckpt.read_bytes() == crafted.read_bytes(), f"{name}: the checkpoint was touched"
        assert not marker.exists(), f"{name}: code ran"
        assert not (prepared / "models/baseline.pt").exists()
