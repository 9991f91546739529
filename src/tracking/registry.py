"""The MLflow Model Registry side of a stage: its model logged as a pyfunc, linked to its
final metrics, registered as a new version of ``<experiment>-<stage>``, and the `champion`
alias moved when the version earns it. What the pyfunc is comes from the caller
(`src.inference.pyfunc.pyfunc_model`): this module knows MLflow, not networks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from src.tracking.provenance import git_info
from src.tracking.runs import Run, activate

CHAMPION = "champion"  # registry alias: the version to serve (best non-smoke test accuracy)


def log_model(
    run: Run,
    stage: str,
    pyfunc_model: Callable[[], dict[str, Any]],
    *,
    final_metrics: dict[str, float],
    step: int = 0,
    smoke: list[str] | None = None,
) -> str | None:
    """Log the stage's model as a pyfunc named after the stage (`pyfunc_model()`: the
    keyword arguments of `mlflow.pyfunc.log_model` that describe it), link the
    final metrics to it, register it as a new version of `<experiment>-<stage>` (tagged
    in the same call that creates it) and move the `champion` alias when it earns it.
    Returns a line for the stage's log; None when tracking is off (`run` inactive).

    One run registers one version: a rerun of a run whose version exists (killed after
    registering it) sets that version's alias instead of adding another.

    `smoke`: why the model is not a real result (`src.config.profiles.smoke_reasons`)."""
    if not run.active:
        return None
    import mlflow

    client = mlflow.MlflowClient()
    name = f"{run.experiment}-{stage}"
    test_accuracy = final_metrics.get("test_accuracy")
    smoke = smoke or []
    existing = version_of_run(client, name, run.run_id)
    if existing is not None:
        return register_version(name, str(existing.version), stage, test_accuracy, smoke)

    with activate(run.run_id), _no_progress_bars():
        info = mlflow.pyfunc.log_model(
            name=stage,
            **pyfunc_model(),
            step=step,
            tags={"stage": stage},
        )
    # test figures first: the Models tab shows the model's metrics in logging order
    ordered = dict(sorted(final_metrics.items(), key=lambda kv: not kv[0].startswith("test")))
    run.log_metrics(ordered, step=step, model_id=info.model_id)
    _ensure_registered_model(client, name, stage)
    # tags and description in the creating call: a kill cannot leave an untagged version
    created = client.create_model_version(
        name,
        f"models:/{info.model_id}",
        run_id=run.run_id,
        tags=version_tags(stage, test_accuracy, smoke),
        description=version_description(stage, test_accuracy, smoke),
        model_id=info.model_id,
    )
    return register_version(name, str(created.version), stage, test_accuracy, smoke)


def version_of_run(client: Any, name: str, run_id: str) -> Any | None:
    """The first version of registered model `name` that run `run_id` created, or None."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def version_tags(stage: str, test_accuracy: float | None, smoke: list[str]) -> dict[str, str]:
    """A registry version's tags: `servable` false and `smoke` (why) for a smoke run."""
    tags = {
        "stage": stage,
        "test_accuracy": "" if test_accuracy is None else repr(float(test_accuracy)),
        "servable": str(not smoke).lower(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        **git_info(),
    }
    if smoke:
        tags["smoke"] = "; ".join(smoke)
    return {key: value for key, value in tags.items() if value}


def version_description(stage: str, test_accuracy: float | None, smoke: list[str]) -> str:
    accuracy = "n/a" if test_accuracy is None else f"{test_accuracy:.4f}"
    note = f"smoke run, not for serving: {'; '.join(smoke)}" if smoke else "full budget"
    return f"{stage}: test accuracy {accuracy} ({note})"


def _ensure_registered_model(client: Any, name: str, stage: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=_registered_description(stage))
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def register_version(
    name: str,
    version: str,
    stage: str,
    test_accuracy: float | None,
    smoke: list[str],
) -> str:
    """Point `champion` at registry version `version` (created with `version_tags`) when
    it is a full-budget model whose test accuracy beats the current champion's (smoke
    runs never become champion: their versions carry `smoke` and `servable=false`).
    Returns a line for the stage's log."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    accuracy = "n/a" if test_accuracy is None else f"{test_accuracy:.4f}"

    where = f"registry: {name} version {version}, test accuracy {accuracy}"
    if smoke:
        return f"{where}; tagged smoke ({'; '.join(smoke)}), not @{CHAMPION}"
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    if current is not None and str(current.version) == version:
        return f"{where}; @{CHAMPION}"  # a rerun: the alias already points here
    best = _version_accuracy(client, current) if current is not None else None
    beats = test_accuracy is not None and (best is None or test_accuracy > best)
    if current is not None and not beats:
        held = "n/a" if best is None else f"{best:.4f}"
        return f"{where}; @{CHAMPION} stays version {current.version} ({held})"
    client.set_registered_model_alias(name, CHAMPION, version)
    if current is None:
        return f"{where}; now @{CHAMPION}"
    was = "n/a" if best is None else f"{best:.4f}"
    return f"{where}; now @{CHAMPION} (was version {current.version}, {was})"


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
        "(N, 32, 32, 3), integer pixels 0..255 (floats, values out of range and other shapes "
        "are refused); `python -m src.predict` takes image files of any size. Output: "
        "`label`, its `probability`, and one probability column per class. Serve "
        f"`models:/<name>@{CHAMPION}` (the best test accuracy among full-budget runs); "
        "`models:/<name>/latest` is the newest version, smoke runs (tag `smoke`) included."
    )


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
