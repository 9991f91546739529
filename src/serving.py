"""The model a user calls: a stage's model file as a classifier of uint8 images.

`Classifier` reads a model file the stages write (``models/<stage>.pt``: weights,
resolved config, final metrics; read with ``torch.load(weights_only=True)``), rebuilds
the network its config describes, and maps uint8 RGB images (N, H, W, 3) to class
names and probabilities. The stage's normalisation and resizing live inside it.

This file is also the MLflow model's code ("models from code", logged by
`tracking.Run.log_model`): MLflow runs it on load, `set_model` at the bottom names
`CifarModel` as the model, and the model file is its one artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from src import artifacts
from src.artifacts import load_state_strict
from src.augment import resize, to_float_nchw
from src.config import CIFAR10_CLASSES, ModelConfig, ResNetConfig, build
from src.errors import WeightsError
from src.models import build_cnn, build_resnet

MODEL_FILE_ARTIFACT = "model_file"  # the artifact key of the model file in the MLflow model
IMAGE_SHAPE = (32, 32, 3)  # what the networks were trained on: CIFAR-10's own size
BATCH = 256  # images per forward pass


def as_images(images: Any) -> np.ndarray:
    """uint8 (N, 32, 32, 3) from an array, tensor or nested list; ValueError otherwise."""
    if isinstance(images, pd.DataFrame):  # a served tensor input never arrives as one
        raise ValueError("expected a uint8 array (N, 32, 32, 3), got a DataFrame")
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or tuple(array.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"expected images of shape (N, 32, 32, 3), got {array.shape}")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255 or np.any(array % 1)):
            raise ValueError("expected uint8 pixel values 0..255")
        array = array.astype(np.uint8)
    return array


def read_model_file(path: str | Path) -> dict:
    """A stage's model file (`src.artifacts`' one reader); WeightsError (one line) for
    anything else, such as a plain state dict without the resolved config."""
    payload = artifacts.read_model_file(Path(path))
    if "config" not in payload:
        raise WeightsError(
            f"{path}: not a model file of this project (expected the 'model' and 'config' "
            "entries that the pipeline stages write)"
        )
    return payload


def build_network(config: dict) -> tuple[nn.Module, dict]:
    """The network a resolved stage config describes (weights not loaded), and its
    input settings: mean, std and the size images are resized to."""
    train = config.get("train", {})
    if "model" in config:  # baseline, improved, tuning trials: the course CNN
        model_cfg = build(ModelConfig, config["model"], prefix="model")
        network, size = build_cnn(model_cfg), model_cfg.image_size
    elif "trainable" in config:  # the ResNet stage; the weights come from the file
        resnet_cfg = build(ResNetConfig, {**config, "weights": "none"})
        network, size = build_resnet(resnet_cfg), resnet_cfg.image_size
    else:
        raise WeightsError("the model file's config describes neither a CNN nor the ResNet")
    inputs = {
        "mean": tuple(train.get("mean", (0.5, 0.5, 0.5))),
        "std": tuple(train.get("std", (0.25, 0.25, 0.25))),
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
        return cls(read_model_file(path), str(path))

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


class CifarModel(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc: `predict(uint8 (N, 32, 32, 3))` -> DataFrame of `label`,
    `probability` and the ten class probabilities."""

    def load_context(self, context) -> None:
        self.classifier = Classifier.from_file(context.artifacts[MODEL_FILE_ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        # np.ndarray: a hint MLflow infers no schema from; the logged signature checks
        return self.classifier(model_input)


mlflow.models.set_model(CifarModel())
