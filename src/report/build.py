"""The `report` stage's worker: `reports/report.md` and its figures, built from what the
other stages wrote, the tuning summaries and the student's text.

    load_inputs(root, params)      read every stage's outputs (metrics.json, history.csv,
                                   the resolved config in models/<stage>.pt), the data
                                   manifest, reports/tune/<study>/ and reports/discussion.md
                                   (all declared deps of the stage in dvc.yaml)
    render_report(inputs, runs)    -> Report: markdown, matplotlib figures, figures to copy,
                                   MLflow tags

`render_report` is pure: MLflow run summaries (`runs`) are fetched by the caller
through `src.tracking.runs`, and nothing is written here. Its parts: `src.report.blocks`
(formatting, architectures, task 1 via `src.report.theory`, the course values `REFERENCE`) and
`src.report.sections` (one training stage's sections); `src.report.html` turns the markdown
into the self-contained reports/report.html.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from src import artifacts
from src.config.params import Layout, Params, flatten, to_dict
from src.data.prepare import MANIFEST
from src.errors import ReportInputError, WeightsError
from src.report import figures as plots
from src.report.blocks import (  # FIGURE_DIR, STAGE_INFO, StageInfo: used via src.report.build
    FIGURE_DIR,  # noqa: F401
    REFERENCE,
    REFERENCE_SOURCE,
    STAGE_INFO,  # noqa: F401
    STAGES,
    StageInfo,  # noqa: F401
    figure_link,
    fmt_metric,
    fmt_value,
    format_frame,
    markdown_table,
    signed,
    task1_section,
    typed_section,
)
from src.report.sections import (
    SPLIT_METRICS,
    agreement,
    pretrained_info,
    stage_section,
    task3d_section,
)
from src.tracking.registry import smoke_reasons

REPORT_FILE = "report.md"  # under reports/ (src.config.params.Layout)
LOCK_FILE = "dvc.lock"  # in the project root: what each stage last ran with
# The report of a partial pipeline (a CPU user's: `dvc repro report` would first train
# every missing upstream stage, and DVC runs no stage whose dependency is missing).
PARTIAL_COMMAND = "python -m pipelines.report --allow-missing"
HTML_FILE = "report.html"  # the same report, self-contained (src.report.html)
# Declared dependencies of the report stage besides the stages' outputs, both git-tracked:
TUNE_DIR = "tune"  # src.tune writes tune/<study>/best_params.yaml + figures there
TUNE_PARAMS = "best_params.yaml"
DISCUSSION_FILE = "discussion.md"  # the student's text, one `## <id>` section per place
# The course report's places for discussion: id -> heading.
DISCUSSION = {
    "3c": "what helped and what did not",
    "3f": "overfitting",
    "4a": "transfer learning",
}


@dataclass(frozen=True)
class StageOutputs:
    stage: str
    metrics: dict
    history: pd.DataFrame  # one row per validation (step, epoch, train_loss, ...)
    # What trained it: the resolved config stored in the model file; without the model
    # file, the stage's params as dvc.lock records them (when its hashes of metrics.json
    # and history.csv match); None when neither is available.
    config: dict | None
    model_metrics: dict  # the final figures stored in the model file ({} without it)
    files: dict[str, str]  # "metrics" | "history" | "model" -> path relative to the root
    config_source: str = ""  # where `config` comes from, as the report names it
    has_model: bool = True  # False: committed metrics.json + history.csv, no model file
    profile: str | None = None  # the params.yaml profile whose values it trained with
    smoke: tuple[str, ...] = ()  # why it is not a real result (registry.smoke_reasons)


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
    discussion: dict[str, str] | None = None  # id -> the student's text; None: no file
    discussion_file: str = f"reports/{DISCUSSION_FILE}"
    # params.yaml's section per training stage: what running a missing stage would train
    planned: dict[str, dict] = field(default_factory=dict)


@dataclass
class Report:
    markdown: str
    figures: dict[str, Any] = field(default_factory=dict)  # file name -> matplotlib figure
    copies: dict[str, Path] = field(default_factory=dict)  # file name -> image to copy there
    tags: dict[str, str] = field(default_factory=dict)  # for the report's MLflow run


# --------------------------------------------------------------------------- reading


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
        error = ReportInputError(
            f"{stage}: {names} do not belong to one run ({'; '.join(problems)}); the stage "
            f"was stopped while writing them. Rerun `dvc repro {stage}`."
        )
        error.hint = ""  # --allow-missing renders nothing of two runs either
        raise error


def load_inputs(root: Path, params: Params, *, allow_missing: bool = False) -> ReportInputs:
    """Read every stage's outputs under `root`.

    A missing output raises ReportInputError naming each missing file and the
    `dvc repro` that makes it; with `allow_missing` a stage without metrics.json or
    history.csv is reported as not run, and one with both but no model file (a fresh
    clone: the two are in git, the model file only in DVC's cache) is rendered from them.
    """
    root = Path(root)
    layout = Layout(root)
    missing: dict[str, list[str]] = {}
    manifest_path = layout.data / MANIFEST
    if not manifest_path.is_file():
        missing["download"] = [_relative(manifest_path, root)]
    for info in STAGES:
        files = artifacts.StagePaths.for_stage(info.name, root).linked().values()
        absent = [_relative(p, root) for p in files if not p.is_file()]
        if absent:
            missing[info.name] = absent
    if missing and not allow_missing:
        lines = [
            f"  {stage}: {', '.join(files)} (run `dvc repro {stage}`)"
            for stage, files in missing.items()
        ]
        error = ReportInputError(
            "the report needs stage outputs that do not exist:\n" + "\n".join(lines)
        )
        error.hint = f"or render what exists: {PARTIAL_COMMAND}"
        raise error

    stages = {info.name: _stage_outputs(root, params, info.name) for info in STAGES}
    reports = layout.reports
    download = artifacts.StagePaths.for_stage("download", root).metrics
    return ReportInputs(
        stages=stages,
        missing=missing,
        manifest=_read_json(manifest_path) if manifest_path.is_file() else None,
        manifest_file=_relative(manifest_path, root),
        download=_read_json(download) if download.is_file() else None,
        tune=load_tune(reports / TUNE_DIR, root),
        baseline_params=to_dict(params.baseline),
        tune_dir=_relative(reports / TUNE_DIR, root),
        discussion=read_discussion(reports / DISCUSSION_FILE),
        discussion_file=_relative(reports / DISCUSSION_FILE, root),
        planned={info.name: to_dict(getattr(params, info.name)) for info in STAGES},
    )


def _stage_outputs(root: Path, params: Params, stage: str) -> StageOutputs | None:
    """One stage's outputs; None when its metrics.json or history.csv does not exist."""
    files = artifacts.StagePaths.for_stage(stage, root).linked()
    if not (files["metrics"].is_file() and files["history"].is_file()):
        return None
    metrics = _read_json(files["metrics"])
    try:
        history = artifacts.read_history(files["history"])
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"{files['history']}: unreadable ({exc})") from exc
    has_model = files["model"].is_file()
    if has_model:
        model = _read_model_file(files["model"])
        check_outputs_belong_together(stage, files, metrics, model, root)
        config, model_metrics = model["config"], model["metrics"]
        config_source = f"the resolved config stored in `{_relative(files['model'], root)}`"
    else:
        config, model_metrics = locked_config(root, stage, files), {}
        config_source = (
            "`dvc.lock`, whose hashes of this `metrics.json` and `history.csv` match"
            if config is not None
            else ""
        )
    profile = matching_profile(stage, config, params.profiles) if config else None
    smoke: tuple[str, ...] = ()
    if config is not None:
        section = typed_section(stage, config)
        smoke = tuple(smoke_reasons(replace(params, profile=profile or "full"), section))
    return StageOutputs(
        stage=stage,
        metrics=metrics,
        history=history,
        config=config,
        model_metrics=model_metrics,
        files={k: _relative(p, root) for k, p in files.items()},
        config_source=config_source,
        has_model=has_model,
        profile=profile,
        smoke=smoke,
    )


