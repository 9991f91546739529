"""The `report` stage's worker: `reports/report.md` and its figures, built from what the
other stages wrote.

    load_inputs(root, params)      read every stage's outputs (metrics.json, history.csv,
                                   the resolved config in models/<stage>.pt), the data
                                   manifest and, when present, the tuning study's best result
    render_report(inputs, runs)    -> Report: markdown, matplotlib figures, MLflow tags

`render_report` is pure: MLflow run summaries (`runs`) are fetched by the caller
through `src.tracking`, and nothing is written here. Task 1 is computed by
`src.theory`; architectures are rebuilt from each stage's resolved config (random
init, never the weights). Course values live in one place, `REFERENCE`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src import artifacts, plots, theory
from src.config import CNNStageConfig, Params, ResNetConfig, build, flatten, to_dict
from src.data import MANIFEST
from src.errors import ReportInputError, WeightsError

# The course report these stages reproduce: the values a reviewer compares against.
REFERENCE_SOURCE = "the TDT4265 assignment 3 course report (tasks 2, 3 and 4a)"
REFERENCE: dict[str, dict[str, float | int]] = {
    "baseline": {"test_accuracy": 0.756, "n_parameters": 390_410},
    "improved": {"test_accuracy": 0.811},
    "resnet": {"test_accuracy": 0.889},
}

REPORT_FILE = "report.md"  # under common.paths.reports
FIGURE_DIR = "report"  # figures, beside report.md (links in it are relative)
TUNE_DIR = "tune"  # src.tune writes tune/<study>/best_params.yaml there; optional
TUNE_PARAMS = "best_params.yaml"

# The final figures every training stage writes to metrics.json (best checkpoint, eval mode).
SPLIT_METRICS = {
    "train": ("final_train_loss", "final_train_accuracy"),
    "val": ("final_val_loss", "final_val_accuracy"),
    "test": ("test_loss", "test_accuracy"),
}
SPLIT_NAMES = {"train": "Training", "val": "Validation", "test": "Test"}


@dataclass(frozen=True)
class StageInfo:
    name: str
    task: str
    title: str
    kind: str  # "cnn" (build_cnn) or "resnet" (build_resnet)


STAGES = (
    StageInfo("baseline", "2", "baseline CNN", "cnn"),
    StageInfo("improved", "3", "improved CNN", "cnn"),
    StageInfo("resnet", "4a", "ResNet18 transfer learning", "resnet"),
)
STAGE_INFO = {s.name: s for s in STAGES}


@dataclass(frozen=True)
class StageOutputs:
    stage: str
    metrics: dict
    history: pd.DataFrame  # one row per validation (step, epoch, train_loss, ...)
    config: dict  # the resolved config stored in the model file: what trained it
    model_metrics: dict  # the final figures stored in the model file
    files: dict[str, str]  # "metrics" | "history" | "model" -> path relative to the root


@dataclass(frozen=True)
class ReportInputs:
    stages: dict[str, StageOutputs | None]  # None: missing (only with allow_missing)
    missing: dict[str, list[str]]  # stage -> missing files, relative to the root
    manifest: dict | None
    manifest_file: str
    download: dict | None  # reports/download/metrics.json (the data stage's run id)
    tune: list[dict]  # per study: {"file", "header", "best_params", "figures"}; [] if none
    baseline_params: dict  # params.yaml's `baseline` section: task 1f before the stage runs
    tune_dir: str = f"reports/{TUNE_DIR}"  # where tuning results would be


@dataclass
class Report:
    markdown: str
    figures: dict[str, Any] = field(default_factory=dict)  # file name -> matplotlib figure
    tags: dict[str, str] = field(default_factory=dict)  # for the report's MLflow run


# --------------------------------------------------------------------------- reading


def _under(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"{path}: unreadable ({exc})") from exc


def _read_model_file(path: Path) -> dict:
    """The model file's config and metrics; tensors are memory-mapped, never used."""
    try:
        payload = artifacts.read_model_file(path, mmap=True)
    except WeightsError as exc:
        raise ReportInputError(str(exc)) from exc
    if "config" not in payload:
        raise ReportInputError(f"{path}: no resolved 'config' in this model file")
    links = ("stage", "mlflow_run_id", "history_sha256")
    return {
        "config": payload["config"],
        "metrics": payload.get("metrics") or {},
        **{k: payload[k] for k in links if k in payload},
    }


