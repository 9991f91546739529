"""The report's overview sections: the banner, where the numbers come from, the summary
across stages and the student's text places."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from src.config.stages import TRAINING_STAGES
from src.report import figures as plots
from src.report.formats import (
    figure_link,
    fmt_metric,
    fmt_value,
    format_frame,
    markdown_table,
    signed,
)
from src.report.inputs import DISCUSSION, REFERENCE, REFERENCE_SOURCE, ReportInputs
from src.report.network import n_parameters, stage_network
from src.report.sections.stage import (
    agreement,
    pretrained_info,
    seeds_cell,
)


def summary_frame(inputs: ReportInputs) -> pd.DataFrame:
    """The summary table's numbers: one row per stage that ran (pandas, unformatted)."""
    rows = []
    for info in TRAINING_STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is None:
            continue
        m = outputs.metrics
        model = stage_network(outputs.config, info.name)[0] if outputs.config else None
        reference = REFERENCE.get(info.name, {}).get("test_accuracy")
        rows.append(
            {
                "Stage": info.name,
                "Task": info.task,
                "Parameters": n_parameters(model) if model else None,
                "Trainable": (n_parameters(model, trainable_only=True) if model else None),
                "Training accuracy": m.get("final_train_accuracy"),
                "Validation accuracy": m.get("final_val_accuracy"),
                "Test accuracy": m.get("test_accuracy"),
                # a seed record is of full-size runs: beside a smoke run it would mislead
                "Test accuracy over seeds": seeds_cell(
                    None if outputs.smoke else inputs.seeds.get(info.name)
                ),
                "Course test accuracy": reference,
                "Test − course": (
                    m["test_accuracy"] - reference
                    if reference is not None and m.get("test_accuracy") is not None
                    else None
                ),
                "Test loss": m.get("test_loss"),
                "Epochs": m.get("epochs_run"),
                "Training time (s)": m.get("train_time_s"),
            }
        )
    return pd.DataFrame(rows)


SUMMARY_FORMATS: dict[str, Callable[[Any], str]] = {
    "Stage": lambda s: f"`{s}`",
    "Parameters": fmt_value,
    "Trainable": fmt_value,
    "Training accuracy": fmt_metric,
    "Validation accuracy": fmt_metric,
    "Test accuracy": fmt_metric,
    "Test accuracy over seeds": str,
    # pandas holds a missing number of a float column as NaN, not None
    "Course test accuracy": lambda v: "—" if v is None or pd.isna(v) else f"{v:.3f}",
    "Test − course": lambda v: "—" if v is None or pd.isna(v) else signed(v),
    "Test loss": fmt_metric,
    "Epochs": fmt_value,
    "Training time (s)": lambda v: "—" if v is None or pd.isna(v) else f"{v:,.0f}",
}


def sources_section(inputs: ReportInputs, runs: dict[str, dict | None]) -> list[str]:
    lines = ["## Where the numbers come from", ""]
    m = inputs.manifest
    if m is None:
        lines.append(f"Data: `{inputs.manifest_file}` is missing (run `dvc repro download`).")
    else:
        src, counts, split = m.get("source", {}), m.get("counts", {}), m.get("split", {})
        digest = src.get("sha256", "")
        lines.append(
            f"Data: `{inputs.manifest_file}`: source kind `{src.get('kind', '?')}`"
            + (f", sha256 `{digest[:16]}…`" if digest else "")
            + f"; {fmt_value(counts.get('train'))} training, {fmt_value(counts.get('val'))} "
            f"validation and {fmt_value(counts.get('test'))} test images; validation split "
            f"drawn once with seed {split.get('seed', '?')} "
            f"(fraction {fmt_value(split.get('val_fraction'))})."
        )
        if inputs.download and inputs.download.get("mlflow_run_id"):
            lines += ["", f"Data stage MLflow run: `{inputs.download['mlflow_run_id']}`."]
        if not str(src.get("kind", "")).startswith("official"):
            lines += [
                "",
                "> The data is an image folder, not the official `cifar-10-python.tar.gz`. "
                "If its images were re-encoded lossily (JPEG), accuracies are not strictly "
                "comparable with the course's.",
            ]
    lines += [
        "",
        "Every training figure below is read from the stage's `metrics.json` (what "
        "`dvc metrics show` prints); hyperparameters from the resolved config stored in its "
        "model file (without it, from `dvc.lock` when the lock's hashes match the stage's "
        "`metrics.json` and `history.csv`); architectures are rebuilt from that config. "
        "Final training, validation and test figures come from the best checkpoint (lowest "
        "validation loss) in eval mode. Losses and accuracies have 4 decimals; the course's "
        "values are quoted as its report gives them (3 decimals).",
        "",
    ]
    rows = []
    for info in TRAINING_STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is None:
            rows.append([f"`{info.name}`", info.task, "not run here", "—", "—", "—", "—"])
            continue
        run = runs.get(info.name)
        tags = (run or {}).get("tags", {})
        commit = tags.get("git_commit", "")
        commit = f"`{commit[:10]}`" + (" (dirty)" if tags.get("git_dirty") == "true" else "")
        if info.kind == "transfer":
            p = pretrained_info(outputs, run)
            weights = f"`{p['weights']}`: " + {True: "pretrained", False: "NOT pretrained"}.get(
                p["pretrained"], "unknown"
            )
        else:
            weights = "trained from scratch"
        rows.append(
            [
                f"`{info.name}`",
                info.task,
                f"`{outputs.files['metrics']}`",
                f"`{outputs.metrics.get('mlflow_run_id') or '—'}`"
                + (f" ({run['status']})" if run else ""),
                commit if tags else "—",
                weights,
                agreement(outputs, run),
            ]
        )
    columns = ["Stage", "Task", "Metrics file", "MLflow run", "Git commit", "Weights", "Checks"]
    lines += [markdown_table(pd.DataFrame(rows, columns=columns)), ""]
    for study in inputs.tune:
        lines.append(f"Tuning: `{study.file}` (see the `tuned` stage's search section).")
    lines.append(f"Course values: {REFERENCE_SOURCE} (`src/report/inputs.py`, `REFERENCE`).")
    return lines + [""]


