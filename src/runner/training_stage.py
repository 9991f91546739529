"""What every training stage does around `fit`: tracking, checkpoint/resume, and the
outputs DVC tracks (their layout: `src.artifacts`). What it trains comes from
`src.training.recipe`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from torch import nn

from src import artifacts
from src.artifacts import StagePaths
from src.config.profiles import smoke_reasons
from src.config.schema import Params
from src.config.typed import config_hash, to_dict
from src.data.prepare import Dataset
from src.data.sources import source_location
from src.runtime.machine import machine
from src.tracking import dead_runs, registry
from src.tracking.datasets import log_datasets
from src.tracking.runs import ValidationLogger, run_params, stage_run
from src.training.checkpoint import load_checkpoint
from src.training.loop import FitResult
from src.training.recipe import StageRecipe, fit_recipe, with_numerics


def run_training_stage(
    stage: str, params: Params, section: Any, recipe: StageRecipe, *, progress: bool = True
) -> dict:
    """Train what `recipe` says (`src.training.recipe.stage_recipe`, which loaded the
    data set) with tracking, resume and outputs. `recipe.model` is what is saved and
    logged; `recipe.fit_model` may be a part of it that trains on precomputed inputs
    (ResNet feature caching); `recipe.metrics` join the stage's metrics."""
    dataset = recipe.dataset
    if dataset is None:
        raise ValueError("a training stage's recipe loads the data set itself")
    paths = StagePaths.for_stage(stage)
    logged = {"common": params.common, stage: section}
    key = config_hash(logged)
    previous = load_checkpoint(paths.checkpoint, key)
    extra = (previous or {}).get("extra", {})
    resume_id = extra.get("run_id")
    if isinstance(extra.get("bf16"), bool) and isinstance(extra.get("channels_last"), bool):
        reason = f"{extra.get('numerics_reason')} (resumed in the checkpoint's numerics)"
        recipe = with_numerics(recipe, extra["bf16"], extra["channels_last"], reason)
    if resume_id and not dead_runs.mark_run_killed(resume_id):  # a SIGKILLed run: KILLED
        print(
            f"[{stage}] note: MLflow run {resume_id} of the checkpoint is not in the MLflow "
            "store in use (deleted, or MLFLOW_TRACKING_URI changed); training resumes from "
            "the checkpoint in a new run"
        )
        resume_id = None

    tracked = run_params(params, section, precision=params.common.precision)
    with stage_run(
        stage, tracked, experiment=params.common.experiment, run_id=resume_id, tags=recipe.tags
    ) as run:
        # on resume too: final metrics and the model link to the splits
        log_datasets(run, dataset, source_location(params.data))

        log_validation = ValidationLogger(run)
        result = fit_recipe(
            recipe,
            seed=params.common.seed,
            on_validation=log_validation,
            checkpoint_path=paths.checkpoint,
            checkpoint_extra={
                "run_id": run.run_id,
                "bf16": recipe.placement.bf16,
                "channels_last": recipe.placement.channels_last,
                "numerics_reason": recipe.placement.reason,
            },
            config_key=key,
            progress=progress,
            name=stage,
            params_key=f"{stage}.train",
        )
        tic = time.perf_counter()
        metrics = {
            **stage_metrics(result, run.run_id),
            **recipe.metrics,
            **recipe.placement.describe(),
        }
        write_outputs(stage, paths, recipe.model, section, result, metrics, dataset, run)
        run.log_metrics(
            {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in result.final
            },
            step=result.steps,
        )
        registered = registry.log_model(
            run,
            stage,
            lambda: served_model(paths.model, dataset.val.images[:2]),
            final_metrics=result.final,
            step=result.steps,
            smoke=smoke_reasons(to_dict(section), params.profile),
        )
        if registered:
            print(f"[{stage}] {registered}")
        # Tracking cost: per-validation logging plus the final artifacts and model,
        # against the stage's training + evaluation time.
        tracking_time = log_validation.seconds + time.perf_counter() - tic
        total = result.train_time_s + result.eval_time_s
        metrics["tracking_time_s"] = round(tracking_time, 3)
        metrics["tracking_share"] = round(tracking_time / total, 4) if total else 0.0
        metrics.update(time_shares(result, recipe.metrics, tracking_time))
        artifacts.atomic_write_json(paths.metrics, metrics)
    paths.checkpoint.unlink(missing_ok=True)
    return metrics


def served_model(model_file: Path, input_example: Any) -> dict[str, Any]:
    """What `registry.log_model` logs: the model file as the project's pyfunc (MLflow is
    imported only when a run is tracked)."""
    from src.inference.pyfunc import pyfunc_model

    return pyfunc_model(model_file, input_example)


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
        "machine": machine(),  # throughput and times are this machine's
    }


def process_started_at() -> float | None:
    """time.time() when this process started, or None where that cannot be had."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # no psutil, or a platform it cannot read
        return None


def time_shares(
    result: FitResult, recipe_metrics: dict, tracking_s: float, now: float | None = None
) -> dict:
    """Where this process's wall time went, as shares of it: `startup` (process start
    to the first training step, less the feature caching within it), `training`
    (steps), `evaluation` (validations and final figures), `feature_caching`,
    `tracking` (MLflow logging, figures and model files) and `other` (checkpoints, best
    state copies, whatever is left), summing to 1. A resumed run's training and
    evaluation times include the killed process's, so its `other` comes out negative."""
    started = process_started_at()
    now = time.time() if now is None else now
    wall = now - started if started is not None else math.nan
    if not wall > 0:
        return {"wall_time_s": None, "time_shares": None}
    caching = float(recipe_metrics.get("feature_cache_time_s", 0.0))
    seconds = {
        "startup": max(result.started_at - started - caching, 0.0),
        "training": result.train_time_s,
        "evaluation": result.eval_time_s,
        "feature_caching": caching,
        "tracking": tracking_s,
    }
    shares = {k: round(v / wall, 4) for k, v in seconds.items()}
    shares["other"] = round(1.0 - sum(shares.values()), 4)
    return {"wall_time_s": round(wall, 2), "time_shares": shares}


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
    """Everything but metrics.json (written last, by the caller), model file last. Numbers
    only: the stage's figures are drawn from these files downstream (`pipelines.figures`)."""
    history_sha256 = artifacts.write_history(paths.history, result.history)
    labels = dataset.test.labels[: len(result.test_predictions)]
    artifacts.write_predictions(paths.predictions, labels, result.test_predictions.tolist())
    artifacts.write_model_file(
        paths.model,
        model,
        stage,
        section,
        result.final,
        run_id=run.run_id,
        history_sha256=history_sha256,
    )
    run.log_artifact(paths.history)
    run.log_artifact(paths.predictions)
    run.log_dict(to_dict(section), "config.json")
    run.log_dict(metrics, "metrics.json")
