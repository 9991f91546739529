"""The report's sections for one training stage (architecture, hyperparameters, learning
curves, the split table, its provenance checks) and task 3d; `src.report` assembles them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from src import plots
from src.config import flatten
from src.report_blocks import (
    REFERENCE,
    StageInfo,
    architecture_table,
    build_stage_model,
    figure_link,
    fmt_metric,
    fmt_value,
    format_frame,
    markdown_table,
    signed,
)

if TYPE_CHECKING:
    from src.report import ReportInputs, StageOutputs

# The final figures every training stage writes to metrics.json (best checkpoint, eval mode).
SPLIT_METRICS = {
    "train": ("final_train_loss", "final_train_accuracy"),
    "val": ("final_val_loss", "final_val_accuracy"),
    "test": ("test_loss", "test_accuracy"),
}
SPLIT_NAMES = {"train": "Training", "val": "Validation", "test": "Test"}


# --------------------------------------------------------------------------- checks


def pretrained_info(outputs: StageOutputs, run: dict | None) -> dict[str, Any]:
    """ResNet weights as the MLflow run's tags record them (the model file's config
    when the run is not in this store)."""
    tags = (run or {}).get("tags", {})
    if "pretrained" in tags:
        return {
            "weights": tags.get("weights", outputs.config.get("weights")),
            "pretrained": tags["pretrained"] == "true",
            "source": "MLflow run tags `weights`, `pretrained`",
        }
    weights = outputs.config.get("weights", "?")
    return {
        "weights": weights,
        "pretrained": weights != "none",
        "source": f"`weights` in the resolved config of {outputs.files['model']}",
    }


def agreement(outputs: StageOutputs, run: dict | None) -> str:
    """Do metrics.json, the model file and the MLflow run hold the same final figures?"""
    keys = [k for pair in SPLIT_METRICS.values() for k in pair]
    problems = []
    for k in keys:
        mine = outputs.metrics.get(k)
        other = outputs.model_metrics.get(k)
        if other is not None and mine is not None and not math.isclose(mine, other, rel_tol=1e-9):
            problems.append(f"model file {k} {other:.4f} ≠ {mine:.4f}")
    if run is None:
        status = "MLflow run not found (tracking off, or another store)"
    else:
        for k in keys:
            mine, logged = outputs.metrics.get(k), run["metrics"].get(k)
            if logged is None or mine is None or not math.isclose(mine, logged, rel_tol=1e-9):
                problems.append(f"MLflow {k} {fmt_metric(logged)} ≠ {fmt_metric(mine)}")
        status = "MLflow and model file agree"
    return "; ".join(problems) if problems else status


def budget_notes(stage: str, config: dict) -> list[str]:
    """Why a stage's numbers may not be comparable with the course's."""
    train = config.get("train", {})
    notes = []
    if train.get("dry_run"):
        notes.append(f"`{stage}.train.dry_run` is on: a few batches only")
    if train.get("subset"):
        notes.append(f"trained on a subset of {train['subset']:,} images (`{stage}.train.subset`)")
    return notes


# --------------------------------------------------------------------------- sections


def stage_section(info: StageInfo, inputs: ReportInputs, runs: dict, figures: dict) -> list[str]:
    t = f"Task {info.task}"
    lines = [f"## {t}: {info.title}", ""]
    outputs = inputs.stages.get(info.name)
    if outputs is None:
        missing = ", ".join(f"`{f}`" for f in inputs.missing.get(info.name, []))
        return lines + [f"Not available: {missing} missing. Run `dvc repro {info.name}`.", ""]
    m, run = outputs.metrics, runs.get(info.name)
    reference = REFERENCE.get(info.name, {})
    lines += [
        f"Stage `{info.name}` (`dvc repro {info.name}`): `{outputs.files['metrics']}`, "
        f"`{outputs.files['history']}`, `{outputs.files['model']}`; "
        f"MLflow run `{m.get('mlflow_run_id') or '—'}`.",
        "",
    ]
    if info.kind == "resnet":
        p = pretrained_info(outputs, run)
        lines += [
            f"Weights: `{p['weights']}`, "
            + ("**pretrained**" if p["pretrained"] else "**not pretrained** (random init)")
            + f" (from {p['source']}).",
            "",
        ]

    model, image_size = build_stage_model(info.name, outputs.config)
    arch = architecture_table(model, image_size)
    total = int(arch["Parameters"].sum())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines += [
        f"### {t}: architecture",
        "",
        f"Input 3×{image_size}×{image_size}; output shapes are C×H×W per image.",
        "",
        markdown_table(format_frame(arch, {"Parameters": fmt_value}), right=["Parameters"]),
        "",
        f"Total {total:,} parameters"
        + (f", {trainable:,} trainable" if trainable != total else "")
        + (
            f"; course report: {reference['n_parameters']:,}."
            if "n_parameters" in reference
            else "."
        ),
        "",
    ]

    hyper = pd.DataFrame(
        [{"Key": f"`{k}`", "Value": fmt_value(v)} for k, v in flatten(outputs.config).items()]
    )
    lines += [
        f"### {t}: hyperparameters",
        "",
        f"The resolved config stored in `{outputs.files['model']}` (params.yaml section "
        f"`{info.name}`, profile applied):",
        "",
        markdown_table(hyper),
        "",
    ]

    name = f"{info.name}_learning_curves.png"
    history = outputs.history.to_dict("records")
    figures[name] = plots.learning_curves(
        history,
        f"Task {info.task} ({info.name})",
        reference=reference.get("test_accuracy"),
        reference_label="Course report test accuracy",
    )
    stop = m.get("early_stop_step")
    stopped = f"early stop at step {stop}" if stop else "no early stop"
    lines += [
        f"### {t}: learning curves",
        "",
        figure_link(name, f"{info.name} learning curves"),
        "",
        f"{len(history)} validations over {fmt_value(m.get('epochs_run'))} epoch(s) "
        f"({fmt_value(m.get('steps'))} steps, {stopped}; best checkpoint at step "
        f"{fmt_value(m.get('best_step'))}); {fmt_value(m.get('train_time_s'))} s of training "
        f"at {fmt_value(m.get('train_images_per_s', m.get('images_per_s')))} images/s.",
        "",
    ]

    rows = []
    for split, (loss_key, acc_key) in SPLIT_METRICS.items():
        ref = reference.get("test_accuracy") if split == "test" else None
        rows.append(
            {
                "Split": SPLIT_NAMES[split],
                "Loss": fmt_metric(m.get(loss_key)),
                "Accuracy": fmt_metric(m.get(acc_key)),
                "Course report accuracy": "—" if ref is None else f"{ref:.3f}",
                "Difference": signed(m[acc_key] - ref) if ref is not None else "—",
            }
        )
    lines += [
        f"### {t}: accuracy and loss",
        "",
        markdown_table(
            pd.DataFrame(rows), right=["Loss", "Accuracy", "Course report accuracy", "Difference"]
        ),
        "",
    ]
    notes = budget_notes(info.name, outputs.config)
    if notes:
        lines += [f"> Not comparable with the course: {'; '.join(notes)}.", ""]
    return lines


def task3d_section(inputs: ReportInputs, figures: dict) -> list[str]:
    lines = ["### Task 3d: before and after", ""]
    before, after = inputs.stages.get("baseline"), inputs.stages.get("improved")
    if before is None or after is None:
        return lines + ["Needs both the `baseline` and the `improved` stage.", ""]
    name = "task3d_loss_comparison.png"
    figures[name] = plots.compare_losses(
        {
            "baseline (task 2)": before.history.to_dict("records"),
            "improved (task 3)": after.history.to_dict("records"),
        },
        "Task 3d: training and validation loss, before and after",
    )
    b, a = before.metrics, after.metrics
    return lines + [
        figure_link(name, "Training and validation loss of the baseline and the improved network"),
        "",
        f"Final validation loss {fmt_metric(b.get('final_val_loss'))} → "
        f"{fmt_metric(a.get('final_val_loss'))}; test accuracy "
        f"{fmt_metric(b.get('test_accuracy'))} → {fmt_metric(a.get('test_accuracy'))}.",
        "",
    ]
