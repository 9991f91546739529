"""MLflow as its users work with it: params that line up across stages, chart groups,
the model-training experiment view, system metrics, registered models with a champion
alias, and a logged model that takes uint8 images and returns class names."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest

from src.config.cifar import CIFAR10_CLASSES
from src.config.layout import PROJECT_ROOT
from src.config.load import load_params
from src.data.prepare import load_dataset
from src.inference.classifier import Classifier
from src.inference.pyfunc import pyfunc_model
from src.tracking import registry, store
from src.tracking.naming import chart_key, metric_split
from src.tracking.runs import Run, run_params
from tests.conftest import _isolate, update_params, write_official_archive, write_project


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cifar):
    """A tiny project after download, baseline, improved and a dry-run baseline (a smoke
    run): the warnings they raised and what they printed."""
    tmp = tmp_path_factory.mktemp("mlflow")
    archive = write_official_archive(tmp / "cifar-10-python.tar.gz", tiny_cifar)
    root = write_project(tmp / "project", archive)
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, root)
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
        from pipelines import download, train

        out = io.StringIO()
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            download.main()
            train.main(["baseline", "--no-progress"])
            train.main(["improved", "--no-progress"])
            update_params(root, **{"baseline.train.dry_run": True})
            train.main(["baseline", "--no-progress"])
            update_params(root, **{"baseline.train.dry_run": False})
        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        yield {"root": root, "warnings": list(caught), "stdout": out.getvalue()}


def _runs(stage: str) -> list:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("cifar10")
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{stage}'")
    return sorted(runs, key=lambda r: r.info.start_time)


def test_one_param_name_per_knob_in_every_stage(trained):
    (baseline, _), (improved,) = _runs("baseline"), _runs("improved")
    assert set(baseline.data.params) == set(improved.data.params)
    for key in ("model.filters", "model.activation", "train.lr", "train.augment.hflip", "seed"):
        assert key in baseline.data.params
    assert not [k for k in baseline.data.params if k.startswith(("baseline.", "improved."))]
    assert baseline.data.params["profile"] == "full"
    params = baseline.data.params
    assert params["image_size"] == "32" and "model.image_size" not in params  # one name
    assert baseline.data.tags["stage"] == "baseline" and improved.data.tags["stage"] == "improved"
    # the DataFrame a user gets lines the stages up column by column
    frame = mlflow.search_runs(experiment_names=["cifar10"])
    assert {"params.model.filters", "metrics.test_accuracy"} <= set(frame.columns)


def test_learning_curves_open_the_chart_view_and_one_value_figures_follow(trained):
    client = mlflow.MlflowClient()
    run = _runs("improved")[0]
    metrics = set(run.data.metrics)
    curves = {"curves/train_loss", "curves/val_loss", "curves/val_accuracy"}
    assert curves <= metrics
    assert len(client.get_metric_history(run.info.run_id, "curves/val_loss")) >= 2
    assert {"timing/train_time_s", "run/best_step", "test_accuracy"} <= metrics
    assert not {"train_time_s", "val_loss", "steps"} & metrics
    # the UI shows named groups alphabetically before the unprefixed final figures
    groups = sorted({m.split("/")[0] for m in metrics if "/" in m and not m.startswith("system")})
    assert groups[0] == "curves"


def test_experiment_opens_in_the_model_training_view_with_a_description(trained):
    exp = mlflow.MlflowClient().get_experiment_by_name("cifar10")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "champion" in exp.tags["mlflow.note.content"]


def test_models_are_registered_linked_to_metrics_and_smoke_runs_never_champion(trained):
    client = mlflow.MlflowClient()
    full, smoke = _runs("baseline")
    found = client.search_model_versions("name = 'cifar10-baseline'")
    versions = {str(v.version): v for v in found}
    assert sorted(versions) == ["1", "2"]
    assert versions["1"].run_id == full.info.run_id and versions["2"].run_id == smoke.info.run_id
    assert versions["1"].tags["servable"] == "true"
    assert versions["2"].tags["servable"] == "false" and "dry run" in versions["2"].tags["smoke"]
    assert str(client.get_model_version_by_alias("cifar10-baseline", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("cifar10-improved", "champion").version) == "1"
    assert "not @champion" in trained["stdout"] and "now @champion" in trained["stdout"]

    # the logged model: named after its stage, its metrics measured on the data set
    (model,) = mlflow.search_logged_models(
        experiment_ids=[full.info.experiment_id],
        filter_string=f"source_run_id = '{full.info.run_id}'",
        output_format="list",
    )
    assert model.name == "baseline" and versions["1"].source == f"models:/{model.model_id}"
    linked = {m.key: m for m in model.metrics}
    assert linked["test_accuracy"].value == pytest.approx(full.data.metrics["test_accuracy"])
    # one input per split, and each figure linked to the split it was measured on
    inputs = {i.dataset.name: i for i in full.inputs.dataset_inputs}
    assert set(inputs) == {"cifar10-train", "cifar10-val", "cifar10-test"}
    contexts = {
        n: {t.key: t.value for t in i.tags}["mlflow.data.context"] for n, i in inputs.items()
    }
    assert contexts == {
        "cifar10-train": "training",
        "cifar10-val": "validation",
        "cifar10-test": "test",
    }
    manifest = load_dataset(trained["root"] / "data/cifar10").manifest
    for metric, split in [
        ("test_accuracy", "test"),
        ("test_loss", "test"),
        ("final_val_accuracy", "val"),
        ("final_train_loss", "train"),
    ]:
        assert linked[metric].dataset_name == f"cifar10-{split}", metric
        digest = inputs[f"cifar10-{split}"].dataset.digest
        assert linked[metric].dataset_digest == digest == manifest["sha256"][f"{split}.npz"][:16]
    shape = json.loads(inputs["cifar10-test"].dataset.profile)["features_shape"]
    assert shape[0] == manifest["counts"]["test"]  # the test split, not the training set
    # the source is where the images came from (outlives a DVC experiment's temp copy)
    uri = json.loads(inputs["cifar10-test"].dataset.source)["uri"]
    assert uri.startswith("file://") and Path(uri.removeprefix("file://")).exists()
    assert "data/cifar10" not in uri


def test_champion_moves_only_to_a_better_full_budget_version(trained):
    client = mlflow.MlflowClient()
    name = "cifar10-improved"
    first = client.get_model_version(name, "1")
    accuracy = float(first.tags["test_accuracy"])

    def new_version(test_accuracy, smoke=()):
        tags = registry.version_tags("improved", test_accuracy, list(smoke))
        created = client.create_model_version(name, first.source, run_id=first.run_id, tags=tags)
        v = str(created.version)
        return v, registry.register_version(name, v, "improved", test_accuracy, list(smoke))

    worse, line = new_version(accuracy - 0.1)
    assert "stays version 1" in line
    better, line = new_version(accuracy + 0.1)
    assert str(client.get_model_version_by_alias(name, "champion").version) == better
    assert "was version 1" in line
    _, line = new_version(accuracy + 0.2, smoke=["profile quick"])
    assert str(client.get_model_version_by_alias(name, "champion").version) == better


def test_logged_model_takes_uint8_images_and_returns_class_names(trained):
    root = trained["root"]
    images = load_dataset(root / "data/cifar10").test.images[:7]
    model = mlflow.pyfunc.load_model("models:/cifar10-baseline@champion")
    table = model.predict(images)
    assert list(table.columns[:2]) == ["label", "probability"]
    assert set(table["label"]) <= set(CIFAR10_CLASSES) and len(table) == 7
    probs = table[list(CIFAR10_CLASSES)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # the newest version is the file the stage wrote last: same probabilities
    latest = mlflow.pyfunc.load_model("models:/cifar10-baseline/2").predict(images)
    own = Classifier.from_file(root / "models/baseline.pt")(images)
    np.testing.assert_allclose(latest[list(CIFAR10_CLASSES)], own[list(CIFAR10_CLASSES)])
    # the model checks its input (what the served model refuses, see below)
    for bad, reason in [
        (np.zeros((1, 28, 28, 3), dtype=np.uint8), "shape"),
        (images / 255.0, "integer pixel values"),
        (np.full((1, 32, 32, 3), 300), "0..255"),
    ]:
        with pytest.raises(mlflow.exceptions.MlflowException, match=reason):
            model.predict(bad)


def test_stages_raise_no_needless_warnings(trained):
    noisy = [
        f"{w.category.__name__}: {w.message}"
        for w in trained["warnings"]
        if not issubclass(w.category, DeprecationWarning)
    ]
    assert not noisy


def readme_command(prefix: str) -> list[str]:
    """The command line in docs/mlflow.md that starts with `prefix`, as argv (comment and
    a trailing `&` dropped)."""
    for line in (PROJECT_ROOT / "docs/mlflow.md").read_text().splitlines():
        if line.startswith(prefix):
            argv = shlex.split(line, comments=True)
            return argv[:-1] if argv[-1] == "&" else argv
    raise AssertionError(f"docs/mlflow.md has no line starting with {prefix!r}")


def _without_tracking_uri() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def test_the_readmes_serve_command_answers_in_the_project_root(trained, tmp_path):
    """`mlflow models serve` exactly as docs/mlflow.md prints it, typed in a project root
    with no MLFLOW_TRACKING_URI, answers a real request (about 20 s)."""
    root = trained["root"]
    argv = readme_command("mlflow models serve")
    assert argv[:4] == ["mlflow", "models", "serve", "-m"] and "@champion" in argv[4]
    port = int(argv[argv.index("-p") + 1])
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            pytest.skip(f"port {port}, the README's, is in use")
    executable = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [executable, *argv[1:]],
        cwd=root,
        env=_without_tracking_uri(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow models serve did not come up in 180 s")
        images = load_dataset(root / "data/cifar10").test.images[:3]
        body = json.dumps({"inputs": images.tolist()}).encode()
        request = urllib.request.Request(
            f"{url}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            predictions = json.load(resp)["predictions"]
        assert len(predictions) == 3
        assert all(p["label"] in CIFAR10_CLASSES and 0 < p["probability"] <= 1 for p in predictions)
        # refused with a 400 that says why, as the in-process model refuses them: never
        # cast to uint8 (a 0..1 normalised image would get the all-black image's answer)
        negative, too_big = images.astype(np.int64), images.astype(np.int64)
        negative[0, 0, 0, 0], too_big[-1, -1, -1, -1] = -1, 256
        for bad, reason in [
            ((images / 255.0).tolist(), "integer pixel values 0..255"),
            (images.astype(np.float64).tolist(), "integer pixel values 0..255"),
            (negative.tolist(), "got values from -1"),
            (too_big.tolist(), "to 256"),
            (np.zeros((1, 28, 28, 3), dtype=int).tolist(), "shape (N, 32, 32, 3)"),
            ([[[0, 0, 0]]] * 32, "shape (N, 32, 32, 3)"),
        ]:
            status, body = _post(f"{url}/invocations", {"inputs": bad})
            assert status == 400, (reason, body[:300])
            assert reason in json.loads(body)["message"], body[-500:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert not (root / "mlruns" / "mlflow.db").exists()


def _post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_mlflow_search_runs_in_the_project_root_finds_the_runs(trained):
    code = (
        "import mlflow; runs = mlflow.search_runs(experiment_names=['cifar10']); "
        "print(sorted(set(runs['tags.mlflow.runName'])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=trained["root"],
        env=_without_tracking_uri(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "['baseline', 'download', 'improved']"


def test_params_of_a_stage_run():
    params = load_params()
    logged = run_params(params, params.improved)
    assert logged["model.filters"] == list(params.improved.model.filters)
    assert logged["seed"] == params.common.seed


def test_chart_keys_and_the_split_of_a_final_figure():
    assert chart_key("val_loss") == "curves/val_loss"
    assert chart_key("test_accuracy") == "test_accuracy"
    assert [metric_split(k) for k in ("test_loss", "final_val_accuracy", "val_loss")] == [
        "test",
        "val",
        None,
    ]


def test_predict_without_model_uses_the_best_champion(trained, tmp_path, capsys):
    from PIL import Image

    from src import predict

    client = mlflow.MlflowClient()
    champions = {
        stage: client.get_model_version_by_alias(f"cifar10-{stage}", "champion")
        for stage in ("baseline", "improved")
    }
    stage, version = max(champions.items(), key=lambda kv: float(kv[1].tags["test_accuracy"]))
    image = tmp_path / "cat.png"
    Image.fromarray(load_dataset(trained["root"] / "data/cifar10").test.images[0]).save(image)
    predict.main([str(image)])
    out, err = capsys.readouterr()
    accuracy = float(version.tags["test_accuracy"])
    expected = f"model: models:/cifar10-{stage}@champion (version {version.version}, "
    assert expected + f"test accuracy {accuracy:.4f})" in err
    assert out.split()[1] in CIFAR10_CLASSES


# --------------------------------------------------------------------------- one version per run


@pytest.fixture
def registry_store(tmp_path, monkeypatch):
    """An empty store of its own, a run in it and a tiny model file to register (the
    global tracking URI is put back afterwards: the module's other tests use theirs)."""
    import torch

    from src.artifacts import write_model_file
    from src.config.schema import ModelConfig
    from src.training.models import build_cnn

    _isolate(monkeypatch, tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    torch.manual_seed(0)
    cfg = {"model": ModelConfig(filters=(4,), fc=()), "train": {}}
    model_file = tmp_path / "baseline.pt"
    write_model_file(model_file, build_cnn(cfg["model"]), "baseline", cfg, {})
    client = mlflow.MlflowClient()
    # artifacts beside the store, not in the working directory's ./mlruns
    run_id = client.create_run(store.create_experiment(client, uri, "cifar10")).info.run_id
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    try:
        yield client, Run(run_id, "cifar10"), model_file, images
    finally:
        mlflow.set_tracking_uri(previous)


def _register(run, model_file, images, smoke=()):
    return registry.log_model(
        run,
        "baseline",
        lambda: pyfunc_model(model_file, images),
        final_metrics={"test_accuracy": 0.25},
        smoke=list(smoke),
    )


def _logged_models(client, run) -> list:
    return mlflow.search_logged_models(
        experiment_ids=[client.get_run(run.run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run.run_id}'",
        output_format="list",
    )


def test_a_version_is_tagged_by_the_call_that_creates_it(registry_store, monkeypatch):
    """Killed right after the registry created the version: the version already has its
    tags; the rerun adds no second version and sets the champion alias."""
    client, run, model_file, images = registry_store
    create = mlflow.MlflowClient.create_model_version

    def create_then_die(self, *args, **kwargs):
        create(self, *args, **kwargs)
        raise KeyboardInterrupt  # kill -9 before the next statement

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", create_then_die)
    with pytest.raises(KeyboardInterrupt):
        _register(run, model_file, images, smoke=["dry run"])
    (version,) = client.search_model_versions("name = 'cifar10-baseline'")
    assert version.tags["smoke"] == "dry run" and version.tags["servable"] == "false"
    assert "smoke run, not for serving" in version.description
    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", create)
    line = _register(run, model_file, images, smoke=["dry run"])
    assert "version 1" in line and "not @champion" in line
    (again,) = client.search_model_versions("name = 'cifar10-baseline'")
    assert again.tags == version.tags
    assert len(_logged_models(client, run)) == 1  # the rerun logged no second model
