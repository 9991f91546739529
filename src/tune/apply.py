"""Applying the best trial: its design as dotted `<base>.*` overrides of params.yaml,
written to reports/tune/<study>/best_params.yaml, and the `dvc exp run` command that
retrains the base stage with them (`python -m src.tune apply`)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from src.artifacts import atomic_write_bytes
from src.config import Params, flatten, load_params, load_raw, resolve_path
from src.tune.space import NOT_DESIGN
from src.tune.storage import TuneError, open_storage
from src.tune.trials import best_trial


def best_overrides(config: dict, base: str) -> dict[str, Any]:
    """Dotted `<base>.*` keys where the trial's config differs from params.yaml (profile
    full), leaving out budget and machine settings: the design, at the stage's budget."""
    reference = flatten(getattr(load_params(overrides={"profile": "full"}), base), base)
    trial = flatten(config, base)
    skip = {f"{base}.train.{key}" for key in NOT_DESIGN}
    return {k: v for k, v in trial.items() if k not in skip and reference.get(k) != v}


def _hydra(value: Any) -> str:
    """A value in the override syntax of `dvc exp run -S` (Hydra's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][\w.-]*", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value) if isinstance(value, float) else str(value)


def dvc_command(study_name: str, overrides: dict[str, Any], base: str) -> list[str]:
    command = ["dvc", "exp", "run", "-n", f"tuned-{slug(study_name)}"]
    if load_raw().get("profile", "full") != "full":
        command += ["-S", "profile=full"]
    for key, value in overrides.items():
        command += ["-S", f"{key}={_hydra(value)}"]
    return [*command, base]


def slug(name: str) -> str:
    """A study name fit for a directory and an experiment name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "study"


def write_best_params(
    study: optuna.Study, trial: FrozenTrial, base: str, report_dir: Path
) -> tuple[Path, list[str]]:
    """reports/tune/<study>/best_params.yaml: dotted keys, and the command using them."""
    config = trial.user_attrs["config"]
    overrides = best_overrides(config, base)
    command = dvc_command(study.study_name, overrides, base)
    train = config["train"]
    header = [
        f"# Best trial of Optuna study {study.study_name!r}: trial {trial.number}, "
        f"val_accuracy {trial.value:.4f}",
        f"# (trained {train['epochs']} epochs on {train['subset'] or 'all'} training images).",
        f"# {base}.* keys that differ from params.yaml; retrain the {base} stage with them:",
        f"#   {shlex.join(command)}",
    ]
    body = yaml.safe_dump(overrides, sort_keys=False, default_flow_style=None) if overrides else ""
    path = report_dir / "best_params.yaml"
    atomic_write_bytes(path, ("\n".join(header) + "\n" + body).encode())
    return path, command


def apply_best(params: Params, study_name: str, storage: str, run: bool = False) -> int:
    """`python -m src.tune apply`: write best_params.yaml, print (or run) the command."""
    ss = open_storage(storage)
    names = optuna.study.get_all_study_names(ss.storage)
    if study_name not in names:
        raise TuneError(f"no study {study_name!r} in {ss.display}; it holds {sorted(names)}")
    study = optuna.load_study(study_name=study_name, storage=ss.storage)
    trial = best_trial(study)
    if trial is None:
        raise TuneError(f"study {study_name!r} has no completed trial yet")
    base = study.user_attrs.get("base", "improved")
    report_dir = resolve_path(params.common.paths.reports) / "tune" / slug(study_name)
    path, command = write_best_params(study, trial, base, report_dir)
    print(f"# trial {trial.number}, val_accuracy {trial.value:.4f}; written to {path}")
    print(shlex.join(command))
    if not run:
        return 0
    return subprocess.run(command, cwd=resolve_path(".")).returncode
