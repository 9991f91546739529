"""Building blocks of the report (`src.report.build`): the course's values and measured
training rates, number and markdown-table formatting, architecture tables rebuilt from a
stage's resolved config, and task 1 (computed by `src.report.theory`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from src.config.schema import CNNStageConfig, TransferConfig
from src.config.stages import get_stage
from src.config.typed import build
from src.report import theory

FIGURE_DIR = "report"  # figures, beside report.md (links in it are relative)

# The course report these stages reproduce: the values a reviewer compares against.
REFERENCE_SOURCE = "the TDT4265 assignment 3 course report (tasks 2, 3 and 4a)"
REFERENCE: dict[str, dict[str, float | int]] = {
    "baseline": {"test_accuracy": 0.756, "n_parameters": 390_410},
    "improved": {"test_accuracy": 0.811},
    "resnet": {"test_accuracy": 0.889},
    "lite": {"test_accuracy": 0.889},  # task 4a's figure: the course fine-tuned ResNet18
}


# --------------------------------------------------------------------------- formatting


def fmt_metric(value: Any) -> str:
    """Losses and accuracies with 4 decimals (test accuracy on 10,000 images is exact)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}"


def fmt_value(value: Any) -> str:
    """A config or count value as a reader expects it: 390,410 · 5,616 · 507.66 · 0.05 ·
    true. Every number of 1,000 or more gets thousands separators: the report's one format
    for counts, steps, sizes and timings (a params.yaml value is shown as `fmt_literal`)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"  # 708.0 images/s, 2,048.0: no exponent, no ".0"
        return f"{value:,g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_literal(v).strip("`") for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items())
    return str(value)


def fmt_literal(value: Any) -> str:
    """A params.yaml value as code, written as YAML writes it: `[128, 256, 512, 1024]`,
    `0.05`, `1.0e-06`, `true`, `{crop_padding: 4, hflip: true}`. A literal is what the
    reader types into params.yaml, so it is shown as code and not as a formatted number."""
    import yaml

    if isinstance(value, np.generic):
        value = value.item()
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
    text = text.strip().removesuffix("...").strip()
    return f"`{text}`"


def markdown_table(frame: pd.DataFrame, right: Sequence[str] = ()) -> str:
    """A GitHub markdown table of `frame`'s cells as strings (no `tabulate` needed);
    columns named in `right` are right-aligned."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---:" if c in right else "---" for c in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *rows])


def format_frame(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]]) -> pd.DataFrame:
    out = frame.copy().astype(object)
    for column, formatter in formats.items():
        out[column] = [formatter(v) for v in frame[column]]
    return out


def figure_link(name: str, alt: str) -> str:
    return f"![{alt}]({FIGURE_DIR}/{name})"


def signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


# --------------------------------------------------------------------------- models


def typed_section(stage: str, config: dict) -> CNNStageConfig | TransferConfig:
    """The stage's params section as its typed config (keys and values checked)."""
    kind = CNNStageConfig if get_stage(stage).kind == "cnn" else TransferConfig
    return build(kind, config, prefix=stage)


def describe_module(module) -> str:
    from torch import nn

    def pair(v) -> str:
        v = v if isinstance(v, tuple) else (v, v)
        return f"{v[0]}×{v[1]}"

    if isinstance(module, nn.Conv2d):
        return (
            f"Conv2d {module.in_channels:,}→{module.out_channels:,}, {pair(module.kernel_size)}, "
            f"stride {module.stride[0]}, padding {module.padding[0]}"
        )
    if isinstance(module, nn.MaxPool2d):
        return f"MaxPool2d {pair(module.kernel_size)}, stride {pair(module.stride)[0]}"
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features:,}→{module.out_features:,}"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"{type(module).__name__}({module.num_features:,})"
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
                "Module": describe_module(child),
                "Output shape": "×".join(f"{d:,}" for d in shapes.get(name, ())) or "—",
                "Parameters": n,
                "Trainable": ("yes" if trains else "frozen") if n else "—",
            }
        )
    return pd.DataFrame(rows)


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
        "Computed by `src/report/theory.py` when this report is rendered.",
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
        + ("**identical**." if agrees else "**DIFFERENT** (a bug in `src/report/theory.py`)."),
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
    from src.training.models import network_from_config

    model, _ = network_from_config(baseline_config, "baseline")
    table = pd.DataFrame(theory.layer_parameter_table(model))
    total = int(table["total"].sum())
    table["weight_shape"] = [
        "×".join(f"{d:,}" for d in s) if s else "—" for s in table["weight_shape"]
    ]
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
    table = format_frame(table, {c: fmt_value for c in ("Weights", "Biases", "Parameters")})
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
