"""The MLflow model served from a stage's model file ("models from code").

MLflow runs this file on load: `set_model` at the bottom names `CifarModel` as the
model, whose one artifact is the project's own model file (weights + config, read with
``torch.load(weights_only=True)``), and `src` ships with it, so nothing is pickled.
`pyfunc_model` is what `src.tracking.registry.log_model` hands to
`mlflow.pyfunc.log_model` for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from src.inference.classifier import Classifier, as_images

MODEL_FILE_ARTIFACT = "model_file"  # the artifact key of the model file in the MLflow model


def signature(example: np.ndarray, classifier: Classifier) -> ModelSignature:
    """The MLflow signature: the output columns only. An input schema would make
    `mlflow models serve` cast the request's JSON to its dtype before the model sees it
    (a uint8 tensor spec turns 0.5 into 0 and answers 200); without one the raw numbers
    reach `CifarModel.predict`, which refuses what `as_images` refuses, with a 400."""
    return ModelSignature(
        inputs=None, outputs=infer_signature(example, classifier(example)).outputs
    )


INPUT_DESCRIPTION = (
    "uint8 RGB images (N, 32, 32, 3), integer pixel values 0..255; floats, values out of "
    "range and other shapes are refused (HTTP 400 when served)"
)


class CifarModel(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc: `predict(uint8 (N, 32, 32, 3))` -> DataFrame of `label`,
    `probability` and the ten class probabilities."""

    def load_context(self, context) -> None:
        self.classifier = Classifier.from_file(context.artifacts[MODEL_FILE_ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        # np.ndarray: a hint MLflow infers no schema from. The input arrives as sent (the
        # signature has no input schema, see `signature`): it is checked here, and a bad
        # one is an INVALID_PARAMETER_VALUE, which the scoring server answers with a 400.
        try:
            images = as_images(model_input)
        except ValueError as exc:
            raise MlflowException(f"invalid input: {exc}", INVALID_PARAMETER_VALUE) from None
        return self.classifier(images)


def pyfunc_model(model_file: Path, input_example: Any) -> dict[str, Any]:
    """The keyword arguments of `mlflow.pyfunc.log_model` (besides name, step and tags)
    that log `model_file` as this pyfunc: `input_example` is a few uint8 images
    (N, 32, 32, 3)."""
    example = as_images(input_example)
    return {
        "python_model": __file__,
        "artifacts": {MODEL_FILE_ARTIFACT: str(model_file)},
        "code_paths": [str(Path(__file__).parents[1])],  # the `src` package
        "input_example": example,
        "signature": signature(example, Classifier.from_file(model_file)),
        "metadata": {"input": INPUT_DESCRIPTION},
        "pip_requirements": model_requirements(),
    }


def model_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import pandas
    import torch
    import torchvision

    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"numpy=={numpy.__version__}",
        f"pandas=={pandas.__version__}",
    ]
    try:  # the EfficientNet-Lite0 backbone's model code
        requirements.append(f"efficientnet-lite-pytorch=={version('efficientnet-lite-pytorch')}")
    except PackageNotFoundError:
        pass
    return requirements


mlflow.models.set_model(CifarModel())
