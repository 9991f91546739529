"""Which model `python -m src.predict` uses when none is named: the best servable model
that exists, and, when there is none, what there is and how to get one.

1. the registry's `@champion` versions (tagged `servable=true`), the best by test accuracy;
2. else the stages' model files (models/<stage>.pt) that are not smoke runs (a training
   subset, a dry run, random-init weights), the best by test accuracy.

The registry is read only where a store exists: a fresh clone has no mlflow.db, and
looking for models does not create one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.artifacts import read_model_file
from src.config.profiles import smoke_reasons
from src.config.stages import TRAINING_STAGES
from src.runtime.errors import ProjectError, WeightsError
from src.tracking.registry import CHAMPION

# What a user can run to get a servable model: the stage that trains fastest.
GET_ONE = "`dvc repro baseline` (the quickest stage to train)"


@dataclass(frozen=True)
class Candidate:
    model: str  # what `--model` takes: a model URI or a file
    about: str  # e.g. "version 3, test accuracy 0.7161"
    test_accuracy: float | None
    servable: bool
    why_not: str = ""  # smoke reasons of one that is not servable


def _accuracy(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _about(accuracy: float | None) -> str:
    return "test accuracy n/a" if accuracy is None else f"test accuracy {accuracy:.4f}"


def local_models(models_dir: Path) -> list[Candidate]:
    """The stages' model files in `models_dir`, servable or not (`smoke_reasons` of the
    config each carries)."""
    found = []
    for stage in TRAINING_STAGES:
        path = models_dir / f"{stage.name}.pt"
        if not path.is_file():
            continue
        try:
            payload = read_model_file(path, mmap=True)
        except ProjectError as exc:
            found.append(Candidate(str(path), "unreadable", None, False, str(exc)))
            continue
        accuracy = _accuracy((payload.get("metrics") or {}).get("test_accuracy"))
        smoke = smoke_reasons(payload["config"])
        found.append(Candidate(str(path), _about(accuracy), accuracy, not smoke, "; ".join(smoke)))
    return found


def _store_exists(uri: str) -> bool:
    """False for a SQLite store whose file is missing (opening it would create it)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def registry_versions(experiment: str) -> list[Candidate]:
    """Every registered version of the stages' models: the `@champion` ones first."""
    from src.tracking import store

    if not store.tracking_enabled() or not _store_exists(store.tracking_uri()):
        return []
    import mlflow
    from mlflow.exceptions import MlflowException

    store.point_mlflow()
    client = mlflow.MlflowClient()
    found = []
    for stage in TRAINING_STAGES:
        name = f"{experiment}-{stage.name}"
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            continue
        if not versions:
            continue
        try:  # search results carry no aliases
            champion = str(client.get_model_version_by_alias(name, CHAMPION).version)
        except MlflowException:
            champion = None
        for v in sorted(versions, key=lambda v: int(v.version)):
            accuracy = _accuracy(v.tags.get("test_accuracy"))
            servable = v.tags.get("servable") == "true"
            why = v.tags.get("smoke", "") or ("" if servable else "not tagged servable")
            if str(v.version) == champion and servable:
                found.insert(
                    0,
                    Candidate(
                        f"models:/{name}@{CHAMPION}",
                        f"version {v.version}, {_about(accuracy)}",
                        accuracy,
                        True,
                    ),
                )
            found.append(
                Candidate(
                    f"models:/{name}/{v.version}",
                    f"{_about(accuracy)}{'' if servable else ', servable=false'}",
                    accuracy,
                    False,  # named by version: listed, never chosen
                    why,
                )
            )
    return found


def best(candidates: list[Candidate]) -> Candidate | None:
    servable = [c for c in candidates if c.servable]
    return max(servable, key=lambda c: c.test_accuracy or -1.0, default=None)


def choose(experiment: str, models_dir: Path) -> Candidate:
    """The best servable model that exists (registry first, then files); WeightsError
    after listing on stderr what exists when there is none."""
    registered = registry_versions(experiment)
    files = local_models(models_dir)
    chosen = best(registered) or best(files)
    if chosen is not None:
        return chosen
    lines = ["no servable model here. What exists:"]
    for c in registered + files:
        why = f" (smoke: {c.why_not})" if c.why_not else ""
        lines.append(f"  {c.model}: {c.about}{why}")
    if len(lines) == 1:
        where = os.path.relpath(models_dir)
        lines.append(f"  nothing: no registered model, no model file in {where}/")
    print("\n".join(lines), file=sys.stderr)
    example = next((c.model for c in registered + files), None) or os.path.relpath(
        models_dir / "baseline.pt"
    )
    raise WeightsError(
        f"no servable model to classify with; get one with {GET_ONE}, or name one with "
        f"--model (e.g. --model {example}, a smoke model: its answers are not results)"
    )
