"""`python -m src.predict`: image files of any size in, top-k classes out; one clear
line for a file that is not an image or a model file of another kind."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from src import predict
from src.artifacts import write_model_file as save_model_file
from src.config.cifar import CIFAR10_CLASSES
from src.config.schema import ModelConfig, TrainConfig, TransferConfig
from src.inference.classifier import Classifier
from src.training.models import build_cnn, build_resnet
from tests.conftest import _isolate, tiny_params


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small CNN in the format the stages write (random weights: shapes matter here)."""
    torch.manual_seed(0)
    cfg = {"model": ModelConfig(filters=(4, 8), fc=(16,)), "train": {"mean": [0.5] * 3}}
    path = tmp_path_factory.mktemp("models") / "baseline.pt"
    model = build_cnn(cfg["model"])
    save_model_file(path, model, "baseline", cfg, {"test_accuracy": 0.1})
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """PNG and JPEG, RGB, grey and RGBA, from 17 px to 640 px, not all square."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    specs = [("tiny.png", (32, 32), "RGB"), ("photo.jpg", (640, 480), "RGB")]
    specs += [("tall.png", (17, 200), "L"), ("alpha.png", (100, 100), "RGBA")]
    paths = []
    for name, (w, h), mode in specs:
        channels = len(mode)
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8).squeeze()
        Image.fromarray(pixels, mode=mode).save(folder / name)
        paths.append(folder / name)
    return paths


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        predict.main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_images_of_any_size_and_format_get_top_k_classes(capsys, model_file, images):
    code, out, err = _run(capsys, *images, "--model", model_file, "--top-k", "3")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == len(images)
    for line, path in zip(lines, images):
        assert line.startswith(str(path))
        fields = line[len(str(path)) :].split()
        names, probs = fields[::2], [float(p) for p in fields[1::2]]
        assert len(names) == 3 and set(names) <= set(CIFAR10_CLASSES)
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.001


def test_predictions_are_the_models_own(model_file, images):
    pixels = np.stack([predict.load_image(p) for p in images])
    assert pixels.shape == (len(images), 32, 32, 3) and pixels.dtype == np.uint8
    # a 32x32 file reaches the model unchanged
    np.testing.assert_array_equal(pixels[0], np.asarray(Image.open(images[0]).convert("RGB")))
    table = Classifier.from_file(model_file)(pixels)
    best = predict.top_k(table, 1)
    assert [b[0][0] for b in best] == list(table["label"])
    assert table["probability"].to_numpy() == pytest.approx([b[0][1] for b in best])


def test_a_resnet_model_file_resizes_inside(capsys, tmp_path, images):
    cfg = TransferConfig(weights="none", image_size=64)
    save_model_file(tmp_path / "resnet.pt", build_resnet(cfg), "resnet", cfg, {})
    code, out, err = _run(capsys, images[0], "--model", tmp_path / "resnet.pt", "--top-k", "1")
    assert code == 0, err
    assert out.split()[1] in CIFAR10_CLASSES


@pytest.mark.parametrize(
    "content, message",
    [(b"not an image at all", "not an image"), (None, "no such file")],
)
def test_a_file_that_is_not_an_image_is_one_clear_error(
    capsys, tmp_path, model_file, content, message
):
    bad = tmp_path / "cat.png"
    if content is not None:
        bad.write_bytes(content)
    code, out, err = _run(capsys, bad, "--model", model_file)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [err.strip()] and message in err and "cat.png" in err


def test_a_model_file_of_another_kind_is_one_clear_error(capsys, tmp_path, images, monkeypatch):
    _isolate(monkeypatch, tmp_path)  # models:/ URIs read this (empty) project's store
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    state_dict = tmp_path / "state_dict.pt"
    torch.save(build_cnn(ModelConfig(filters=(4,), fc=())).state_dict(), state_dict)
    for path, message in [
        (garbage, "corrupt or not a readable PyTorch file"),
        (state_dict, "not a model file of this project"),
        (tmp_path / "missing.pt", "missing.pt does not exist"),
        ("models:/no-such-model@champion", "cannot load this MLflow model"),
    ]:
        code, _, err = _run(capsys, images[0], "--model", path)
        assert code == 1, err
        (line,) = [x for x in err.splitlines() if "error" in x.lower()]  # MLflow logs INFO
        assert line.startswith("error: ") and message in line and "Traceback" not in err


def test_weights_for_another_architecture_are_refused(capsys, tmp_path, model_file, images):
    payload = torch.load(model_file, weights_only=True)
    payload["config"]["model"] = dataclasses.asdict(ModelConfig(filters=(8, 8), fc=(16,)))
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    code, _, err = _run(capsys, images[0], "--model", wrong)
    assert code == 1 and "another architecture" in err


# --------------------------------------------------------------------------- no --model


@pytest.fixture
def empty_project(tmp_path, monkeypatch) -> Path:
    """A project root with params.yaml and nothing trained: no model file, no store."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(root, "official")))
    _isolate(monkeypatch, root)
    return root


