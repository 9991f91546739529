"""What the report reads, and its data types: every training stage's outputs
(metrics.json, history.csv, the resolved config in models/<stage>.pt, or without the model
file the params `dvc.lock` records for them), the data manifest, the tuning studies
reports/tune/<study>/ (`src.report.search_inputs`), reports/discussion.md, the seed records
reports/seeds/<stage>.json (`src.seeds`) and the float32 runs reports/numerics/fp32/<stage>/
the current runs are compared with, all declared deps of the `report` stage in dvc.yaml.

    load_inputs(root, params)      -> ReportInputs (one StageOutputs per training stage)

`src.report.formats`, `src.report.sections.stage` and `src.report.build` render them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from src import artifacts
from src.config.layout import Layout
from src.config.profiles import matching_profile, smoke_reasons
from src.config.schema import Params
from src.config.stages import TRAINING_STAGES, get_stage
from src.config.typed import to_dict
from src.data.prepare import MANIFEST
from src.report.search_inputs import Study, derived_locked_config, load_tune
from src.runtime.errors import ReportInputError, WeightsError
from src.seeds.spread import Spread, read_record

LOCK_FILE = "dvc.lock"  # in the project root: what each stage last ran with
# The report of a partial pipeline (a CPU user's: `dvc repro report` would first train
# every missing upstream stage, and DVC runs no stage whose dependency is missing).
PARTIAL_COMMAND = "python -m pipelines.report --allow-missing"
# Declared dependencies of the report stage besides the stages' outputs, all git-tracked, are
# in src.config.layout.Layout: tune_reports, discussion, seeds, benchmark, fp32_runs.
# The course report's places for discussion: id -> heading.
DISCUSSION = {
    "3c": "what helped and what did not",
    "3f": "overfitting",
    "4a": "transfer learning",
}
# The final figures every training stage writes to metrics.json (best checkpoint, eval mode).
SPLIT_METRICS = {
    "train": ("final_train_loss", "final_train_accuracy"),
    "val": ("final_val_loss", "final_val_accuracy"),
    "test": ("test_loss", "test_accuracy"),
}


# The course report these stages reproduce: the values a reviewer compares against.
REFERENCE_SOURCE = "the TDT4265 assignment 3 course report (tasks 2, 3 and 4a)"
REFERENCE: dict[str, dict[str, float | int]] = {
    "baseline": {"test_accuracy": 0.756, "n_parameters": 390_410},
    "improved": {"test_accuracy": 0.811},
    "resnet": {"test_accuracy": 0.889},
    "lite": {"test_accuracy": 0.889},  # task 4a's figure: the course fine-tuned ResNet18
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
    smoke: tuple[str, ...] = ()  # why it is not a real result (profiles.smoke_reasons)


@dataclass(frozen=True)
class RecordedRun:
    """A committed run of a stage kept to compare the current one with (reports/numerics/)."""

    stage: str
    metrics: dict
    history: pd.DataFrame  # as StageOutputs.history
    files: dict[str, str]  # "metrics" | "history" -> path relative to the root


@dataclass(frozen=True)
class Benchmark:
    """The measured training rates a missing stage's cost is estimated from."""

    machine: str  # "a 2-core AMD EPYC CPU"
    rates: dict[str, tuple[float, int]]  # stage -> (training images/s, image size in px)
    file: str  # relative to the root
    # stage -> what trained, where only part of the network did: "layer4 and fc on cached
    # features"
    parts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportInputs:
    stages: dict[str, StageOutputs | None]  # None: missing (only with allow_missing)
    missing: dict[str, list[str]]  # stage -> missing files, relative to the root
    manifest: dict | None
    manifest_file: str
    download: dict | None  # reports/download/metrics.json (the data stage's run id)
    tune: list[Study]  # per study under reports/tune/ (src.report.search_inputs); [] if none
    baseline_params: dict  # params.yaml's `baseline` section: task 1f before the stage runs
    tune_dir: str = Layout(Path()).tune_reports.as_posix()  # where tuning results would be
    discussion: dict[str, str] | None = None  # id -> the student's text; None: no file
    discussion_file: str = Layout(Path()).discussion.as_posix()
    # params.yaml's section per training stage: what running a missing stage would train
    planned: dict[str, dict] = field(default_factory=dict)
    # stage -> its runs over seeds (reports/seeds/<stage>.json)
    seeds: dict[str, Spread] = field(default_factory=dict)
    seeds_dir: str = Layout(Path()).seeds.as_posix()
    benchmark: Benchmark | None = None  # None: no benchmark file
    # stage -> its float32 run (reports/numerics/fp32/<stage>/), where one is kept
    fp32: dict[str, RecordedRun] = field(default_factory=dict)
    fp32_dir: str = Layout(Path()).fp32_runs.as_posix()
    # params.yaml's `tune` section: the search space, the study the `tuned` stage trains
    tune_params: dict = field(default_factory=dict)


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
    stored = model.get("metrics") or {}
    for key in (k for pair in SPLIT_METRICS.values() for k in pair):
        mine, theirs = metrics.get(key), stored.get(key)
        if mine is None or theirs is None or not math.isclose(mine, theirs, rel_tol=1e-9):
            problems.append(f"{key} {theirs} in the model file, {mine} in metrics.json")
    if model.get("history_sha256"):
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
    for info in TRAINING_STAGES:
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

    stages = {info.name: _stage_outputs(root, params, info.name) for info in TRAINING_STAGES}
    download = artifacts.StagePaths.for_stage("download", root).metrics
    return ReportInputs(
        stages=stages,
        missing=missing,
        manifest=_read_json(manifest_path) if manifest_path.is_file() else None,
        manifest_file=_relative(manifest_path, root),
        download=_read_json(download) if download.is_file() else None,
        tune=load_tune(layout.tune_reports, root),
        baseline_params=to_dict(params.baseline),
        tune_dir=_relative(layout.tune_reports, root),
        discussion=read_discussion(layout.discussion),
        discussion_file=_relative(layout.discussion, root),
        planned={info.name: to_dict(getattr(params, info.name)) for info in TRAINING_STAGES},
        seeds=load_seeds(layout.seeds),
        seeds_dir=_relative(layout.seeds, root),
        benchmark=load_benchmark(layout.benchmark, root),
        fp32=load_recorded_runs(layout.fp32_runs, root),
        fp32_dir=_relative(layout.fp32_runs, root),
        tune_params=dict(params.tune),
    )


