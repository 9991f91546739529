"""A stage's numerics in the report: what it computed in, its run beside the float32 run
kept for it (reports/numerics/fp32/<stage>/), and where its wall time went."""

from __future__ import annotations

from typing import Any

import pandas as pd

from src.config.stages import Stage
from src.report import figures as plots
from src.report.formats import (
    figure_link,
    fmt_metric,
    fmt_seconds,
    fmt_value,
    markdown_table,
    signed,
)
from src.report.inputs import RecordedRun, StageOutputs

# metrics.json's `time_shares` keys, in the order the report names them
TIME_SHARES = {
    "training": "training",
    "evaluation": "evaluation",
    "feature_caching": "feature caching",
    "tracking": "tracking",
    "startup": "startup",
    "other": "other",
}


def numerics_label(metrics: dict) -> str:
    """What a run computed in, from its metrics.json: `numerics` (bf16 | fp32; a file
    without the key was written when every run computed in float32) and `channels_last`."""
    numerics = metrics.get("numerics") or "fp32"
    label = {"bf16": "bf16 autocast", "fp32": "float32"}.get(numerics, str(numerics))
    return label + (" + channels_last" if metrics.get("channels_last") else "")


def time_shares_paragraph(m: dict) -> list[str]:
    """Where the stage's wall time went (`wall_time_s`, `time_shares` in metrics.json);
    nothing for a metrics.json without them."""
    shares, wall = m.get("time_shares"), m.get("wall_time_s")
    if not isinstance(shares, dict) or not wall:
        return []
    parts = [
        f"{name} {shares[key] * 100:.1f} %" for key, name in TIME_SHARES.items() if key in shares
    ]
    return [
        f"**Where the wall time went**: {fmt_seconds(wall)} from the process's start to the "
        f"stage's end: {', '.join(parts)} (`time_shares` in `metrics.json`).",
        "",
    ]


def _speed_up(before: Any, after: Any) -> str:
    """before / after as "2.05×"; "—" where either is missing or zero."""
    if not before or not after:
        return "—"
    return f"{before / after:.2f}×"


def numerics_section(
    info: Stage, outputs: StageOutputs, fp32: RecordedRun | None, figures: dict
) -> list[str]:
    """The stage's run next to its float32 run (reports/numerics/fp32/<stage>/): validation
    curves on one figure, and training speed and test accuracy of both. Nothing when no
    float32 run is kept for the stage."""
    if fp32 is None:
        return []
    t, now, then = info.heading, outputs.metrics, fp32.metrics
    lines = [f"### {t}: numerics against the float32 run", ""]
    same = now == then or (
        now.get("mlflow_run_id") is not None
        and now.get("mlflow_run_id") == then.get("mlflow_run_id")
    )
    if same:
        return lines + [
            f"`{outputs.files['metrics']}` is the float32 run kept in `{fp32.files['metrics']}` "
            f"(MLflow run `{now.get('mlflow_run_id') or '—'}`): nothing to compare until the "
            "stage runs again in other numerics.",
            "",
        ]
    name = f"{info.name}_numerics_curves.png"
    figures[name] = plots.compare_validation(
        {
            f"this run: {numerics_label(now)}": outputs.history.to_dict("records"),
            f"float32 run: {numerics_label(then)}": fp32.history.to_dict("records"),
        },
        f"Task {info.task} ({info.name})",
    )
    # times compare numerics only on one machine (files written before metrics.json named
    # it name none: the fp32 record's README says where they ran)
    one_machine = now.get("machine") == then.get("machine")
    speed_up = _speed_up if one_machine else (lambda *_: "— (other machine)")
    unnamed = f"not recorded ({fp32.files['metrics'].rsplit('/', 2)[0]}/README.md)"
    rows = [
        ("Machine", then.get("machine") or unnamed, now.get("machine") or "not recorded", "—"),
        ("Numerics", numerics_label(then), numerics_label(now), "—"),
        (
            "Training images/s",
            fmt_value(then.get("train_images_per_s")),
            fmt_value(now.get("train_images_per_s")),
            speed_up(now.get("train_images_per_s"), then.get("train_images_per_s")),
        ),
        ("Training steps", fmt_value(then.get("steps")), fmt_value(now.get("steps")), "—"),
        (
            "Training time",
            fmt_seconds(then.get("train_time_s")),
            fmt_seconds(now.get("train_time_s")),
            speed_up(then.get("train_time_s"), now.get("train_time_s")),
        ),
    ]
    if "feature_cache_time_s" in then or "feature_cache_time_s" in now:
        rows.append(
            (
                "Feature caching time",
                fmt_seconds(then.get("feature_cache_time_s")),
                fmt_seconds(now.get("feature_cache_time_s")),
                speed_up(then.get("feature_cache_time_s"), now.get("feature_cache_time_s")),
            )
        )
    before, after = then.get("test_accuracy"), now.get("test_accuracy")
    rows.append(
        (
            "Test accuracy",
            fmt_metric(before),
            fmt_metric(after),
            signed(after - before) if before is not None and after is not None else "—",
        )
    )
    columns = ["Measure", "Float32 run", "This run", "Speed-up (accuracy: difference)"]
    return lines + [
        figure_link(name, f"{info.name}: validation curves of this run and the float32 run"),
        "",
        f"This run (`{outputs.files['metrics']}`, `{outputs.files['history']}`) against the "
        f"float32 run kept in `{fp32.files['metrics']}` and `{fp32.files['history']}`. A "
        "speed-up compares numerics only where both ran on one machine; across machines the "
        "benchmark's variants on one machine do (BENCHMARKS.md).",
        "",
        markdown_table(pd.DataFrame(rows, columns=columns), right=columns[1:]),
        "",
    ]