def summary_section(inputs: ReportInputs, runs: dict, figures: dict) -> list[str]:
    lines = ["## Summary", ""]
    frame = summary_frame(inputs)
    if frame.empty:
        return lines + ["No training stage has run yet.", ""]
    numeric = [c for c in frame.columns if c not in ("Stage", "Task")]
    lines += [markdown_table(format_frame(frame, SUMMARY_FORMATS), right=numeric), ""]
    accuracies = {
        row["Stage"]: {
            "train": row["Training accuracy"],
            "val": row["Validation accuracy"],
            "test": row["Test accuracy"],
        }
        for _, row in frame.iterrows()
    }
    references = {s: REFERENCE[s]["test_accuracy"] for s in accuracies if s in REFERENCE}
    figures["summary_accuracy.png"] = plots.compare_accuracy(
        accuracies,
        references,
        "Accuracy of the best checkpoint per stage",
        reference_label="Course report test accuracy",
    )
    lines += [figure_link("summary_accuracy.png", "Accuracy per stage and the course's values"), ""]
    notes = []
    for info in TRAINING_STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is None:
            notes.append(f"`{info.name}` has not run here (its section says what it costs).")
        elif outputs.smoke:
            notes.append(f"`{info.name}`: not a result ({'; '.join(outputs.smoke)}).")
    if notes:
        lines += ["Caveats:", "", *[f"- {n}" for n in notes], ""]
    return lines


def discussion_place(
    key: str, inputs: ReportInputs, command: str = "dvc repro report"
) -> list[str]:
    """The marked place for the student's text `key` (3c, 3f, 4a), filled from
    reports/discussion.md, so regenerating the report (`command`) keeps it."""
    where = f"`{inputs.discussion_file}`, under `## {key}`"
    lines = [
        f"### Task {key}: {DISCUSSION[key]} (discussion)",
        "",
        f"<!-- discussion {key} begins: the text comes from {inputs.discussion_file}; edit "
        f"it there, then `{command}` -->",
        "",
    ]
    text = (inputs.discussion or {}).get(key, "")
    if text:
        lines.append(text)
    elif inputs.discussion is None:
        lines.append(f"> *Not available: `{inputs.discussion_file}` does not exist.*")
    else:
        lines.append(f"> *Not written yet: write it in {where}; then run `{command}`.*")
    return [*lines, "", f"<!-- discussion {key} ends -->", ""]


def banner(inputs: ReportInputs) -> list[str]:
    """What a reader must know before any number: stages that have not run, stages
    rendered without their model file, and smoke runs (profiles.smoke_reasons: the same
    reasons that keep a version from being served)."""
    notes = []
    absent = [info for info in TRAINING_STAGES if inputs.stages.get(info.name) is None]
    if absent:
        names = ", ".join(f"`{i.name}` (task {i.task})" for i in absent)
        notes.append(
            f"**Partial report.** Not run here: {names}. Each one's section says why, what "
            "running it costs and the command."
        )
    present = [o for o in inputs.stages.values() if o is not None]
    without = [o for o in present if not o.has_model]
    if without:
        names = ", ".join(f"`{o.files['model']}`" for o in without)
        notes.append(
            f"**Without model files.** Not here: {names} (DVC-cached, not in git). Those "
            "stages are rendered from their git-tracked `metrics.json` and `history.csv`; "
            "their sections say what needs the model file and how to get it."
        )
    smoke = [o for o in present if o.smoke]
    if smoke:
        why = "; ".join(f"`{o.stage}`: {', '.join(o.smoke)}" for o in smoke)
        notes.append(
            f"**Smoke run, not results.** {why}. These numbers show that the pipeline runs; "
            "they are not comparable with the course's."
        )
    lines: list[str] = []
    for note in notes:
        lines += [f"> {note}", ">"]
    return lines[:-1] + [""] if lines else []
