"""The MLflow Model Registry side of a stage: its model logged as a pyfunc "model from
code" (src/serving.py), linked to its final metrics, registered as a new version of
``<experiment>-<stage>``, and the `champion` alias moved when the version earns it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src import tracking

if TYPE_CHECKING:
    from src.tracking import Run

CHAMPION = "champion"  # registry alias: the version to serve (best non-smoke test accuracy)


def smoke_reasons(params: Any, section: Any) -> list[str]:
    """Why a stage's model is not one to serve: a reduced budget or random weights."""
    train = getattr(section, "train", None)
    reasons = []
    if params.profile != "full":
        reasons.append(f"profile {params.profile}")
    if train is not None and train.dry_run:
        reasons.append("dry run")
    if train is not None and train.subset:
        reasons.append(f"trained on {train.subset:,} images")
    if getattr(section, "weights", None) == "none":
        reasons.append("random-init backbone")
    return reasons


def log_model(
    run: Run,
    stage: str,
    model_file: Path,
    input_example: Any,
    *,
    final_metrics: dict[str, float],
    step: int = 0,
    smoke: list[str] | None = None,
) -> str | None:
    """Log the stage's model file as a pyfunc model named after the stage, link the
    final metrics to it, register it as a new version of `<experiment>-<stage>` and
    move the `champion` alias when it earns it. Returns a line for the stage's log.

    The pyfunc is "models from code" (src/serving.py): the project's own model file
    (weights + config, read with weights_only=True) is its artifact and `src` ships
    with it, so nothing is pickled. It takes uint8 images (N, 32, 32, 3) and returns
    class names and probabilities; `input_example` is a few such images."""
    import mlflow
    from mlflow.models import infer_signature

    from src import serving

    example = serving.as_images(input_example)
    signature = infer_signature(example, serving.Classifier.from_file(model_file)(example))
    name = f"{run.experiment}-{stage}"
    with tracking.activate(run.run_id), _no_progress_bars():
        info = mlflow.pyfunc.log_model(
            name=stage,
            python_model=serving.__file__,
            artifacts={serving.MODEL_FILE_ARTIFACT: str(model_file)},
            code_paths=[str(Path(serving.__file__).parent)],
            input_example=example,
            signature=signature,
            pip_requirements=_model_requirements(),
            registered_model_name=name,
            step=step,
            tags={"stage": stage},
        )
    # test figures first: the Models tab shows the model's metrics in logging order
    ordered = dict(sorted(final_metrics.items(), key=lambda kv: not kv[0].startswith("test")))
    run.log_metrics(ordered, step=step, model_id=info.model_id)
    version = str(info.registered_model_version)
    test_accuracy = final_metrics.get("test_accuracy")
    return register_version(name, version, stage, test_accuracy, smoke or [])


def register_version(
    name: str, version: str, stage: str, test_accuracy: float | None, smoke: list[str]
) -> str:
    """Tag and describe a new registry version, and point `champion` at it when it is a
    full-budget model whose test accuracy beats the current champion's (smoke runs never
    become champion: their versions carry `smoke` and `servable=false`). Returns a line
    for the stage's log."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    accuracy = "n/a" if test_accuracy is None else f"{test_accuracy:.4f}"
    tags = {
        "stage": stage,
        "test_accuracy": "" if test_accuracy is None else repr(float(test_accuracy)),
        "servable": str(not smoke).lower(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        **tracking.git_info(),
    }
    if smoke:
        tags["smoke"] = "; ".join(smoke)
    for key, value in tags.items():
        if value:
            client.set_model_version_tag(name, version, key, value)
    note = f"smoke run, not for serving: {tags['smoke']}" if smoke else "full budget"
    client.update_model_version(name, version, f"{stage}: test accuracy {accuracy} ({note})")
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, _registered_description(stage))

    where = f"registry: {name} version {version}, test accuracy {accuracy}"
    if smoke:
        return f"{where}; tagged smoke ({tags['smoke']}), not @{CHAMPION}"
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    best = _version_accuracy(client, current) if current is not None else None
    beats = test_accuracy is not None and (best is None or test_accuracy > best)
    if current is not None and not beats:
        held = "n/a" if best is None else f"{best:.4f}"
        return f"{where}; @{CHAMPION} stays version {current.version} ({held})"
    client.set_registered_model_alias(name, CHAMPION, version)
    if current is None:
        return f"{where}; now @{CHAMPION}"
    return f"{where}; now @{CHAMPION} (was version {current.version}, {best:.4f})"


def _version_accuracy(client: Any, version: Any) -> float | None:
    text = version.tags.get("test_accuracy", "")
    if text:
        return float(text)
    try:
        return client.get_run(version.run_id).data.metrics.get("test_accuracy")
    except Exception:  # a version registered from elsewhere
        return None


def _registered_description(stage: str) -> str:
    return (
        f"CIFAR-10 classifier trained by the `{stage}` stage. Input: uint8 RGB images "
        "(N, 32, 32, 3); `python -m src.predict` takes image files of any size. Output: "
        "`label`, its `probability`, and one probability column per class. Serve "
        f"`models:/<name>@{CHAMPION}` (the best test accuracy among full-budget runs); "
        "`models:/<name>/latest` is the newest version, smoke runs (tag `smoke`) included."
    )


def _model_requirements() -> list[str]:
    import numpy
    import pandas
    import torch
    import torchvision

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"numpy=={numpy.__version__}",
        f"pandas=={pandas.__version__}",
    ]


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """No "Downloading artifacts" bar in the stage's log when MLflow checks the input
    example against the logged model (unless the user asked for bars)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(key)
    os.environ.setdefault(key, "false")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
