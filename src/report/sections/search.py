"""Task 3's search in the report, after the `tuned` stage's own section: the study in
numbers and figures (reports/tune/<study>/), the design it found beside the hand design
(both stages' configs and metrics, both learning curves on one figure), and how the study's
low-fidelity order holds at full size (fidelity.csv, where it exists)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from src.config.design import study_slug
from src.config.schema import CNNStageConfig
from src.config.stages import get_stage
from src.config.typed import build, to_dict
from src.report import figures as plots
from src.report.formats import (
    figure_link,
    fmt_duration,
    fmt_literal,
    fmt_metric,
    fmt_seconds,
    fmt_value,
    markdown_table,
    signed,
)
from src.report.inputs import RecordedRun, ReportInputs, StageOutputs
from src.report.network import n_parameters, stage_network
from src.report.search_inputs import FIDELITY_COMMAND, TRIAL_STATES, TUNE_PARAMS, Study
from src.report.sections.numerics import numerics_label
from src.runtime.errors import ConfigError

STAGE = "tuned"  # the stage that trains the search's best design
CURVES = "tuned_search_curves.png"


def spearman(x: Any, y: Any) -> tuple[float | None, int]:
    """Spearman's rank correlation of the pairs where both values exist (average ranks for
    ties) and how many pairs that is; None where it is undefined (under 2 pairs, or one
    side constant)."""
    pairs = pd.DataFrame({"x": list(x), "y": list(y)}).apply(pd.to_numeric).dropna()
    rx, ry = pairs["x"].rank(), pairs["y"].rank()
    if len(pairs) < 2 or rx.nunique() < 2 or ry.nunique() < 2:
        return None, len(pairs)
    return float(rx.corr(ry)), len(pairs)


def _study(inputs: ReportInputs) -> Study | None:
    """The study the `tuned` stage trains from (params.yaml `tune.study`); else the first."""
    name = study_slug(str(inputs.tune_params.get("study", "")))
    by_name = {s.name: s for s in inputs.tune}
    return by_name.get(name) or (inputs.tune[0] if inputs.tune else None)


def _budget(trials: pd.DataFrame, n_train: int) -> str:
    """The per-trial budgets trials.csv records: "2 epochs of 10,000 training images (41
    trials)"; subset 0 is the whole training split."""
    parts = []
    for (epochs, subset), group in trials.groupby(["epochs", "subset"], dropna=False):
        images = int(subset) if subset and not pd.isna(subset) else n_train
        parts.append(
            f"{fmt_value(epochs)} epoch{'s' if epochs != 1 else ''} of {images:,} training "
            f"images ({fmt_value(images * epochs)} images seen at most; {len(group)} trials)"
        )
    return "; ".join(parts)


def _space_cell(spec: Any) -> str:
    if not isinstance(spec, dict):
        return fmt_literal(spec)
    if spec.get("kind") == "categorical":
        return "one of " + fmt_literal(spec.get("choices"))
    scale = ", log scale" if spec.get("log") else ""
    step = f", step {fmt_value(spec['step'])}" if spec.get("step") else ""
    low, high = fmt_value(spec.get("low")), fmt_value(spec.get("high"))
    return f"{spec.get('kind')} {low} to {high}{step}{scale}"


def _knob_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else fmt_value(value)


