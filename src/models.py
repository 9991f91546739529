"""Network builders. Pure: no device moves, no dtype casts, no globals read.

`build_cnn` makes both course CNNs (task 2 baseline, task 3 improved) and every
tuning trial from a :class:`ModelConfig`; `build_resnet` makes the task 4a
transfer-learning network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from src.config import ModelConfig, ResNetConfig

NUM_CLASSES = 10
RESNET_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
}


class WeightsError(RuntimeError):
    """Pretrained or saved weights are missing, corrupt or for another architecture."""


def build_cnn(cfg: ModelConfig) -> nn.Sequential:
    """Conv blocks [conv → act → (BN) → (Dropout2d) → maxpool 2], then FC layers.

    Input (B, 3, H, W) normalised float; output (B, 10) logits.
    """
    act = _ACTIVATIONS[cfg.activation]
    padding = cfg.kernel_size // 2 if cfg.padding == "same" else 0
    layers: list[nn.Module] = []
    in_ch = 3
    for out_ch in cfg.filters:
        layers += [nn.Conv2d(in_ch, out_ch, cfg.kernel_size, stride=1, padding=padding), act()]
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        if cfg.dropout > 0:
            layers.append(nn.Dropout2d(cfg.dropout))
        layers.append(nn.MaxPool2d(2, 2))
        in_ch = out_ch
    layers.append(nn.Flatten())
    in_features = in_ch * cfg.output_size() ** 2
    for width in cfg.fc:
        layers += [nn.Linear(in_features, width), act()]
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(width))
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        in_features = width
    layers.append(nn.Linear(in_features, NUM_CLASSES))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- ResNet18


def imagenet_weights_path() -> Path:
    """Where torchvision keeps IMAGENET1K_V1 resnet18 weights (honours $TORCH_HOME)."""
    from torchvision.models import ResNet18_Weights

    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _load_imagenet_state() -> dict:
    from torchvision.models import ResNet18_Weights

    path = imagenet_weights_path()
    if path.is_file():
        return _load_state_file(path)
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # urllib errors, hash mismatch, ...
        raise WeightsError(
            f"Could not fetch ImageNet ResNet18 weights ({type(exc).__name__}: {exc}).\n"
            f"  Offline? Put the file at {path} (torchvision's cache; $TORCH_HOME moves it),\n"
            "  or set resnet.weights to a state-dict file path, or to 'none' for a random-init\n"
            "  smoke run (its results are not pretrained results)."
        ) from exc


def _load_state_file(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint of this project
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_state_strict(model: nn.Module, state: dict, source: str) -> None:
    """load_state_dict with an error that says which keys or shapes differ."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        details = "; ".join(
            part
            for part in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                f"shape mismatch {shapes[:3]}" if shapes else "",
            )
            if part
        )
        raise WeightsError(f"{source}: weights are for another architecture ({details})")
    model.load_state_dict(state)


def build_resnet(cfg: ResNetConfig) -> nn.Module:
    """torchvision resnet18 with weights per `cfg.weights`, a 10-way `fc`, frozen blocks.

    Frozen blocks have requires_grad False; `set_train_mode` keeps them in eval mode
    so their BatchNorm statistics never move.
    """
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    if cfg.weights == "imagenet":
        load_state_strict(model, _load_imagenet_state(), "ImageNet resnet18 weights")
    elif cfg.weights != "none":
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"resnet.weights: {path} does not exist")
        state = _load_state_file(path)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own_fc = {k: v for k, v in model.state_dict().items() if k.startswith("fc.")}
        load_state_strict(model, {**state, **own_fc}, str(path))
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    for name in RESNET_BLOCKS:
        getattr(model, name).requires_grad_(name in cfg.trainable)
    return model


def frozen_prefix(model: nn.Module, trainable: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Split ResNet blocks (in forward order) into the frozen prefix and the rest.

    Feature caching is possible only when everything before the first trainable
    block is frozen, which this split makes explicit.
    """
    order = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    first = next((i for i, name in enumerate(order) if name in trainable), len(order))
    return order[:first], order[first:]
