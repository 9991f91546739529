"""Classify image files with a trained model.

    python -m src.predict IMAGE... [--model models/baseline.pt | models:/cifar10-improved@champion]

Any PNG/JPEG (or other format Pillow reads) of any size: each image is centre-cropped
to a square and resized to CIFAR-10's 32x32, then the model (which normalises and, for
the ResNet, resizes as its stage did) gives the top-k classes with probabilities.
`--model` takes a stage's model file or any MLflow model URI (`models:/<name>@<alias>`,
`models:/<name>/<version>`, `runs:/<run id>/<stage>`), read from the project's
tracking store or $MLFLOW_TRACKING_URI. Without `--model` it uses the best servable model
that exists (`src.inference.model_choice`: the registry's champions, else the stages' model files
that are not smoke runs) and says which on stderr; with none, it lists what exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from src.config.cifar import CIFAR10_CLASSES, IMAGE_SIZE
from src.config.layout import Layout, resolve_path
from src.config.load import load_params
from src.runtime.entry import guarded
from src.runtime.errors import DataError


class ImageError(DataError):
    """An input file is missing or not an image."""


def load_image(path: Path) -> np.ndarray:
    """uint8 (32, 32, 3): the file's centre square, resized with Lanczos filtering."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    from src.data.sources import too_large_is_an_error

    try:
        with too_large_is_an_error(), Image.open(path) as img:
            img.load()
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"{path}: not an image Pillow can read ({exc})") from None
    square = ImageOps.fit(rgb, (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8)


def is_mlflow_uri(model: str) -> bool:
    return "://" in model or model.startswith(("models:", "runs:"))


def load_predictor(model: str):
    """A callable: uint8 (N, 32, 32, 3) -> DataFrame with one column per class."""
    from src.training.models import WeightsError

    if not is_mlflow_uri(model):
        from src.inference.classifier import Classifier

        return Classifier.from_file(resolve_path(model))
    import mlflow

    from src.tracking import store

    mlflow.set_tracking_uri(store.tracking_uri())
    try:
        return mlflow.pyfunc.load_model(model).predict
    except Exception as exc:  # unknown name/alias/version, another flavour, no store
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{model}: cannot load this MLflow model ({first})") from None


def default_model() -> str:
    """The best servable model there is (`src.inference.model_choice`), named on stderr."""
    from src.inference import model_choice

    params = load_params()
    chosen = model_choice.choose(params.common.experiment, Layout().models)
    print(f"model: {chosen.model} ({chosen.about})", file=sys.stderr)
    return chosen.model


def top_k(table, k: int) -> list[list[tuple[str, float]]]:
    probs = table[list(CIFAR10_CLASSES)].to_numpy()
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[(CIFAR10_CLASSES[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument(
        "--model",
        help="a stage's model file or an MLflow model URI (default: the best servable model "
        "there is: a registry champion, else a stage's model file that is no smoke run)",
    )
    parser.add_argument("--top-k", type=int, default=3, help="classes shown per image")
    args = parser.parse_args(argv)
    if not 1 <= args.top_k <= len(CIFAR10_CLASSES):
        parser.error(f"--top-k must be in 1..{len(CIFAR10_CLASSES)}")

    images = np.stack([load_image(path) for path in args.images])  # every file checked first
    model = args.model or default_model()
    predict = load_predictor(model)
    table = predict(images)
    width = max(len(str(path)) for path in args.images)
    for path, best in zip(args.images, top_k(table, args.top_k)):
        shown = "  ".join(f"{name} {p:.3f}" for name, p in best)
        print(f"{str(path):<{width}}  {shown}")


if __name__ == "__main__":
    main()
