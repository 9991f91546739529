"""The model a user calls: a stage's model file as a classifier of uint8 images.

`Classifier` reads a model file the stages write (``models/<stage>.pt``: weights,
resolved config, final metrics; read with ``torch.load(weights_only=True)``), rebuilds
the network its config describes, and maps uint8 RGB images (N, H, W, 3) to class
names and probabilities. The stage's normalisation and resizing live inside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from src.artifacts import load_state_strict, read_model_file
from src.config.cifar import CIFAR10_CLASSES, COURSE_MEAN, COURSE_STD, IMAGE_SHAPE
from src.training.augment import resize, to_float_nchw
from src.training.models import network_from_config

BATCH = 256  # images per forward pass


def as_images(images: Any) -> np.ndarray:
    """uint8 (N, 32, 32, 3) from an integer array, tensor or nested list of pixels 0..255
    (one image (32, 32, 3) is a batch of one); ValueError saying what is wrong otherwise.
    Float pixels are refused, not rounded: 0..1 normalised images are a caller's mistake."""
    if isinstance(images, pd.DataFrame):  # a served tensor input never arrives as one
        raise ValueError("expected uint8 images (N, 32, 32, 3), got a DataFrame")
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    try:
        array = np.asarray(images)
    except ValueError:  # ragged nested lists
        raise ValueError("expected images of shape (N, 32, 32, 3), got ragged lists") from None
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or tuple(array.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"expected images of shape (N, 32, 32, 3), got {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"expected integer pixel values 0..255 (uint8), got {array.dtype} values "
            "(normalised or float images are not rounded: send the 0..255 integers)"
        )
    if array.size and (array.min() < 0 or array.max() > 255):
        low, high = int(array.min()), int(array.max())
        raise ValueError(f"expected pixel values 0..255, got values from {low} to {high}")
    return array.astype(np.uint8)


def build_network(config: dict) -> tuple[nn.Module, dict]:
    """The network a resolved stage config describes (weights not loaded), and its
    input settings: mean, std and the size images are resized to."""
    network, size = network_from_config(config)
    train = config.get("train", {})
    inputs = {
        "mean": tuple(train.get("mean", COURSE_MEAN)),
        "std": tuple(train.get("std", COURSE_STD)),
        "image_size": size,
    }
    return network, inputs


class Classifier:
    """A trained network with its input pipeline: uint8 images in, classes out."""

    def __init__(self, payload: dict, source: str = "model file"):
        self.stage = payload.get("stage", "?")
        self.network, inputs = build_network(payload["config"])
        load_state_strict(self.network, payload["model"], source)
        self.network.eval()
        self.mean = torch.tensor(inputs["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(inputs["std"]).view(1, 3, 1, 1)
        self.image_size = inputs["image_size"]
        self.metrics = payload.get("metrics") or {}

    @classmethod
    def from_file(cls, path: str | Path) -> Classifier:
        return cls(read_model_file(Path(path)), str(path))

    @torch.no_grad()
    def probabilities(self, images: Any) -> np.ndarray:
        """(N, 10) class probabilities for uint8 images (N, 32, 32, 3)."""
        x = torch.from_numpy(as_images(images))
        out = []
        for start in range(0, len(x), BATCH):
            batch = to_float_nchw(x[start : start + BATCH], self.mean, self.std)
            logits = self.network(resize(batch, self.image_size))
            out.append(torch.softmax(logits.float(), dim=1))
        return torch.cat(out).numpy() if out else np.zeros((0, len(CIFAR10_CLASSES)))

    def __call__(self, images: Any) -> pd.DataFrame:
        """One row per image: `label`, its `probability`, then one column per class."""
        probs = self.probabilities(images)
        table = pd.DataFrame(probs.astype(np.float64), columns=list(CIFAR10_CLASSES))
        best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
        table.insert(0, "probability", probs[np.arange(len(probs)), best].astype(np.float64))
        table.insert(0, "label", [CIFAR10_CLASSES[i] for i in best])
        return table
