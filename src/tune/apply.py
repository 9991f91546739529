"""Applying the best trial: its knobs put into params.yaml's own design of the base stage,
as dotted `<base>.*` overrides written to reports/tune/<study>/best_params.yaml, and the
`dvc exp run` command that retrains the base stage with them (`python -m src.tune apply`).

A study may have run on a profile's smaller base (`--profile quick`: a narrow network, a
short budget). What carries over is the knobs (width multiplier, blocks, lr, ...), not
the profile's overrides: the retrain command is the knobs on the full design, at the
stage's own budget, and the file says which profile the study ran under.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from src.artifacts import atomic_write_bytes
from src.config.design import BEST_PARAMS, study_slug
from src.config.layout import Layout, resolve_path
from src.config.load import load_params
from src.config.overrides import exp_run_command
from src.config.schema import Params
from src.config.typed import flatten, to_dict
from src.tune.space import NOT_DESIGN, BudgetConfig, trial_section
from src.tune.storage import TuneError, open_storage
from src.tune.trials import best_trial

PROFILE_ATTR = "profile"  # study user attribute: the params profile the search ran under
HAND_TUNED_ATTR = "hand_tuned"  # trial user attribute of the enqueued hand-tuned design


def is_hand_tuned(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Whether `trial` is params.yaml's own design: the enqueued hand-tuned trial, or a
    trial with its knob values (a rerun of it). Its knobs are the design clipped into the
    search space (weight_decay 0 runs as the space's low end), so they would propose
    changes that are only the clipping."""
    if trial.user_attrs.get(HAND_TUNED_ATTR):
        return True
    hand = study.get_trials(deepcopy=False)
    return any(t.user_attrs.get(HAND_TUNED_ATTR) and t.params == trial.params for t in hand)


def best_overrides(config: dict, base: str) -> dict[str, Any]:
    """Dotted `<base>.*` keys where `config` (a base-stage config) differs from params.yaml,
    leaving out budget and machine settings: the design, at the stage's budget."""
    reference = flatten(getattr(load_params(), base), base)
    trial = flatten(config, base)
    skip = {f"{base}.train.{key}" for key in NOT_DESIGN}
    return {k: v for k, v in trial.items() if k not in skip and reference.get(k) != v}


def design_config(knobs: dict[str, Any], base: str) -> dict:
    """The knobs put into params.yaml's own `base` design (no profile, no trial budget)."""
    return to_dict(trial_section(getattr(load_params(), base), knobs, BudgetConfig()))


def dvc_command(study_name: str, overrides: dict[str, Any], base: str) -> list[str]:
    """`dvc exp run -n tuned-<study> -S ... <base>`: retrain only the base stage."""
    return exp_run_command(f"tuned-{study_slug(study_name)}", overrides, targets=[base])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_best_params(
    study: optuna.Study, trial: FrozenTrial, base: str, report_dir: Path
) -> tuple[Path, list[str]]:
    """reports/tune/<study>/best_params.yaml: the best trial's knobs on params.yaml's own
    `base` design as dotted keys, and the command retraining the stage with them (no keys
    and no command when the best trial is the hand-tuned design itself)."""
    hand_tuned = is_hand_tuned(study, trial)
    overrides = {} if hand_tuned else best_overrides(design_config(trial.params, base), base)
    command = dvc_command(study.study_name, overrides, base) if overrides else []
    profile = study.user_attrs.get(PROFILE_ATTR, "not recorded")
    train = trial.user_attrs.get("config", {}).get("train", {})
    knobs = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    header = [
        f"# Best trial of Optuna study {study.study_name!r}: trial {trial.number}, "
        f"val_accuracy {trial.value:.4f}; params profile: {profile}",
        f"# (scored after {train.get('epochs', '?')} epochs on "
        f"{train.get('subset') or 'all'} training images).",
        f"# Its knobs: {knobs}.",
    ]
    if hand_tuned:
        header.append(
            f"# It is the hand-tuned design, params.yaml's own {base} (enqueued as the first "
            "trial, its knobs clipped into the search space): the search found nothing "
            "better; nothing to retrain (knobs: {}, the design as params.yaml has it)."
        )
    header.append(
        f"# `dvc repro tuned` trains params.yaml's {base} design with these knobs, at the "
        f"{base} stage's own budget (src.config.design)."
    )
    if command:
        changes = ", ".join(f"{k}={_short(v)}" for k, v in overrides.items())
        header += [
            f"# On params.yaml's {base} design they change {changes}; the same as an "
            f"experiment of the {base} stage:",
            f"#   {shlex.join(command)}",
        ]
    if profile != "full":
        header.insert(
            4,
            f"# The study scored the knobs on the {profile} profile's {base} network and "
            "budget: the ranking may not carry over to the full design.",
        )
    knobs = {} if hand_tuned else dict(trial.params)  # the hand design: as params.yaml has it
    body = yaml.safe_dump({"knobs": knobs}, sort_keys=False)
    path = report_dir / BEST_PARAMS
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
    report_dir = Layout().tune_reports / study_slug(study_name)
    path, command = write_best_params(study, trial, base, report_dir)
    profile = study.user_attrs.get(PROFILE_ATTR, "not recorded")
    if not command:
        won = "the hand-tuned design" if is_hand_tuned(study, trial) else "its knobs"
        print(
            f"# trial {trial.number}, val_accuracy {trial.value:.4f} (study ran under params "
            f"profile {profile}) is {won}: params.yaml's own {base} design, nothing to "
            f"apply or retrain; written to {path}"
        )
        return 0
    print(
        f"# trial {trial.number}, val_accuracy {trial.value:.4f} (study ran under params "
        f"profile {profile}); its knobs on params.yaml's {base} design, written to {path}"
    )
    print(shlex.join(command))
    if not run:
        return 0
    return subprocess.run(command, cwd=resolve_path(".")).returncode
