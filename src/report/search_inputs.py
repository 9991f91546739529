"""What the report reads of the tuning studies, from the files `src.tune` and
`tools.fidelity` commit under reports/tune/<study>/ (no Optuna, no MLflow here):

    best_params.yaml   a comment header naming the best trial and its score, then its
                       `knobs:` mapping (what the `tuned` stage trains, src.config.design)
    trials.csv         one row per trial: number, state, val_accuracy, epochs, subset,
                       validations, seconds, then one column per knob
    fidelity.csv       the top trials retrained at full size (`python -m tools.fidelity`)
    *.png              the study's figures (optimisation history, parameter importances ...)

    load_tune(tune_dir, root)      -> [Study], one per <study>/best_params.yaml
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from src.config.design import knobs_into, read_best_knobs
from src.runtime.errors import ConfigError, ReportInputError

TUNE_PARAMS = "best_params.yaml"  # src.tune writes it to Layout.tune_reports/<study>/
TRIALS_FILE = "trials.csv"
FIDELITY_FILE = "fidelity.csv"
FIDELITY_COMMAND = "python -m tools.fidelity"
# Optuna's trial states as trials.csv writes them, in the order the report counts them
TRIAL_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
# The study's own figures in the order the report shows them; any other PNG follows.
FIGURE_ORDER = (
    "optimization_history",
    "param_importances",
    "intermediate_values",
    "parallel_coordinate",
)


@dataclass(frozen=True)
class Study:
    name: str  # the folder's name: the study's slug
    file: str  # best_params.yaml, relative to the root
    header: list[str]  # its comment lines, without the '#'
    best_params: dict  # the YAML: {"knobs": {...}}
    figures: list[str]  # PNGs relative to the root, FIGURE_ORDER first
    trials_file: str
    trials: pd.DataFrame | None  # None: no trials.csv
    fidelity_file: str
    fidelity: pd.DataFrame | None = None  # None: no fidelity.csv
    knobs: dict = field(default_factory=dict)  # best_params["knobs"], {} without it


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# The columns the report reads of each table (src.tune and tools.fidelity write more).
TRIALS_COLUMNS = ("number", "state", "val_accuracy", "epochs", "subset", "seconds")
FIDELITY_COLUMNS = (
    "name",
    "study_rank",
    "study_val_accuracy",
    "full_rank",
    "final_val_accuracy",
    "test_accuracy",
)


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame | None:
    """The table; None without the file; a ReportInputError naming the columns it lacks."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"{path}: unreadable ({exc})") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportInputError(f"{path}: no column {', '.join(missing)}")
    return frame


def _figure_key(path: Path) -> tuple[int, str]:
    order = FIGURE_ORDER.index(path.stem) if path.stem in FIGURE_ORDER else len(FIGURE_ORDER)
    return order, path.name


def load_tune(tune_dir: Path, root: Path) -> list[Study]:
    """Each tuning study under `tune_dir` that has a best_params.yaml (a comment header
    naming the best trial and its validation accuracy, then its `knobs:` mapping), with its
    trials.csv, fidelity.csv and figures where they exist. An unreadable file is a
    ReportInputError."""
    import yaml

    studies = []
    for path in sorted(tune_dir.glob(f"*/{TUNE_PARAMS}")):
        try:
            text = path.read_text()
            best_params = yaml.safe_load(text) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ReportInputError(f"{path}: unreadable ({exc})") from exc
        folder = path.parent
        knobs = best_params.get("knobs") if isinstance(best_params, dict) else None
        studies.append(
            Study(
                name=folder.name,
                file=_relative(path, root),
                header=[ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("#")],
                best_params=best_params if isinstance(best_params, dict) else {},
                figures=[_relative(f, root) for f in sorted(folder.glob("*.png"), key=_figure_key)],
                trials_file=_relative(folder / TRIALS_FILE, root),
                trials=_read_csv(folder / TRIALS_FILE, TRIALS_COLUMNS),
                fidelity_file=_relative(folder / FIDELITY_FILE, root),
                fidelity=_read_csv(folder / FIDELITY_FILE, FIDELITY_COLUMNS),
                knobs=knobs if isinstance(knobs, dict) else {},
            )
        )
    return studies


def derived_locked_config(root: Path, recorded: dict, deps: list) -> dict | None:
    """The `tuned` stage's config as `dvc.lock` records what trained it: the `tune.base`
    stage's params section there with the knobs of the best_params.yaml the lock lists
    as a dep, when that file's md5 is the lock's (else None: another study result)."""
    section = recorded.get(recorded.get("tune.base"))
    if not isinstance(section, dict):
        return None
    for dep in deps:
        path = root / str(dep.get("path", "")) if isinstance(dep, dict) else None
        if path is None or path.name != TUNE_PARAMS:
            continue
        if not path.is_file() or hashlib.md5(path.read_bytes()).hexdigest() != dep.get("md5"):
            return None
        try:
            return knobs_into(section, read_best_knobs(path) or {})
        except ConfigError as exc:
            raise ReportInputError(str(exc)) from exc
    return None