def check_outputs_belong_together(
    stage: str, files: dict[str, Path], metrics: dict, model: dict, root: Path
) -> None:
    """ReportInputError when the stage's model file, metrics.json and history.csv come
    from different runs (a kill while the stage wrote them). The model file carries
    its stage, the final figures and MLflow run id written to metrics.json, and the
    sha256 of history.csv; files of older versions lack the last two, so only what
    is there is compared."""
    problems = []
    if model.get("stage", stage) != stage:
        problems.append(f"the model file is of stage {model['stage']!r}")
    if "mlflow_run_id" in model and model["mlflow_run_id"] != metrics.get("mlflow_run_id"):
        problems.append(
            f"MLflow run {model['mlflow_run_id']} in the model file, "
            f"{metrics.get('mlflow_run_id')} in metrics.json"
        )
    for key in (k for pair in SPLIT_METRICS.values() for k in pair):
        mine, theirs = metrics.get(key), model["metrics"].get(key)
        if mine is None or theirs is None or not math.isclose(mine, theirs, rel_tol=1e-9):
            problems.append(f"{key} {theirs} in the model file, {mine} in metrics.json")
    if model.get("history_sha256"):
        import hashlib

        digest = hashlib.sha256(files["history"].read_bytes()).hexdigest()
        if digest != model["history_sha256"]:
            problems.append("history.csv is not the one the model file was written with")
    if problems:
        names = ", ".join(_relative(p, root) for p in files.values())
        raise ReportInputError(
            f"{stage}: {names} do not belong to one run ({'; '.join(problems)}); the stage "
            f"was stopped while writing them. Rerun `dvc repro {stage}`."
        )


def load_inputs(root: Path, params: Params, *, allow_missing: bool = False) -> ReportInputs:
    """Read every stage's outputs under `root`.

    A missing output raises ReportInputError naming each missing file and the
    `dvc repro` that makes it; with `allow_missing` the stage is reported as not run.
    """
    root = Path(root)
    paths = params.common.paths
    missing: dict[str, list[str]] = {}
    manifest_path = _under(root, paths.data) / MANIFEST
    if not manifest_path.is_file():
        missing["download"] = [_relative(manifest_path, root)]
    for info in STAGES:
        files = artifacts.StagePaths.for_stage(params, info.name, root).linked().values()
        absent = [_relative(p, root) for p in files if not p.is_file()]
        if absent:
            missing[info.name] = absent
    if missing and not allow_missing:
        lines = [
            f"  {stage}: {', '.join(files)} (run `dvc repro {stage}`)"
            for stage, files in missing.items()
        ]
        raise ReportInputError(
            "the report needs stage outputs that do not exist:\n" + "\n".join(lines)
        )

    stages: dict[str, StageOutputs | None] = {}
    for info in STAGES:
        if info.name in missing:
            stages[info.name] = None
            continue
        files = artifacts.StagePaths.for_stage(params, info.name, root).linked()
        model = _read_model_file(files["model"])
        metrics = _read_json(files["metrics"])
        try:
            history = artifacts.read_history(files["history"])
        except (OSError, ValueError) as exc:
            raise ReportInputError(f"{files['history']}: unreadable ({exc})") from exc
        check_outputs_belong_together(info.name, files, metrics, model, root)
        stages[info.name] = StageOutputs(
            stage=info.name,
            metrics=metrics,
            history=history,
            config=model["config"],
            model_metrics=model["metrics"],
            files={k: _relative(p, root) for k, p in files.items()},
        )

    reports = _under(root, paths.reports)
    download = reports / "download" / "metrics.json"
    return ReportInputs(
        stages=stages,
        missing=missing,
        manifest=_read_json(manifest_path) if manifest_path.is_file() else None,
        manifest_file=_relative(manifest_path, root),
        download=_read_json(download) if download.is_file() else None,
        tune=load_tune(reports / TUNE_DIR, root),
        baseline_params=to_dict(params.baseline),
        tune_dir=_relative(reports / TUNE_DIR, root),
    )


