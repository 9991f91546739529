"""Params overrides on DVC's command line: the `dvc exp run -S key=value` syntax and command.

`python -m src.quick` and `python -m src.tune apply` both build their `dvc exp run`
command here, so the two cannot drift apart in how a value is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


def exp_run_command(
    name: str,
    overrides: dict[str, Any],
    *,
    temp: bool = False,
    targets: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """`dvc exp run [--temp] -n <name> -S key=value ... [extra ...] [targets ...]`.

    `temp`: run in a temporary copy of the repository (the workspace is never touched);
    `targets`: the stages to reproduce (default: the whole pipeline); `extra`: more
    `dvc exp run` arguments, passed as given."""
    return [
        "dvc",
        "exp",
        "run",
        *(["--temp"] if temp else []),
        "-n",
        name,
        *set_param_args(overrides),
        *extra,
        *targets,
    ]


def set_param_args(overrides: dict[str, Any]) -> list[str]:
    """Dotted overrides as `dvc exp run` arguments: ["-S", "key=value", ...]."""
    args = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={hydra_value(value)}"]
    return args


def hydra_value(value: Any) -> str:
    """A value in the override syntax of `dvc exp run -S` (Hydra's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][\w.-]*", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value) if isinstance(value, float) else str(value)