def study_lines(study: Study, inputs: ReportInputs, n_train: int, copies: dict) -> list[str]:
    """The study in numbers (trials.csv), its best_params.yaml, the knobs searched and its
    figures (copied beside the report's own)."""
    lines = [f"Study `{study.name}`: `{study.file}`, `{study.trials_file}`.", ""]
    storage = inputs.tune_params.get("storage")
    if storage and "://" not in str(storage):  # a file in the project: a clone continues it
        lines[0] = lines[0][:-1] + (
            f"; the study itself: `{storage}` (params.yaml `tune.storage`), which "
            "`python -m src.tune` continues."
        )
    trials = study.trials
    if trials is None:
        lines += [f"`{study.trials_file}` is not here: no count of the trials.", ""]
    else:
        states = trials["state"].value_counts()
        counted = ", ".join(f"{states.get(k, 0)} {v}" for k, v in TRIAL_STATES.items())
        other = len(trials) - sum(states.get(k, 0) for k in TRIAL_STATES)
        seconds = pd.to_numeric(trials["seconds"], errors="coerce").dropna()
        complete = trials[trials["state"] == "COMPLETE"].dropna(subset=["val_accuracy"])
        best = complete.loc[complete["val_accuracy"].idxmax()] if len(complete) else None
        lines += [
            f"**{len(trials)} trials**: {counted}" + (f", {other} other" if other else "") + ".",
            "",
            f"- Budget per trial: {_budget(trials, n_train)}; the test split is never used.",
            f"- Trial time: {fmt_duration(seconds.sum())} in all "
            f"({fmt_seconds(seconds.sum())}), median {fmt_seconds(seconds.median())} per trial.",
            (
                f"- Best trial: **{int(best['number'])}**, validation accuracy "
                f"**{fmt_metric(best['val_accuracy'])}** at that budget."
                if best is not None
                else "- No trial has completed."
            ),
        ]
        first = complete[complete["number"] == 0]
        if len(first):  # src.tune enqueues the hand design as the study's first trial
            lines.append(
                "- Trial 0, the hand design as the space expresses it (`src.tune` enqueues it "
                f"first): validation accuracy {fmt_metric(first['val_accuracy'].iloc[0])}."
            )
        lines.append("")
    if study.header:  # src.tune's comment: best trial, its budget, the retrain command
        lines += ["```text", *study.header, "```", ""]
    space = inputs.tune_params.get("space") or {}
    searched = "Searched (params.yaml `tune.space`)"
    rows = [
        {
            "Knob": f"`{knob}`",
            searched: _space_cell(space[knob]) if knob in space else "—",
            "Best trial": _knob_value(study.knobs[knob]) if knob in study.knobs else "—",
        }
        for knob in [*space, *(k for k in study.knobs if k not in space)]
    ]
    if rows:
        lines += [markdown_table(pd.DataFrame(rows)), ""]
    for figure in study.figures:
        # copied beside the report's own figures: a DVC output, so links resolve
        # wherever the report does (a fresh clone after `dvc pull`)
        name = f"tune-{study.name}-{Path(figure).name}"
        copies[name] = Path(figure)
        lines += [figure_link(name, f"Study {study.name}: {Path(figure).stem}"), ""]
    return lines


def _typed(outputs: StageOutputs) -> dict:
    """The stage's config with the schema's defaults filled in (a knob the config leaves
    out is its default); the config as it is where it does not build."""
    try:
        return to_dict(build(CNNStageConfig, outputs.config))
    except (ConfigError, TypeError):
        return outputs.config


def design_rows(hand: StageOutputs, found: StageOutputs) -> pd.DataFrame:
    """The hand design and the search's side by side: knobs, size, cost and accuracy."""

    def column(o: StageOutputs) -> list[str]:
        m, c = o.metrics, _typed(o) if o.config else None
        model, train = (c or {}).get("model", {}), (c or {}).get("train", {})
        params = n_parameters(stage_network(o.config, o.stage)[0]) if o.config else None
        batch = train.get("batch_size")
        seen = m["steps"] * batch if batch and m.get("steps") is not None else None
        return [
            fmt_value(model.get("filters")),
            fmt_value(model.get("kernel_size")),
            _knob_value(model.get("dropout")),
            fmt_value(train.get("optimizer")),
            _knob_value(train.get("lr")),
            _knob_value(train.get("momentum")),
            fmt_value(train.get("scheduler")),
            _knob_value(train.get("label_smoothing")),
            _knob_value(train.get("weight_decay")),
            fmt_value(batch),
            fmt_value(params),
            fmt_value(seen),
            fmt_value(m.get("train_images_per_s")),
            fmt_seconds(m.get("wall_time_s")),
            numerics_label(m),
            fmt_metric(m.get("final_val_accuracy")),
            fmt_metric(m.get("test_accuracy")),
        ]

    measures = [
        "Conv filters",
        "Kernel size",
        "Dropout",
        "Optimizer",
        "Learning rate",
        "Momentum",
        "Scheduler",
        "Label smoothing",
        "Weight decay",
        "Batch size",
        "Parameters",
        "Training images seen",
        "Training images/s",
        "Wall time",
        "Numerics",
        "Best validation accuracy (checkpoint)",
        "Test accuracy",
    ]
    return pd.DataFrame(
        {
            "Measure": measures,
            f"{hand.stage} (hand)": column(hand),
            f"{found.stage} (search)": column(found),
        }
    )


def _images_seen(history: pd.DataFrame, batch_size: int) -> list[dict]:
    rows = history.to_dict("records")
    return [{**r, "images": r["step"] * batch_size} for r in rows]


def curves_figure(
    hand: StageOutputs, found: StageOutputs, fp32: RecordedRun | None, figures: dict
) -> str:
    """Both stages' validation curves (and the hand design's float32 run, where kept)
    against training images seen; the figure's file name."""
    batch = {o.stage: (_typed(o).get("train", {}).get("batch_size") or 0) for o in (hand, found)}
    histories = {
        f"{hand.stage} (hand, {numerics_label(hand.metrics)})": _images_seen(
            hand.history, batch[hand.stage]
        ),
        f"{found.stage} (search, {numerics_label(found.metrics)})": _images_seen(
            found.history, batch[found.stage]
        ),
    }
    if fp32 is not None:  # the hand design at the hand design's batch size
        label = f"{hand.stage} (hand, {numerics_label(fp32.metrics)} run)"
        histories[label] = _images_seen(fp32.history, batch[hand.stage])
    figures[CURVES] = plots.compare_validation(
        histories,
        "Task 3: hand design and search",
        x="images",
        xlabel="Training images seen (step × batch size)",
    )
    return CURVES


