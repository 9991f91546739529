"""What every training stage does around `fit`: data onto the device, tracking,
checkpoint/resume, and the outputs DVC tracks.

Outputs of stage <name> (paths from params.yaml `common.paths`), in the order
they are written:
    reports/<name>/history.csv       one row per validation (DVC plots)
    reports/<name>/learning_curves.png, confusion_matrix.png
    models/<name>.pt                 weights + resolved config + final metrics + MLflow
                                     run id + sha256 of history.csv
    reports/<name>/metrics.json      final figures, timings, MLflow run id (DVC metrics)
A kill between two writes leaves files of two runs side by side; the links (run id
and final figures shared with metrics.json, the history digest) let the report
refuse such a mix (`src.report.load_inputs`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src import tracking
from src.augment import InputPipeline
from src.config import Params, TrainConfig, config_hash, resolve_path, to_dict
from src.data import Dataset, atomic_write_bytes, atomic_write_json, load_dataset
from src.models import WeightsError, load_state_strict
from src.train import FitResult, Pipeline, TensorSplits, fit, load_checkpoint, resolve_device

CHECKPOINT_DIR = "checkpoints"  # resumable training state; not a DVC out (DVC deletes outs)


@dataclass(frozen=True)
class StagePaths:
    model: Path
    reports: Path
    checkpoint: Path

    @classmethod
    def for_stage(cls, params: Params, stage: str) -> StagePaths:
        paths = params.common.paths
        return cls(
            model=resolve_path(paths.models) / f"{stage}.pt",
            reports=resolve_path(paths.reports) / stage,
            checkpoint=resolve_path(CHECKPOINT_DIR) / f"{stage}.pt",
        )


def to_tensors(dataset: Dataset, device: torch.device) -> TensorSplits:
    """The whole prepared data set as uint8 tensors on `device` (184 MB for CIFAR-10)."""
    parts = []
    for split in (dataset.train, dataset.val, dataset.test):
        parts += [torch.from_numpy(split.images), torch.from_numpy(split.labels)]
    return TensorSplits(*parts).to(device)


def input_pipeline(cfg: TrainConfig, device: torch.device, image_size: int | None = None):
    return InputPipeline(
        cfg.mean, cfg.std, cfg.augment, image_size, channels_last=device.type == "cuda"
    )


def prepare_device(cfg: TrainConfig) -> torch.device:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return resolve_device(cfg.device)


def history_csv(history: list[dict]) -> bytes:
    buffer = io.StringIO()
    if history:
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    return buffer.getvalue().encode()


def save_model_file(
    path: Path,
    model: nn.Module,
    stage: str,
    config: Any,
    final: dict,
    run_id: str | None = None,
    history_sha256: str | None = None,
) -> None:
    """Weights with what ties them to the stage's other outputs: the resolved config,
    the final figures and MLflow run id (as in metrics.json) and history.csv's sha256."""
    buffer = io.BytesIO()
    torch.save(
        {
            "stage": stage,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": to_dict(config),
            "config_hash": config_hash(config),
            "metrics": final,
            "mlflow_run_id": run_id,
            "history_sha256": history_sha256,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_model_file(path: Path, model: nn.Module) -> dict:
    """Load weights written by `save_model_file` into `model`; returns the file's dict."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path} does not exist") from None
    except Exception as exc:
        raise WeightsError(f"{path}: corrupt or not a model file ({exc})") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise WeightsError(f"{path}: not a model file of this project (no 'model' entry)")
    load_state_strict(model, payload["model"], str(path))
    return payload


class ValidationLogger:
    """A stage's `on_validation`: the validation row and the per-step losses since
    the last one, as one batched tracking write; `seconds` sums the time spent."""

    def __init__(self, run: tracking.Run):
        self.run = run
        self.seconds = 0.0

    def __call__(self, row: dict, step_losses: list[tuple[int, float]]) -> None:
        tic = time.perf_counter()
        step = row["step"]
        series = {k: [(step, v)] for k, v in row.items() if k != "step"}
        series["train_step_loss"] = step_losses
        self.run.log_series(series)
        self.seconds += time.perf_counter() - tic


def run_training_stage(
    stage: str,
    params: Params,
    section: Any,
    model: nn.Module,
    *,
    train_cfg: TrainConfig,
    data: TensorSplits,
    pipeline: Pipeline,
    dataset: Dataset,
    fit_model: nn.Module | None = None,
    tags: dict | None = None,
    extra_metrics: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train `fit_model` (default: `model`) with tracking, resume and outputs.

    `model` is what is saved and logged; `fit_model` may be a part of it that
    trains on precomputed inputs (ResNet feature caching). `extra_metrics` join the
    stage's metrics (the feature-caching time, say).
    """
    paths = StagePaths.for_stage(params, stage)
    logged = {"common": params.common, stage: section}
    key = config_hash(logged)
    previous = load_checkpoint(paths.checkpoint, key)
    resume_id = (previous or {}).get("extra", {}).get("run_id")
    if resume_id:
        tracking.mark_run_killed(resume_id)  # a SIGKILLed run is left RUNNING

    run_params = tracking.run_params(params, section)
    with tracking.stage_run(
        stage, run_params, experiment=params.common.experiment, run_id=resume_id, tags=tags
    ) as run:
        run.log_dataset(  # on resume too: final metrics and the model link to it
            dataset.manifest,
            resolve_path(params.common.paths.data),
            dataset.train.images,
            dataset.train.labels,
        )

        log_validation = ValidationLogger(run)
        result = fit(
            fit_model or model,
            data,
            train_cfg,
            pipeline,
            seed=params.common.seed,
            on_validation=log_validation,
            checkpoint_path=paths.checkpoint,
            checkpoint_extra={"run_id": run.run_id},
            config_key=key,
            progress=progress,
            name=stage,
            params_key=f"{stage}.train",
        )
        tic = time.perf_counter()
        metrics = {**stage_metrics(result, run.run_id), **(extra_metrics or {})}
        write_outputs(stage, paths, model, section, result, metrics, dataset, run)
        run.log_metrics(
            {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and k not in result.final
            },
            step=result.steps,
        )
        registry = run.log_model(
            stage,
            paths.model,
            dataset.val.images[:2],
            final_metrics=result.final,
            step=result.steps,
            smoke=tracking.smoke_reasons(params, section),
        )
        if registry:
            print(f"[{stage}] {registry}")
        # Tracking cost: per-validation logging plus the final artifacts and model,
        # against the stage's training + evaluation time.
        tracking_time = log_validation.seconds + time.perf_counter() - tic
        total = result.train_time_s + result.eval_time_s
        metrics["tracking_time_s"] = round(tracking_time, 3)
        metrics["tracking_share"] = round(tracking_time / total, 4) if total else 0.0
        atomic_write_json(paths.reports / "metrics.json", metrics)
    paths.checkpoint.unlink(missing_ok=True)
    return metrics


def stage_metrics(result: FitResult, run_id: str | None) -> dict:
    total = result.train_time_s + result.eval_time_s
    return {
        **result.final,
        "epochs_run": round(result.epochs_run, 3),
        "steps": result.steps,
        "best_step": result.best_step,
        "early_stop_step": result.early_stop_step,
        "train_time_s": round(result.train_time_s, 2),
        "eval_time_s": round(result.eval_time_s, 2),
        "eval_share": round(result.eval_time_s / total, 4) if total else 0.0,
        "train_images_per_s": round(result.images_per_s, 1),
        "resumed_from_step": result.resumed_from_step,
        "mlflow_run_id": run_id,
    }


def write_outputs(
    stage: str,
    paths: StagePaths,
    model: nn.Module,
    section: Any,
    result: FitResult,
    metrics: dict,
    dataset: Dataset,
    run,
) -> None:
    """Everything but metrics.json (written last, by the caller), model file last."""
    from src import plots

    history = history_csv(result.history)
    atomic_write_bytes(paths.reports / "history.csv", history)
    curves = plots.learning_curves(result.history, stage)
    tracking.write_figure(curves, paths.reports / "learning_curves.png", run)
    labels = dataset.test.labels[: len(result.test_predictions)]
    matrix = plots.confusion_matrix(labels, result.test_predictions.numpy())
    confusion = plots.confusion_figure(
        matrix, f"{stage}: test accuracy {result.final['test_accuracy']:.3f}"
    )
    tracking.write_figure(confusion, paths.reports / "confusion_matrix.png", run)
    save_model_file(
        paths.model,
        model,
        stage,
        section,
        result.final,
        run_id=run.run_id,
        history_sha256=hashlib.sha256(history).hexdigest(),
    )
    run.log_text(history.decode(), "history.csv")
    run.log_dict(to_dict(section), "config.json")
    run.log_dict(metrics, "metrics.json")


def load_data(params: Params, device: torch.device) -> tuple[Dataset, TensorSplits]:
    dataset = load_dataset(resolve_path(params.common.paths.data))
    return dataset, to_tensors(dataset, device)
