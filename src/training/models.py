"""Network builders. Pure: no device moves, no dtype casts, no globals read.

`build_cnn` makes both course CNNs (task 2 baseline, task 3 improved) and every
tuning trial from a :class:`ModelConfig`; `build_transfer` makes the task 4a
transfer-learning network from its params' backbone (`build_resnet`: ResNet18, the
course's; `src.training.efficientnet`: EfficientNet-Lite0), and `split_backbone` /
`BackbonePart` cut it into a frozen prefix and a trainable tail. `build_stage_network`
picks by the stage's kind (`src.config.stages`): what trains goes through
`src.training.recipe`, what serving and the report rebuild from a saved config
through `network_from_config`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from src.artifacts import load_pretrained, read_weights
from src.config.backbones import BACKBONES, get_backbone
from src.config.cifar import NUM_CLASSES
from src.config.layout import resolve_path
from src.config.schema import CNNStageConfig, ModelConfig, TransferConfig
from src.config.stages import get_stage
from src.config.typed import build
from src.runtime.errors import WeightsError
from src.training import efficientnet

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
}


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


def build_stage_network(
    kind: str, section: CNNStageConfig | TransferConfig
) -> tuple[nn.Module, int]:
    """A training stage's network from its typed params section, and the image size
    (px) it takes: kind "cnn" builds the section's `model`, "transfer" the section's
    backbone with its weights (WeightsError when they cannot be had)."""
    if kind == "cnn":
        return build_cnn(section.model), section.model.image_size
    if kind == "transfer":
        return build_transfer(section), section.image_size
    raise ValueError(f"a stage of kind {kind!r} has no network")


def network_from_config(config: dict, stage: str | None = None) -> tuple[nn.Module, int]:
    """The network a resolved stage config describes (a model file's, the report's), in
    random init: a ResNet's pretrained weights are never loaded (a model file brings its
    own); and the image size it takes. `stage` picks the builder by its catalog kind and
    prefixes errors with its name; without it the config's keys decide (`model`: a CNN,
    `trainable`: the transfer network, of `backbone`, ResNet18 when the config predates
    that key). A CNN's `train` is not read (nor checked) here."""
    if stage is not None:
        entry = get_stage(stage)
        if not entry.trains:
            raise ValueError(f"stage {stage!r} trains no network")
        kind = entry.kind
    elif "model" in config:
        kind = "cnn"
    elif "trainable" in config:
        kind = "transfer"
    else:
        raise WeightsError("the model file's config describes neither a CNN nor a transfer network")
    if kind == "cnn":  # the network's keys only: a CNN's `train` is not read here
        key = f"{stage}.model" if stage else "model"
        section = CNNStageConfig(model=build(ModelConfig, config["model"], prefix=key))
    else:
        section = build(TransferConfig, {**config, "weights": "none"}, prefix=stage or "")
    return build_stage_network(kind, section)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- backbones


def build_transfer(cfg: TransferConfig) -> nn.Module:
    """The task-4a network of `cfg.backbone`: weights per `cfg.weights`, a new 10-way
    head, every block not in `cfg.trainable` frozen (`set_train_mode` keeps frozen
    blocks in eval mode, so their BatchNorm statistics never move)."""
    if cfg.backbone == "efficientnet_lite0":
        return efficientnet.build_efficientnet(cfg)
    return build_resnet(cfg)


