"""Stages `figures-<stage>`: a stage's figures, drawn from the numbers it wrote.

python -m pipelines.figures baseline    (dvc repro figures-baseline: learning curves and
                                         confusion matrix from history.csv, predictions.csv)
python -m pipelines.figures download    (dvc repro figures-download: the sample grid, from
                                         the prepared data)

Downstream of the stage it draws, so a figure edit reruns no training. The figures are
also logged to the stage's own MLflow run (its id is in metrics.json) when that run is in
the store; when it is not, one line says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from src import artifacts
from src.artifacts import StagePaths
from src.config.layout import Layout
from src.config.stages import TRAINING_STAGES
from src.data.prepare import load_dataset
from src.report import figures as plots
from src.runtime.entry import guarded
from src.runtime.errors import ReportInputError
from src.tracking.runs import Run, run_summary, write_figure

STAGES = ("download", *(s.name for s in TRAINING_STAGES))


def stage_figures(stage: str, paths: StagePaths, metrics: dict) -> dict[Path, Any]:
    """A training stage's figures (path -> matplotlib figure) from its committed files."""
    try:
        history = artifacts.read_history(paths.history).to_dict("records")
        actual, predicted = artifacts.read_predictions(paths.predictions)
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"{stage}: {exc}; `dvc repro {stage}` writes it") from None
    import numpy as np

    matrix = plots.confusion_matrix(np.asarray(actual), np.asarray(predicted))
    title = f"{stage}: test accuracy {metrics['test_accuracy']:.3f}"
    return {
        paths.learning_curves: plots.learning_curves(history, stage),
        paths.confusion_matrix: plots.confusion_figure(matrix, title),
    }


def data_figures(paths: StagePaths, layout: Layout) -> dict[Path, Any]:
    dataset = load_dataset(layout.data)
    return {paths.samples: plots.sample_grid(dataset.train.images, dataset.train.labels)}


def read_metrics(stage: str, paths: StagePaths) -> dict:
    try:
        return json.loads(paths.metrics.read_text())
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"{stage}: {exc}; `dvc repro {stage}` writes it") from None


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    args = parser.parse_args(argv)

    layout = Layout()
    layout.check_inside()  # a reports/ linked out of the project: refused, nothing written
    paths = StagePaths.for_stage(args.stage, layout.root)
    metrics = read_metrics(args.stage, paths)
    if args.stage == "download":
        figures = data_figures(paths, layout)
    else:
        figures = stage_figures(args.stage, paths, metrics)
    run_id = metrics.get("mlflow_run_id")
    run = Run(run_id) if run_summary(run_id) is not None else None
    for path, figure in figures.items():
        write_figure(figure, path, run)
    names = ", ".join(p.name for p in figures)
    if run is not None:
        print(f"[figures] {args.stage}: {names}, logged to MLflow run {run_id}")
    elif run_id:
        print(
            f"[figures] {args.stage}: {names}; MLflow run {run_id} is not in this store: not logged"
        )
    else:
        print(f"[figures] {args.stage}: {names}; metrics.json names no MLflow run: not logged")


if __name__ == "__main__":
    main()