def load_tune(tune_dir: Path, root: Path) -> list[dict]:
    """Each tuning study's best configuration (`src.tune` writes
    <tune_dir>/<study>/best_params.yaml: a comment header naming the best trial and
    its validation accuracy, then the dotted keys that differ from params.yaml)."""
    import yaml

    studies = []
    for path in sorted(tune_dir.glob(f"*/{TUNE_PARAMS}")):
        try:
            text = path.read_text()
            best_params = yaml.safe_load(text) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ReportInputError(f"{path}: unreadable ({exc})") from exc
        studies.append(
            {
                "file": _relative(path, root),
                "header": [
                    ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("#")
                ],
                "best_params": best_params,
                "figures": [_relative(f, root) for f in sorted(path.parent.glob("*.png"))],
            }
        )
    return studies


# --------------------------------------------------------------------------- formatting


def fmt_metric(value: Any) -> str:
    """Losses and accuracies with 4 decimals (test accuracy on 10,000 images is exact)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}"


def fmt_value(value: Any) -> str:
    """A config or count value as a reader expects it: 390,410 · 0.05 · [32, 64] · true."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_value(v).replace(",", "") for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items())
    return str(value)


def markdown_table(frame: pd.DataFrame, right: Sequence[str] = ()) -> str:
    """A GitHub markdown table of `frame`'s cells as strings (no `tabulate` needed);
    columns named in `right` are right-aligned."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---:" if c in right else "---" for c in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *rows])


def _format(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]]) -> pd.DataFrame:
    out = frame.copy().astype(object)
    for column, formatter in formats.items():
        out[column] = [formatter(v) for v in frame[column]]
    return out


def _figure(name: str, alt: str) -> str:
    return f"![{alt}]({FIGURE_DIR}/{name})"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


# --------------------------------------------------------------------------- models


def build_stage_model(stage: str, config: dict):
    """The stage's network from its resolved config (random init); and its input size."""
    from src.models import build_cnn, build_resnet

    if STAGE_INFO[stage].kind == "cnn":
        cfg = build(CNNStageConfig, config, prefix=stage).model
        return build_cnn(cfg), cfg.image_size
    cfg = build(ResNetConfig, {**config, "weights": "none"}, prefix=stage)  # never the weights
    return build_resnet(cfg), cfg.image_size


def _describe(module) -> str:
    from torch import nn

    def pair(v) -> str:
        v = v if isinstance(v, tuple) else (v, v)
        return f"{v[0]}×{v[1]}"

    if isinstance(module, nn.Conv2d):
        return (
            f"Conv2d {module.in_channels}→{module.out_channels}, {pair(module.kernel_size)}, "
            f"stride {module.stride[0]}, padding {module.padding[0]}"
        )
    if isinstance(module, nn.MaxPool2d):
        return f"MaxPool2d {pair(module.kernel_size)}, stride {pair(module.stride)[0]}"
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}→{module.out_features}"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"{type(module).__name__}({module.num_features})"
    if isinstance(module, (nn.Dropout, nn.Dropout2d)):
        return f"{type(module).__name__}(p={module.p:g})"
    if isinstance(module, nn.LeakyReLU):
        return f"LeakyReLU(slope {module.negative_slope:g})"
    if isinstance(module, nn.Sequential) and len(module):
        return f"{len(module)} × {type(module[0]).__name__}"
    return type(module).__name__


