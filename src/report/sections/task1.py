"""Task 1 as the report shows it: the values `src.report.theory` computes."""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from src.report import theory
from src.report.formats import fmt_value, format_frame, markdown_table
from src.report.inputs import REFERENCE


def task1_section(baseline: nn.Module, config_source: str) -> list[str]:
    """Task 1a-1g, numbered as the course numbers them; 1g counts the parameters of
    `baseline` (the network a resolved `baseline` section describes), `config_source`
    saying where that config comes from."""
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
    table = pd.DataFrame(theory.layer_parameter_table(baseline))
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