def comparison_lines(inputs: ReportInputs, base: str, figures: dict) -> list[str]:
    found, hand = inputs.stages.get(STAGE), inputs.stages.get(base)
    if found is None:
        return [
            f"`{STAGE}` has not run here: `dvc repro {STAGE}` trains the study's best design "
            "at full size (its section above says what it costs).",
            "",
        ]
    if hand is None:
        return [f"Needs the `{base}` stage too: `dvc repro {base}`.", ""]
    if found.config is None or hand.config is None:
        lines = ["The designs need the stages' configs (their model files or `dvc.lock`).", ""]
    else:
        rows = design_rows(hand, found)
        lines = [markdown_table(rows, right=list(rows.columns[1:])), ""]
    fp32 = inputs.fp32.get(base)
    name = curves_figure(hand, found, fp32, figures)
    a, b = hand.metrics.get("test_accuracy"), found.metrics.get("test_accuracy")
    gain = f" ({signed(b - a)})" if a is not None and b is not None else ""
    also = (
        f"; the hand design's {numerics_label(fp32.metrics)} run "
        f"(`{fp32.files['metrics']}`): {fmt_metric(fp32.metrics.get('test_accuracy'))}"
        if fp32 is not None
        else ""
    )
    return lines + [
        f"**Test accuracy**: `{base}` (hand) {fmt_metric(a)}, `{STAGE}` (search) "
        f"{fmt_metric(b)}{gain}{also}.",
        "",
        figure_link(name, "Validation loss and accuracy of the hand and the searched design"),
        "",
        "Against training images seen (step × batch size), so designs of other batch sizes "
        "line up; each stage's `history.csv`.",
        "",
    ]


def fidelity_lines(study: Study | None) -> list[str]:
    if study is None or study.fidelity is None:
        where = f"`{study.fidelity_file}`" if study else "`reports/tune/<study>/fidelity.csv`"
        return [
            f"{where} is not here: no trial has been retrained at full size "
            f"(`{FIDELITY_COMMAND}` makes it).",
            "",
        ]
    f = study.fidelity

    def cell(row: pd.Series, key: str, fmt) -> str:
        value = row.get(key)
        return "—" if value is None or pd.isna(value) else fmt(value)

    rows = [
        {
            "Name": f"`{r['name']}`",
            "Study rank": cell(r, "study_rank", lambda v: f"{int(v)}"),
            "Study val accuracy": cell(r, "study_val_accuracy", fmt_metric),
            "Full-size rank": cell(r, "full_rank", lambda v: f"{int(v)}"),
            "Full-size val accuracy": cell(r, "final_val_accuracy", fmt_metric),
            "Test accuracy": cell(r, "test_accuracy", fmt_metric),
            "Numerics": cell(r, "numerics", str),
            "Machine": cell(r, "machine", str),
        }
        for _, r in f.iterrows()
    ]
    rho, n = spearman(f["study_val_accuracy"], f["final_val_accuracy"])
    said = (
        f"Spearman rank correlation between the study's score and the full-size validation "
        f"accuracy: **{rho:+.2f}** (n = {n} designs with both"
        + ("; few pairs: a weak test" if n < 5 else "")
        + ")."
        if rho is not None
        else f"Spearman rank correlation: undefined (n = {n} designs with both scores)."
    )
    numeric = ["Study rank", "Study val accuracy", "Full-size rank", "Full-size val accuracy"]
    return [
        f"The top trials retrained at full size (`{study.fidelity_file}`, `{FIDELITY_COMMAND}`):",
        "",
        markdown_table(pd.DataFrame(rows), right=[*numeric, "Test accuracy"]),
        "",
        said,
        "",
    ]


def search_section(inputs: ReportInputs, figures: dict, copies: dict[str, Path]) -> list[str]:
    """The search behind the `tuned` stage, placed after that stage's section."""
    t = get_stage(STAGE).heading
    base = str(inputs.tune_params.get("base") or "improved")
    n_train = (inputs.manifest or {}).get("counts", {}).get("train") or 45_000
    study = _study(inputs)
    lines = [f"### {t}: the search", ""]
    if study is None:
        lines += [
            f"No tuning study was run: `{inputs.tune_dir}/` holds no `<study>/{TUNE_PARAMS}` "
            "(`python -m src.tune` writes one; commit it with git to show it here).",
            "",
        ]
    else:
        lines += study_lines(study, inputs, n_train, copies)
    lines += [f"### {t}: the search's design against the hand design", ""]
    lines += comparison_lines(inputs, base, figures)
    lines += [f"### {t}: low against full fidelity", ""]
    return lines + fidelity_lines(study)