def architecture_table(model, image_size: int) -> pd.DataFrame:
    """One row per top-level layer: what it is, its output shape (C×H×W for one
    image of `image_size`), its parameters (from `theory.layer_parameter_table`)
    and whether they train."""
    import torch

    counts = theory.layer_parameter_table(model)
    shapes: dict[str, tuple] = {}
    hooks = [
        child.register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
        )
        for name, child in model.named_children()
    ]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    rows = []
    for name, child in model.named_children():
        n = sum(r["total"] for r in counts if r["name"] == name or r["name"].startswith(f"{name}."))
        trains = any(p.requires_grad for p in child.parameters())
        rows.append(
            {
                "Layer": name,
                "Module": _describe(child),
                "Output shape": "×".join(str(d) for d in shapes.get(name, ())) or "—",
                "Parameters": n,
                "Trainable": ("yes" if trains else "frozen") if n else "—",
            }
        )
    return pd.DataFrame(rows)


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


def summary_frame(inputs: ReportInputs) -> pd.DataFrame:
    """The summary table's numbers: one row per stage that ran (pandas, unformatted)."""
    rows = []
    for info in STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is None:
            continue
        m = outputs.metrics
        model, _ = build_stage_model(info.name, outputs.config)
        reference = REFERENCE.get(info.name, {}).get("test_accuracy")
        rows.append(
            {
                "Stage": info.name,
                "Task": info.task,
                "Parameters": sum(p.numel() for p in model.parameters()),
                "Trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "Training accuracy": m.get("final_train_accuracy"),
                "Validation accuracy": m.get("final_val_accuracy"),
                "Test accuracy": m.get("test_accuracy"),
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
    "Course test accuracy": lambda v: "—" if v is None else f"{v:.3f}",
    "Test − course": lambda v: "—" if v is None or pd.isna(v) else _signed(v),
    "Test loss": fmt_metric,
    "Epochs": fmt_value,
    "Training time (s)": lambda v: "—" if v is None else f"{v:,.0f}",
}


def _sources_section(inputs: ReportInputs, runs: dict[str, dict | None]) -> list[str]:
    lines = ["## Where the numbers come from", ""]
    m = inputs.manifest
    if m is None:
        lines.append(f"Data: `{inputs.manifest_file}` is missing (run `dvc repro download`).")
    else:
        src, counts, split = m.get("source", {}), m.get("counts", {}), m.get("split", {})
        digest = src.get("sha256", "")
        lines.append(
            f"Data: `{inputs.manifest_file}`: source kind `{src.get('kind', '?')}`, "
            f"`{src.get('path') or src.get('url', '?')}`"
            + (f" (sha256 `{digest[:16]}…`)" if digest else "")
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
        "model file; architectures are rebuilt from that config. Final training, validation "
        "and test figures come from the best checkpoint (lowest validation loss) in eval mode.",
        "",
    ]
    rows = []
    for info in STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is None:
            rows.append([f"`{info.name}`", info.task, "not run", "—", "—", "—", "—"])
            continue
        run = runs.get(info.name)
        tags = (run or {}).get("tags", {})
        commit = tags.get("git_commit", "")
        commit = f"`{commit[:10]}`" + (" (dirty)" if tags.get("git_dirty") == "true" else "")
        if info.kind == "resnet":
            p = pretrained_info(outputs, run)
            weights = f"`{p['weights']}`: {'pretrained' if p['pretrained'] else 'NOT pretrained'}"
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
        lines.append(f"Tuning: `{study['file']}` (see the tuning study section).")
    lines.append(f"Course values: {REFERENCE_SOURCE} (`src/report.py`, `REFERENCE`).")
    return lines + [""]


def _summary_section(inputs: ReportInputs, runs: dict, figures: dict) -> list[str]:
    lines = ["## Summary", ""]
    frame = summary_frame(inputs)
    if frame.empty:
        return lines + ["No training stage has run yet.", ""]
    numeric = [c for c in frame.columns if c not in ("Stage", "Task")]
    lines += [markdown_table(_format(frame, SUMMARY_FORMATS), right=numeric), ""]
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
    lines += [_figure("summary_accuracy.png", "Accuracy per stage and the course's values"), ""]
    notes = []
    for info in STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is None:
            notes.append(f"`{info.name}` has not run (`dvc repro {info.name}`).")
            continue
        notes += [f"`{info.name}`: {n}." for n in budget_notes(info.name, outputs.config)]
        if (
            info.kind == "resnet"
            and not pretrained_info(outputs, runs.get(info.name))["pretrained"]
        ):
            notes.append(
                "`resnet` ran from random initialisation (`resnet.weights: none`): "
                "not a transfer-learning result, not comparable with the course's."
            )
    if notes:
        lines += ["Caveats:", "", *[f"- {n}" for n in notes], ""]
    return lines


def task1_section(baseline_config: dict, config_source: str) -> list[str]:
    """Task 1a-1g, numbered as the course numbers them; 1g counts the network
    `baseline_config` (a resolved `baseline` section) describes, `config_source` saying
    where that config comes from."""
    from scipy import ndimage

    result = theory.convolve2d_same(theory.TASK1_IMAGE, theory.SOBEL_X)
    check = ndimage.convolve(theory.TASK1_IMAGE, theory.SOBEL_X, mode="constant", cval=0)
    agrees = np.array_equal(result, check)

    def matrix(a: np.ndarray) -> str:
        return "\n".join(["```", *("  ".join(f"{v:4d}" for v in row) for row in a), "```"])

    lines = [
        "## Task 1: theory",
        "",
        "Computed by `src/theory.py` when this report is rendered.",
        "",
        "### Task 1a: convolution with the Sobel-x kernel",
        "",
        "True convolution (the kernel flipped in both axes), zero padding, output the size "
        'of the input ("same"). Image:',
        "",
        matrix(theory.TASK1_IMAGE),
        "",
        "Kernel:",
        "",
        matrix(theory.SOBEL_X),
        "",
        "Result:",
        "",
        matrix(result),
        "",
        'Checked against `scipy.ndimage.convolve(image, kernel, mode="constant", cval=0)`: '
        + ("**identical**." if agrees else "**DIFFERENT** (a bug in `src/theory.py`)."),
        "",
    ]
    answers = theory.task1_answers()
    layer = answers.pop("1b")
    lines += [
        "### Task 1b: the layer that reduces sensitivity to translation",
        "",
        f"**{layer['answer'].capitalize()}.** {layer['working']}",
        "",
        "### Task 1c–1f: padding, kernel and output sizes",
        "",
        "W_out = (W − K + 2P) / S + 1, for width and height alike.",
        "",
    ]
    sizes = pd.DataFrame(answers.values())[["task", "question", "working", "answer"]]
    sizes.columns = ["Task", "Question", "Formula", "Answer"]
    sizes["Formula"] = [f"`{f}`" for f in sizes["Formula"]]
    lines += [markdown_table(sizes, right=["Answer"]), ""]

    lines += ["### Task 1g: parameters of the baseline network", ""]
    model, _ = build_stage_model("baseline", baseline_config)
    table = pd.DataFrame(theory.layer_parameter_table(model))
    total = int(table["total"].sum())
    table["weight_shape"] = ["×".join(map(str, s)) if s else "—" for s in table["weight_shape"]]
    table = table.rename(
        columns={
            "name": "Layer",
            "type": "Type",
            "weight_shape": "Weight shape",
            "weights": "Weights",
            "biases": "Biases",
            "total": "Parameters",
        }
    )
    table = _format(table, {c: fmt_value for c in ("Weights", "Biases", "Parameters")})
    total_row = {"Layer": "**total**", "Parameters": f"**{total:,}**"}
    table = pd.concat([table, pd.DataFrame([total_row])], ignore_index=True).fillna("")
    reference = REFERENCE["baseline"]["n_parameters"]
    verdict = "equal" if total == reference else "**different**: another network than the course's"
    lines += [
        f"Counted layer by layer (`theory.layer_parameter_table`) on {config_source}:",
        "",
        markdown_table(table, right=["Weights", "Biases", "Parameters"]),
        "",
        f"Total **{total:,}** parameters; course report: {reference:,} ({verdict}).",
        "",
    ]
    return lines


def _stage_section(info: StageInfo, inputs: ReportInputs, runs: dict, figures: dict) -> list[str]:
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
        markdown_table(_format(arch, {"Parameters": fmt_value}), right=["Parameters"]),
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
        _figure(name, f"{info.name} learning curves"),
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
                "Difference": _signed(m[acc_key] - ref) if ref is not None else "—",
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


def _task3d_section(inputs: ReportInputs, figures: dict) -> list[str]:
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
        _figure(name, "Training and validation loss of the baseline and the improved network"),
        "",
        f"Final validation loss {fmt_metric(b.get('final_val_loss'))} → "
        f"{fmt_metric(a.get('final_val_loss'))}; test accuracy "
        f"{fmt_metric(b.get('test_accuracy'))} → {fmt_metric(a.get('test_accuracy'))}.",
        "",
    ]