def _model(root: Path, stage: str, accuracy: float, subset: int = 0) -> Path:
    torch.manual_seed(0)
    cfg = {"model": ModelConfig(filters=(4, 8), fc=(16,)), "train": TrainConfig(subset=subset)}
    path = root / "models" / f"{stage}.pt"
    path.parent.mkdir(exist_ok=True)
    save_model_file(path, build_cnn(cfg["model"]), stage, cfg, {"test_accuracy": accuracy})
    return path


def test_without_model_the_best_servable_file_is_used_and_named(capsys, empty_project, images):
    best = _model(empty_project, "baseline", 0.70)
    _model(empty_project, "improved", 0.90, subset=5000)  # better, but a smoke run
    code, out, err = _run(capsys, images[0])
    assert code == 0, err
    assert f"model: {best} (test accuracy 0.7000)" in err
    assert out.split()[1] in CIFAR10_CLASSES
    assert not (empty_project / "mlflow.db").exists()  # looking did not create a store


def test_without_any_servable_model_it_lists_what_exists(capsys, empty_project, images):
    code, out, err = _run(capsys, images[0])
    assert code == 1 and out == ""
    assert "nothing: no registered model, no model file" in err
    assert err.strip().splitlines()[-1].startswith("error: no servable model")
    assert "dvc repro baseline" in err
    smoke = _model(empty_project, "improved", 0.47, subset=10000)
    code, _, err = _run(capsys, images[0])
    assert code == 1
    assert f"{smoke}: test accuracy 0.4700 (smoke: trained on 10,000 images)" in err
    assert f"--model {smoke}" in err


def test_registered_smoke_versions_are_listed_not_used(capsys, empty_project, images):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{empty_project}/mlflow.db")
    client.create_registered_model("cifar10-baseline")
    client.create_model_version(
        "cifar10-baseline",
        "file:///nowhere",
        tags={"servable": "false", "smoke": "profile quick", "test_accuracy": "0.388"},
    )
    code, _, err = _run(capsys, images[0])
    assert code == 1
    line = "models:/cifar10-baseline/1: test accuracy 0.3880, servable=false (smoke: profile quick)"
    assert line in err


def test_a_crafted_model_file_is_refused_by_name_and_kept(capsys, tmp_path, images):
    from tests.crafted import crafted_files

    marker = tmp_path / "code-ran"
    files = crafted_files(tmp_path / "crafted", marker, wrap=lambda p: {"model": {}, "x": p})
    for name, path in files.items():
        before = path.read_bytes()
        code, out, err = _run(capsys, images[0], "--model", path)
        assert code == 1 and out == "", err
        (line,) = err.strip().splitlines()
        assert line.startswith(f"error: {path}: refused: reading it needs arbitrary unpickling")
        assert f"it names {name})" in line
        assert not marker.exists(), f"{name}: code ran"
        assert path.read_bytes() == before


@pytest.mark.parametrize("side", [15000, 10000])
def test_a_huge_image_is_one_line_naming_it(capsys, tmp_path, model_file, images, side):
    from tests.crafted import huge_png

    huge = tmp_path / "huge.png"
    huge.write_bytes(huge_png(side, side))
    code, out, err = _run(capsys, images[0], huge, "--model", model_file)
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {huge}: refused: Image size ({side * side} pixels)")
