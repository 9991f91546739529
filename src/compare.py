"""`python -m src.compare`: the DVC experiments of this commit side by side, in a terminal.

    python -m src.compare                 # the workspace and every experiment of HEAD
    python -m src.compare quick baseline-seed1   # the workspace and these experiments
    python -m src.compare -n 3            # experiments of the last 3 commits

One row per param that differs between the columns and one per stage's test accuracy;
one column per experiment (the workspace first). Run ids, timings, dependency hashes and
params no stage reads (`profiles`, `tune`) are left out, and the table is cut into blocks
of columns that fit the terminal's width. Everything else: `dvc exp show`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Sequence
from typing import Any

from src.config.stages import TRAINING_STAGES
from src.runtime.entry import guarded

# params sections no stage reads: they differ between experiments only by hand edits
UNREAD_SECTIONS = ("profiles.", "tune.")
ACCURACY = re.compile(r"reports/(\w+)/metrics\.json:test_accuracy$")
MAX_CELL = 18  # characters; longer values end in "…"


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        # DVC hands some whole params over as floats (`subset: 0` as 0.0): print them whole
        text = f"{value:g}" if value.is_integer() or value >= 1 else f"{value:.4f}"
    elif isinstance(value, list | dict):
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
        if text.startswith("["):  # DVC gives some lists as their text
            text = text.replace(", ", ",")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _is_param(key: str) -> bool:
    sections = ("common", "data", *(s.name for s in TRAINING_STAGES))
    return key.split(".")[0] in sections and not key.startswith(UNREAD_SECTIONS)


def comparison_rows(rows: list[dict], names: Sequence[str] = ()) -> tuple[list, list]:
    """(column titles, [(row label, cells)]) from `dvc.api.exp_show()` rows: the params
    that differ between the chosen columns, then each stage's test accuracy."""
    chosen = [
        r
        for r in rows
        if r.get("rev") == "workspace"
        or (r.get("Experiment") or r.get("rev")) in names
        or (not names and r.get("typ") != "baseline")
    ]
    titles = [
        "workspace" if r.get("rev") == "workspace" else (r.get("Experiment") or r["rev"][:7])
        for r in chosen
    ]
    keys = list(dict.fromkeys(k for r in chosen for k in r))
    table = []
    for key in keys:
        if not _is_param(key):
            continue
        cells = [_cell(r.get(key)) for r in chosen]
        if len(set(cells)) > 1:
            table.append((key, cells))
    for key in keys:
        match = ACCURACY.fullmatch(key)
        if match:
            table.append((f"{match.group(1)} test_accuracy", [_cell(r.get(key)) for r in chosen]))
    return titles, table


def render(titles: list[str], table: list, width: int = 100) -> list[str]:
    """The table as text lines, no line wider than `width`: columns that do not fit go
    to a further block below."""
    label_w = max([len("param / metric"), *(len(label) for label, _ in table)])
    col_w = [
        max(len(t), *(len(cells[i]) for _, cells in table)) if table else len(t)
        for i, t in enumerate(titles)
    ]
    blocks, current, used = [], [], label_w
    for i, w in enumerate(col_w):
        if current and used + 2 + w > width:
            blocks.append(current)
            current, used = [], label_w
        current.append(i)
        used += 2 + w
    if current:
        blocks.append(current)
    lines: list[str] = []
    for block in blocks:
        head = "param / metric".ljust(label_w) + "".join(
            "  " + titles[i].rjust(col_w[i]) for i in block
        )
        lines += [head, "-" * len(head)]
        for label, cells in table:
            row = label.ljust(label_w) + "".join("  " + cells[i].rjust(col_w[i]) for i in block)
            lines.append(row)
        lines.append("")
    return lines[:-1]


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("experiments", nargs="*", help="experiment names (default: all)")
    parser.add_argument("-n", type=int, default=1, help="commits to list experiments of")
    args = parser.parse_args(argv)
    import dvc.api

    rows = dvc.api.exp_show(num=args.n)
    titles, table = comparison_rows(rows, args.experiments)
    if len(titles) < 2:
        print("No experiment of this commit to compare (python -m src.quick makes one).")
        return
    width = shutil.get_terminal_size((100, 24)).columns
    print("\n".join(render(titles, table, width)))


if __name__ == "__main__":
    main()