def locked_config(root: Path, stage: str, files: dict[str, Path]) -> dict | None:
    """The stage's params.yaml section as `dvc.lock` records it, when the lock's md5 of
    metrics.json and of history.csv match the files (then both are the outputs of the
    run that lock entry describes); None otherwise. Without the model file this is the
    only record of what trained them that a fresh clone holds."""
    import hashlib

    import yaml

    try:
        lock = yaml.safe_load((root / LOCK_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as exc:
        raise ReportInputError(f"{root / LOCK_FILE}: unreadable ({exc})") from exc
    entry = (lock or {}).get("stages", {}).get(stage) if isinstance(lock, dict) else None
    if not isinstance(entry, dict):
        return None
    outs = {o.get("path"): o.get("md5") for o in entry.get("outs") or [] if isinstance(o, dict)}
    for key in ("metrics", "history"):
        digest = hashlib.md5(files[key].read_bytes()).hexdigest()  # DVC 3's `hash: md5`
        if outs.get(_relative(files[key], root)) != digest:
            return None
    section = ((entry.get("params") or {}).get("params.yaml") or {}).get(stage)
    return section if isinstance(section, dict) else None


def matching_profile(stage: str, config: dict, profiles: dict) -> str | None:
    """The `profiles.<name>` whose every key for `stage` the config holds (the quick run
    passes them as `-S` params); None when it trained with no profile's values."""
    flat = flatten(config)
    for name, overrides in profiles.items():
        mine = {
            k.removeprefix(f"{stage}."): v
            for k, v in (overrides or {}).items()
            if k.startswith(f"{stage}.")
        }
        if mine and all(flat.get(k) == v for k, v in mine.items()):
            return name
    return None


def read_discussion(path: Path) -> dict[str, str] | None:
    """The student's text per place: what follows a `## <id>` heading (`## 3c: ...`) up to
    the next `## ` heading; None when the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportInputError(f"{path}: unreadable ({exc})") from exc
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        heading = re.match(r"##\s+(\w+)\b", line)
        if heading:
            current = heading.group(1) if heading.group(1) in DISCUSSION else None
            if current:
                sections[current] = []
            continue
        if current:
            sections[current].append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items()}


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


# --------------------------------------------------------------------------- sections


def summary_frame(inputs: ReportInputs) -> pd.DataFrame:
    """The summary table's numbers: one row per stage that ran (pandas, unformatted)."""
    from src.training.models import network_from_config

    rows = []
    for info in STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is None:
            continue
        m = outputs.metrics
        model = network_from_config(outputs.config, info.name)[0] if outputs.config else None
        reference = REFERENCE.get(info.name, {}).get("test_accuracy")
        rows.append(
            {
                "Stage": info.name,
                "Task": info.task,
                "Parameters": sum(p.numel() for p in model.parameters()) if model else None,
                "Trainable": (
                    sum(p.numel() for p in model.parameters() if p.requires_grad) if model else None
                ),
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
    "Test − course": lambda v: "—" if v is None or pd.isna(v) else signed(v),
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
        "model file (without it, from `dvc.lock` when the lock's hashes match the stage's "
        "`metrics.json` and `history.csv`); architectures are rebuilt from that config. "
        "Final training, validation and test figures come from the best checkpoint (lowest "
        "validation loss) in eval mode. Losses and accuracies have 4 decimals; the course's "
        "values are quoted as its report gives them (3 decimals).",
        "",
    ]
    rows = []
    for info in STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is None:
            rows.append([f"`{info.name}`", info.task, "not run here", "—", "—", "—", "—"])
            continue
        run = runs.get(info.name)
        tags = (run or {}).get("tags", {})
        commit = tags.get("git_commit", "")
        commit = f"`{commit[:10]}`" + (" (dirty)" if tags.get("git_dirty") == "true" else "")
        if info.kind == "resnet":
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
        lines.append(f"Tuning: `{study['file']}` (see the tuning study section).")
    lines.append(f"Course values: {REFERENCE_SOURCE} (`src/report/build.py`, `REFERENCE`).")
    return lines + [""]


def _summary_section(inputs: ReportInputs, runs: dict, figures: dict) -> list[str]:
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
    for info in STAGES:
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


def _tune_section(inputs: ReportInputs, copies: dict[str, Path]) -> list[str]:
    lines = ["## Tuning study", ""]
    if not inputs.tune:
        return lines + [
            f"No tuning study was run: `{inputs.tune_dir}/` holds no `<study>/{TUNE_PARAMS}` "
            "(`python -m src.tune` writes one; commit it with git to show it here).",
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
        study_name = Path(study["file"]).parent.name
        for figure in study["figures"]:
            # copied beside the report's own figures: a DVC output, so links resolve
            # wherever the report does (a fresh clone after `dvc pull`)
            name = f"tune-{study_name}-{Path(figure).name}"
            copies[name] = Path(figure)
            lines += [figure_link(name, f"Study {study_name}: {Path(figure).stem}"), ""]
    return lines


def banner(inputs: ReportInputs) -> list[str]:
    """What a reader must know before any number: stages that have not run, stages
    rendered without their model file, and smoke runs (registry.smoke_reasons: the same
    reasons that keep a version from being served)."""
    notes = []
    absent = [info for info in STAGES if inputs.stages.get(info.name) is None]
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


def render_report(
    inputs: ReportInputs,
    runs: dict[str, dict | None] | None = None,
    command: str = "dvc repro report",
) -> Report:
    """The whole report: markdown (links figures under FIGURE_DIR/), the figures, and
    tags for the report's MLflow run. `runs`: stage -> `tracking.run_summary(...)`;
    `command`: what generated it, as the reader would type it again."""
    runs = runs or {}
    figures: dict[str, Any] = {}
    baseline = inputs.stages.get("baseline")
    lines = [
        "# CIFAR-10 with convolutional networks: TDT4265 assignment 3",
        "",
        *banner(inputs),
        f"Generated by `{command}` (`src/report/build.py`) from what the `download`, `baseline`, "
        "`improved` and `resnet` stages wrote, the tuning summaries in "
        f"`{inputs.tune_dir}/` and the discussion in `{inputs.discussion_file}`. Do not edit "
        "this file: write the discussion in that file and run the same command again.",
        "",
    ]
    lines += _sources_section(inputs, runs)
    lines += _summary_section(inputs, runs, figures)
    if baseline is not None and baseline.config is not None:
        source = f"the network the `baseline` stage trained, config from {baseline.config_source}"
        lines += task1_section(baseline.config, source)
    else:
        why = "has not run" if baseline is None else "left no record of its config here"
        source = f"params.yaml's `baseline` network (the stage {why})"
        lines += task1_section(inputs.baseline_params, source)
    copies: dict[str, Path] = {}
    for info in STAGES:
        lines += stage_section(info, inputs, runs, figures)
        if info.name == "improved":
            lines += task3d_section(inputs, figures)
            lines += discussion_place("3c", inputs, command)
            lines += discussion_place("3f", inputs, command)
        if info.name == "resnet":
            lines += discussion_place("4a", inputs, command)
    lines += _tune_section(inputs, copies)

    tags = {}
    for info in STAGES:
        outputs = inputs.stages.get(info.name)
        if outputs is not None:
            tags[f"source_run.{info.name}"] = str(outputs.metrics.get("mlflow_run_id"))
            if info.kind == "resnet":
                pretrained = pretrained_info(outputs, runs.get(info.name))["pretrained"]
                tags["resnet_pretrained"] = (
                    "unknown" if pretrained is None else str(pretrained).lower()
                )
        else:
            tags[f"source_run.{info.name}"] = "missing"
    if inputs.download and inputs.download.get("mlflow_run_id"):
        tags["source_run.download"] = str(inputs.download["mlflow_run_id"])
    if inputs.tune:
        tags["tune_results"] = ", ".join(study["file"] for study in inputs.tune)
    markdown = "\n".join(lines).rstrip() + "\n"
    return Report(markdown=markdown, figures=figures, copies=copies, tags=tags)
