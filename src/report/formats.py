"""How the report writes numbers and tables: every formatter of a metric, count, duration
or params.yaml value, markdown tables and figure links."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

FIGURE_DIR = "report"  # figures, beside report.md (links in it are relative)

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


def fmt_seconds(seconds: float | None) -> str:
    """A measured time as the summary table gives it: 508 s, 1,234 s."""
    return "—" if seconds is None else f"{seconds:,.0f} s"


def fmt_duration(seconds: float) -> str:
    """14 min · 2.4 h: the precision a cost estimate has."""
    if seconds < 90:
        return f"{seconds:,.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"