def _tune_section(inputs: ReportInputs) -> list[str]:
    lines = ["## Tuning study", ""]
    if not inputs.tune:
        return lines + [
            f"No tuning results: no `{inputs.tune_dir}/<study>/{TUNE_PARAMS}` "
            "(`python -m src.tune` writes it).",
            "",
        ]
    for study in inputs.tune:
        lines += [f"From `{study['file']}`:", ""]
        if study["header"]:  # src.tune's comment: best trial, its budget, the retrain command
            lines += ["```text", *study["header"], "```", ""]
        best = flatten(study["best_params"])
        if best:
            rows = [{"Key": f"`{k}`", "Value": fmt_value(v)} for k, v in best.items()]
            lines += [markdown_table(pd.DataFrame(rows)), ""]
        else:
            lines += ["The best trial's configuration is params.yaml's own.", ""]
        if study["figures"]:
            # relative to reports/: these links work in the repository, not in MLflow
            links = [
                f"[{Path(f).stem}]({Path(f).relative_to(Path(inputs.tune_dir).parent)})"
                for f in study["figures"]
            ]
            lines += ["Study figures: " + ", ".join(links) + ".", ""]
    return lines


def render_report(inputs: ReportInputs, runs: dict[str, dict | None] | None = None) -> Report:
    """The whole report: markdown (links figures under FIGURE_DIR/), the figures, and
    tags for the report's MLflow run. `runs`: stage -> `tracking.run_summary(...)`."""
    runs = runs or {}
    figures: dict[str, Any] = {}
    baseline = inputs.stages.get("baseline")
    lines = [
        "# CIFAR-10 with convolutional networks: TDT4265 assignment 3",
        "",
        "Generated by the `report` stage (`dvc repro report`; `src/report.py`) from the "
        "outputs of the `download`, `baseline`, `improved` and `resnet` stages. "
        "Do not edit: rerun the stage.",
        "",
    ]
    lines += _sources_section(inputs, runs)
    lines += _summary_section(inputs, runs, figures)
    if baseline is not None:
        source = f"the network the `baseline` stage trained (config in `{baseline.files['model']}`)"
        lines += task1_section(baseline.config, source)
    else:
        source = "params.yaml's `baseline` network (the stage has not run)"
        lines += task1_section(inputs.baseline_params, source)
    for info in STAGES:
        lines += _stage_section(info, inputs, runs, figures)
        if info.name == "improved":
            lines += _task3d_section(inputs, figures)
    lines += _tune_section(inputs)

    tags = {}
    for info in STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is not None:
            tags[f"source_run.{info.name}"] = str(outputs.metrics.get("mlflow_run_id"))
            if info.kind == "resnet":
                tags["resnet_pretrained"] = str(
                    pretrained_info(outputs, runs.get(info.name))["pretrained"]
                ).lower()
        else:
            tags[f"source_run.{info.name}"] = "missing"
    if inputs.download and inputs.download.get("mlflow_run_id"):
        tags["source_run.download"] = str(inputs.download["mlflow_run_id"])
    if inputs.tune:
        tags["tune_results"] = ", ".join(study["file"] for study in inputs.tune)
    markdown = "\n".join(lines).rstrip() + "\n"
    return Report(markdown=markdown, figures=figures, tags=tags)
