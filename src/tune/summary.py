"""What a study shows: one line per trial, and when a worker is done, Optuna's figures,
the trial counts and the best configuration, in files, the parent MLflow run and stdout."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from src.artifacts import atomic_write_bytes
from src.tracking.runs import Run, write_figure
from src.tune.apply import write_best_params
from src.tune.trials import best_trial, trials_done

FIGURES = (
    "optimization_history",
    "param_importances",
    "parallel_coordinate",
    "intermediate_values",
)


def describe(trial: FrozenTrial) -> str:
    knobs = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        outcome = f"val_accuracy {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values
        outcome = f"at validation {max(last)}" if last else ""
    else:
        outcome = trial.user_attrs.get("fail_reason", "")
    return f"[tune] trial {trial.number} {trial.state.name} {outcome} ({knobs})"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summarise(
    study: optuna.Study,
    parent: Run,
    n_trials: int,
    *,
    base: str,
    report_dir: Path,
    storage: str,
) -> None:
    """Figures, counts and the best configuration (retraining stage `base`): files under
    `report_dir`, the parent run, stdout. `storage` is the storage as shown to users."""
    counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED)}
    counts["fail"] = 0
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished():
            counts[t.state.name.lower()] += 1
    parent.log_metrics({f"n_{k}": v for k, v in counts.items()})
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        print("[tune] other workers are still running trials: the last one draws the figures")
    else:
        for path in write_figures(study, report_dir).values():
            parent.log_artifact(path, "figures")
    table = write_trial_table(study, report_dir)
    parent.log_artifact(table)
    best = write_best(study, base, report_dir)
    print(
        f"[tune] study {study.study_name!r}: {trials_done(study)}/{n_trials} trials done "
        f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed)"
    )
    if best is None:
        print("[tune] no completed trial yet")
        return
    trial, path, command = best
    parent.set_tags({f"best.{k}": v for k, v in trial.params.items()})
    parent.set_tags({"best.trial": trial.number, "best.value": f"{trial.value:.4f}"})
    parent.log_artifact(path)
    print(f"[tune] best: trial {trial.number}, val_accuracy {trial.value:.4f}")
    print(f"[tune] best config: {path}")
    if command:
        print(f"[tune] retrain the {base} stage with it:\n  {shlex.join(command)}")
    else:
        print(f"[tune] it is params.yaml's own {base} design: nothing to retrain")
    print(f"[tune] dashboard: optuna-dashboard {shlex.quote(storage)}")


TABLE = "trials.csv"
TABLE_COLUMNS = ("number", "state", "val_accuracy", "epochs", "subset", "validations", "seconds")


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial of the study, in trial order: its state and score (best
    validation accuracy, as far as a pruned trial got), its budget (epochs,
    training images, validations run) and wall seconds, then its knobs."""
    knobs = sorted({k for t in study.get_trials(deepcopy=False) for k in t.params})
    rows = []
    for t in study.get_trials(deepcopy=False):
        train = t.user_attrs.get("config", {}).get("train", {})
        seen = t.intermediate_values
        score = t.value if t.state == TrialState.COMPLETE else max(seen.values(), default=None)
        seconds = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "val_accuracy": score,
                "epochs": train.get("epochs"),
                "subset": train.get("subset"),
                "validations": len(seen),
                "seconds": None if seconds is None else round(seconds, 1),
                **{k: t.params.get(k) for k in knobs},
            }
        )
    return rows


def write_trial_table(study: optuna.Study, out_dir: Path) -> Path:
    """reports/tune/<study>/trials.csv: `trial_rows`, every trial once."""
    import csv
    import io

    rows = trial_rows(study)
    columns = list(rows[0]) if rows else list(TABLE_COLUMNS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    path = out_dir / TABLE
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def write_figures(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """Optuna's matplotlib figures as PNG (plotly would need kaleido); skips the ones
    the study cannot draw yet (importances need two completed trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    written = {}
    for name in FIGURES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(vis, f"plot_{name}")(study)
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            written[name] = write_figure(figure, out_dir / f"{name}.png")
        except Exception as exc:  # too few trials for this figure
            print(f"[tune] figure {name} skipped: {str(exc).splitlines()[0] if str(exc) else exc}")
            plt.close("all")
    return written


def write_best(
    study: optuna.Study, base: str, report_dir: Path
) -> tuple[FrozenTrial, Path, list[str]] | None:
    """best_params.yaml (and the command that retrains `base` with it) for the best
    trial so far; None before any trial completed."""
    trial = best_trial(study)
    if trial is None:
        return None
    path, command = write_best_params(study, trial, study.user_attrs.get("base", base), report_dir)
    return trial, path, command