def split_backbone(backbone: str, trainable: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Split the backbone's blocks at the first trainable one: (frozen prefix, the rest).

    Everything in the prefix is frozen, so its output can be computed once when the
    inputs never change (no augmentation). With only `fc` trainable the prefix ends
    after the global pool: 512 features per image (ResNet18), 1280 (EfficientNet-Lite0).
    """
    order = get_backbone(backbone).order
    first = next(i for i, name in enumerate(order) if name in trainable)
    return order[:first], order[first:]


def backbone_units(model: nn.Module, backbone: str) -> dict[str, nn.Module]:
    """The blocks of a `build_transfer` network by name, in forward order (the backbone's
    `order`), sharing (not copying) its modules."""
    if backbone == "efficientnet_lite0":
        return efficientnet.efficientnet_units(model)
    return {name: getattr(model, name) for name in RESNET_ORDER}


class BackbonePart(nn.Module):
    """Consecutive blocks `names` of a `build_transfer` network of `backbone`, sharing
    (not copying) its modules: training a part trains the whole model."""

    def __init__(self, model: nn.Module, backbone: str, names: tuple[str, ...]):
        super().__init__()
        units = backbone_units(model, backbone)
        bad = [n for n in names if n not in units]
        if bad:
            raise ValueError(f"not {get_backbone(backbone).title} blocks: {bad}")
        self.names = tuple(names)
        self.blocks = nn.ModuleDict({name: units[name] for name in names})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            if name == "fc":
                x = torch.flatten(x, 1)  # pooled (B, C, 1, 1) -> (B, C)
            x = self.blocks[name](x)
        return x


def weights_file(backbone: str, weights: str) -> Path | None:
    """The file `resnet.weights` reads for `backbone` (None: none, or not installed)."""
    if backbone == "efficientnet_lite0":
        return efficientnet.weights_file(weights)
    return resnet_weights_file(weights)


# --------------------------------------------------------------------------- ResNet18

# torchvision ResNet's children in forward order (`torch.flatten` runs between
# avgpool and fc). The blocks with parameters are what `resnet.trainable` names.
RESNET_ORDER = BACKBONES["resnet18"].order
IMAGENET_WEIGHTS = "IMAGENET1K_V1"
DOWNLOAD_TIMEOUT_S = 30  # per network read; urllib's default is to wait forever


def imagenet_weights_url() -> str:
    from torchvision.models import ResNet18_Weights

    return ResNet18_Weights[IMAGENET_WEIGHTS].url


def imagenet_weights_path() -> Path:
    """Where torchvision caches IMAGENET1K_V1 resnet18 weights (honours $TORCH_HOME):
    ``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``, by default under ~/.cache/torch."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_weights_url()).name


def _load_imagenet_state() -> dict:
    """The cached file when present (no network, no hash check: torchvision's own
    behaviour), else torchvision's download into that cache, hash-checked."""
    import socket

    from torchvision.models import ResNet18_Weights

    path = imagenet_weights_path()
    if path.is_file():
        try:
            return read_weights(path)
        except WeightsError as exc:
            raise WeightsError(f"{exc}; delete it to download it again") from exc
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return ResNet18_Weights[IMAGENET_WEIGHTS].get_state_dict(
            progress=True, check_hash=True, weights_only=True
        )
    except Exception as exc:  # urllib errors, timeouts, hash mismatch, ...
        raise WeightsError(
            f"could not fetch the ImageNet ResNet18 weights ({type(exc).__name__}: {exc}).\n"
            f"  Offline? Download {imagenet_weights_url()} elsewhere and put it at\n"
            f"    {path}\n"
            "  (torchvision's cache; $TORCH_HOME moves it), or set resnet.weights to the\n"
            "  path of that state-dict file, or to 'none' for a random-init smoke run\n"
            "  (not a pretrained result)."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def resnet_weights_file(weights: str) -> Path | None:
    """The file `resnet.weights` reads: torchvision's cache path for 'imagenet', the
    (project-relative) path itself, or None for 'none'."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return imagenet_weights_path()
    return resolve_path(weights)


def build_resnet(cfg: TransferConfig) -> nn.Module:
    """torchvision resnet18 with weights per `cfg.weights`, a new 10-way `fc`, and every
    block not in `cfg.trainable` frozen (requires_grad False).

    The file's own `fc` (ImageNet's 1000 classes) is never used. `set_train_mode`
    keeps frozen BatchNorm layers in eval mode so their statistics never move.
    Raises WeightsError (before any data is touched) when weights are unavailable.
    """
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    load_pretrained(
        model,
        cfg.weights,
        lambda: (_load_imagenet_state(), f"{imagenet_weights_path()} (ImageNet weights)"),
        resnet_weights_file(cfg.weights),
        head="fc",
        expected="a resnet18 state-dict file; 'imagenet' uses torchvision's cache, "
        "'none' random init",
    )
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    for name in RESNET_ORDER:
        getattr(model, name).requires_grad_(name in cfg.trainable)
    return model