def load_recorded_runs(folder: Path, root: Path) -> dict[str, RecordedRun]:
    """Each training stage's run kept in `folder` (<stage>/metrics.json and
    <stage>/history.csv, both needed); {} without the folder. An unreadable file is a
    ReportInputError."""
    found = {}
    for info in TRAINING_STAGES:
        files = {
            "metrics": folder / info.name / artifacts.METRICS_FILE,
            "history": folder / info.name / artifacts.HISTORY_FILE,
        }
        if not all(p.is_file() for p in files.values()):
            continue
        try:
            history = artifacts.read_history(files["history"])
        except (OSError, ValueError) as exc:
            raise ReportInputError(f"{files['history']}: unreadable ({exc})") from exc
        found[info.name] = RecordedRun(
            stage=info.name,
            metrics=_read_json(files["metrics"]),
            history=history,
            files={k: _relative(p, root) for k, p in files.items()},
        )
    return found


def load_benchmark(path: Path, root: Path) -> Benchmark | None:
    """The project path's median training images/s per model (1 decimal, as BENCHMARKS.md
    gives them) and the machine, from the benchmark's JSON; None without the file."""
    if not path.is_file():
        return None
    data = _read_json(path)
    machine = data.get("machine", {})
    rates = {
        name: (round(model["project"]["images_per_s"], 1), int(model["image_size"]))
        for name, model in data.get("models", {}).items()
    }
    parts = {
        name: " and ".join(model["trainable"])
        + (" on cached features" if model.get("cache_features") else "")
        for name, model in data.get("models", {}).items()
        if model.get("trainable")
    }
    described = f"a {machine.get('cpu_cores', '?')}-core {machine.get('cpu', '?')} CPU"
    if machine.get("device", "cpu") != "cpu":
        described = str(machine.get("gpu") or machine["device"])
    return Benchmark(machine=described, rates=rates, file=_relative(path, root), parts=parts)


def load_seeds(folder: Path) -> dict[str, Spread]:
    """Each training stage's seed record in `folder` (`python -m src.seeds` writes them);
    a file of another name is not read, an unreadable record is a ReportInputError."""
    found = {}
    for info in TRAINING_STAGES:
        path = folder / f"{info.name}.json"
        if path.is_file():
            try:
                found[info.name] = read_record(path)
            except ValueError as exc:
                raise ReportInputError(str(exc)) from exc
    return found


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
        try:  # tensors memory-mapped, never read: the config and the links are used
            model = artifacts.read_model_file(files["model"], mmap=True)
        except WeightsError as exc:
            raise ReportInputError(str(exc)) from exc
        check_outputs_belong_together(stage, files, metrics, model, root)
        config, model_metrics = model["config"], model.get("metrics") or {}
        config_source = f"the resolved config stored in `{_relative(files['model'], root)}`"
    else:
        config, model_metrics = locked_config(root, stage, files), {}
        config_source = (
            "`dvc.lock`, whose hashes of this `metrics.json` and `history.csv` match"
            if config is not None
            else ""
        )
    profile = matching_profile({stage: config}, params.profiles, stage) if config else None
    smoke = tuple(smoke_reasons(config, profile)) if config is not None else ()
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
    recorded = (entry.get("params") or {}).get("params.yaml") or {}
    if not get_stage(stage).own_section:  # `tuned`: tune.base's section with the best knobs
        return derived_locked_config(root, recorded, entry.get("deps") or [])
    section = recorded.get(stage)
    return section if isinstance(section, dict) else None


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
