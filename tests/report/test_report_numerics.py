"""The report beside the float32 runs (reports/numerics/fp32/<stage>/): validation curves of
both on one figure, numerics, speed and test accuracy of both; and where a stage's wall
time went (`time_shares` in metrics.json). Tiny hand-written files under tmp_path."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from src.config.layout import PROJECT_ROOT, Layout
from src.config.stages import get_stage
from src.report.inputs import (
    ReportInputs,
    StageOutputs,
    load_recorded_runs,
)
from src.report.sections.numerics import numerics_label
from src.report.sections.stage import stage_section
from tests.report.test_report import _section, _table

FINAL = {
    "final_train_loss": 0.4,
    "final_train_accuracy": 0.86,
    "final_val_loss": 0.5,
    "final_val_accuracy": 0.83,
    "test_loss": 0.52,
}
# The float32 run as files of that time wrote it: no `numerics`, no `time_shares`.
FP32_METRICS = {
    **FINAL,
    "test_accuracy": 0.815,
    "steps": 700,
    "epochs_run": 1.0,
    "best_step": 700,
    "early_stop_step": None,
    "train_time_s": 1000.0,
    "eval_time_s": 100.0,
    "train_images_per_s": 100.0,
    "mlflow_run_id": "f" * 32,
}
BF16_METRICS = {
    **FP32_METRICS,
    "test_accuracy": 0.82,
    "train_time_s": 400.0,
    "train_images_per_s": 250.0,
    "mlflow_run_id": "b" * 32,
    "numerics": "bf16",
    "numerics_reason": "the CPU has native bf16 (avx512_bf16)",
    "channels_last": True,
    "wall_time_s": 600.0,
    "time_shares": {
        "startup": 0.05,
        "training": 0.6667,
        "evaluation": 0.1,
        "feature_caching": 0.0,
        "tracking": 0.01,
        "other": 0.1733,
    },
}


def _history(val_losses: list[float]) -> pd.DataFrame:
    rows = [
        {
            "step": 350 * (i + 1),
            "epoch": 0.5 * (i + 1),
            "train_loss": loss + 0.1,
            "train_loss_std": 0.1,
            "train_accuracy": 0.5,
            "val_loss": loss,
            "val_accuracy": 1.0 - loss,
            "lr": 0.05,
            "images_per_s": 100.0,
        }
        for i, loss in enumerate(val_losses)
    ]
    return pd.DataFrame(rows)


def _record(root, stage: str, metrics: dict, history: pd.DataFrame) -> None:
    folder = Layout(root).fp32_runs / stage
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    history.to_csv(folder / "history.csv", index=False)


def _inputs(root, stage: str, metrics: dict, history: pd.DataFrame) -> ReportInputs:
    outputs = StageOutputs(
        stage=stage,
        metrics=metrics,
        history=history,
        config=None,
        model_metrics={},
        files={
            "metrics": f"reports/{stage}/metrics.json",
            "history": f"reports/{stage}/history.csv",
            "model": f"models/{stage}.pt",
        },
        has_model=False,
    )
    return ReportInputs(
        stages={stage: outputs},
        missing={},
        manifest=None,
        manifest_file="data/cifar10/manifest.json",
        download=None,
        tune=[],
        baseline_params={},
        fp32=load_recorded_runs(Layout(root).fp32_runs, root),
    )


def _render(inputs: ReportInputs, stage: str) -> tuple[str, dict]:
    figures: dict = {}
    text = "\n".join(stage_section(get_stage(stage), inputs, {}, figures))
    return text, figures


def test_a_stage_is_shown_beside_its_float32_run(tmp_path):
    _record(tmp_path, "improved", FP32_METRICS, _history([0.9, 0.6, 0.5]))
    inputs = _inputs(tmp_path, "improved", BF16_METRICS, _history([0.8, 0.55]))
    text, figures = _render(inputs, "improved")

    section = _section(text, "### Task 3 (improved): numerics against the float32 run")
    assert "![improved: validation curves of this run and the float32 run]" in section
    assert "(report/improved_numerics_curves.png)" in section
    assert "`reports/numerics/fp32/improved/metrics.json`" in section
    rows = {r["Measure"]: r for r in _table(section)}
    assert rows["Numerics"]["Float32 run"] == "float32"
    assert rows["Numerics"]["This run"] == "bf16 autocast + channels_last"
    speed = "Speed-up (accuracy: difference)"
    assert rows["Training images/s"]["Float32 run"] == "100"
    assert rows["Training images/s"]["This run"] == "250"
    assert rows["Training images/s"][speed] == "2.50×"
    assert rows["Training time"]["Float32 run"] == "1,000 s"
    assert rows["Training time"]["This run"] == "400 s"
    assert rows["Training time"][speed] == "2.50×"
    assert rows["Test accuracy"]["Float32 run"] == "0.8150"
    assert rows["Test accuracy"]["This run"] == "0.8200"
    assert rows["Test accuracy"][speed] == "+0.0050"
    assert "Feature caching time" not in rows  # neither run cached features

    # one figure: both runs' validation loss (left) and accuracy (right), labelled
    figure = figures["improved_numerics_curves.png"]
    loss, accuracy = figure.axes
    labels = [
        "this run: bf16 autocast + channels_last",
        "float32 run: float32",
    ]
    assert loss.get_legend_handles_labels()[1] == labels
    assert accuracy.get_legend_handles_labels()[1] == labels
    bf16_line, fp32_line = loss.get_lines()
    assert list(bf16_line.get_xdata()) == [350, 700]
    assert list(fp32_line.get_ydata()) == [0.9, 0.6, 0.5]
    assert list(accuracy.get_lines()[1].get_ydata()) == pytest.approx([0.1, 0.4, 0.5])


def test_runs_on_other_machines_compare_accuracy_not_speed(tmp_path):
    _record(tmp_path, "improved", FP32_METRICS, _history([0.9, 0.6, 0.5]))  # names none
    now = {**BF16_METRICS, "machine": "Intel(R) Xeon(R) Processor, 2 cores"}
    text, _ = _render(_inputs(tmp_path, "improved", now, _history([0.8, 0.55])), "improved")
    rows = {
        r["Measure"]: r
        for r in _table(_section(text, "### Task 3 (improved): numerics against the float32 run"))
    }
    speed = "Speed-up (accuracy: difference)"
    assert rows["Machine"]["This run"] == "Intel(R) Xeon(R) Processor, 2 cores"
    assert rows["Machine"]["Float32 run"] == "not recorded (reports/numerics/fp32/README.md)"
    assert rows["Training images/s"][speed] == rows["Training time"][speed] == "— (other machine)"
    assert rows["Test accuracy"][speed] == "+0.0050"


def test_feature_caching_is_compared_where_a_stage_caches(tmp_path):
    _record(tmp_path, "lite", {**FP32_METRICS, "feature_cache_time_s": 900.0}, _history([0.5]))
    now = {**BF16_METRICS, "feature_cache_time_s": 300.0}
    text, _ = _render(_inputs(tmp_path, "lite", now, _history([0.4])), "lite")
    rows = {
        r["Measure"]: r
        for r in _table(_section(text, "### Task 4a (lite): numerics against the float32 run"))
    }
    assert rows["Feature caching time"]["Float32 run"] == "900 s"
    assert rows["Feature caching time"]["This run"] == "300 s"
    assert rows["Feature caching time"]["Speed-up (accuracy: difference)"] == "3.00×"


def test_the_float32_run_itself_is_not_compared_with_itself(tmp_path):
    """Until a stage reruns, its metrics.json is the kept float32 run: no figure."""
    history = _history([0.9, 0.6])
    _record(tmp_path, "improved", FP32_METRICS, history)
    text, figures = _render(_inputs(tmp_path, "improved", FP32_METRICS, history), "improved")
    section = _section(text, "### Task 3 (improved): numerics against the float32 run")
    assert "nothing to compare until the stage runs again in other numerics" in section
    assert figures.keys() == {"improved_learning_curves.png"}


def test_without_a_kept_run_or_time_shares_nothing_is_added(tmp_path):
    """A stage with no float32 run kept (or only half of one) has no comparison; a
    metrics.json without `time_shares` (written before they existed) no time line."""
    folder = Layout(tmp_path).fp32_runs / "improved"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(FP32_METRICS))  # no history.csv
    inputs = _inputs(tmp_path, "improved", FP32_METRICS, _history([0.5]))
    assert inputs.fp32 == {}
    text, figures = _render(inputs, "improved")
    assert "numerics against the float32 run" not in text
    assert "Where the wall time went" not in text
    assert figures.keys() == {"improved_learning_curves.png"}


def test_where_the_wall_time_went_is_one_line_per_stage(tmp_path):
    text, _ = _render(_inputs(tmp_path, "improved", BF16_METRICS, _history([0.5])), "improved")
    curves = _section(text, "### Task 3 (improved): learning curves")
    assert (
        "**Where the wall time went**: 600 s from the process's start to the stage's end: "
        "training 66.7 %, evaluation 10.0 %, feature caching 0.0 %, tracking 1.0 %, "
        "startup 5.0 %, other 17.3 % (`time_shares` in `metrics.json`)."
    ) in curves
    unknown = {**BF16_METRICS, "wall_time_s": None, "time_shares": None}  # no process start
    text, _ = _render(_inputs(tmp_path, "improved", unknown, _history([0.5])), "improved")
    assert "Where the wall time went" not in text


def test_the_committed_float32_runs_are_read_as_float32():
    runs = load_recorded_runs(Layout(PROJECT_ROOT).fp32_runs, PROJECT_ROOT)
    assert set(runs) == {"baseline", "improved", "lite"}
    for stage, run in runs.items():
        assert numerics_label(run.metrics) == "float32"
        assert run.files["metrics"] == f"reports/numerics/fp32/{stage}/metrics.json"
        assert len(run.history) and {"step", "val_loss", "val_accuracy"} <= set(run.history)
