"""Params overrides on DVC's command line: the `dvc exp run -S key=value` syntax and command.

`python -m src.quick` and `python -m src.tune apply` both build their `dvc exp run`
command here, so the two cannot drift apart in how a value is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src.runtime.errors import ConfigError


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
    """Dotted overrides as `dvc exp run` arguments: ["-S", "++key=value", ...].

    `++` (Hydra's force-add) sets a key whether or not params.yaml spells it out: a
    trial's knob with a schema default (e.g. `train.label_smoothing`) is absent from the
    file, and a plain `key=value` on an absent key is refused by DVC. A misspelt key
    still fails: the stage's params load refuses keys the schema does not know."""
    args = []
    for key, value in overrides.items():
        args += ["-S", f"++{key}={hydra_value(value)}"]
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


def check_set_params(args: Sequence[str], root: Path) -> None:
    """ConfigError for a `-S [file:]key=value` among `dvc exp run` arguments `args` whose
    file lies outside the project `root` (absolute, `..`, or a symlink out): DVC would edit
    or create that file and add it to the experiment's git index. A `-S` without `file:`
    sets params.yaml."""
    values = []
    for i, arg in enumerate(args):
        if arg in ("-S", "--set-param") and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith("--set-param="):
            values.append(arg.removeprefix("--set-param="))
        elif arg.startswith("-S") and len(arg) > 2:
            values.append(arg[2:])
    real_root = root.resolve()
    for value in values:
        name = value.partition("=")[0]
        if ":" not in name:  # DVC's own parsing (dvc.utils.cli_parse.to_path_overrides)
            continue
        file = name.partition(":")[0]
        path = Path(file).expanduser()
        if path.is_absolute() or ".." in path.parts or not (
            (root / path).resolve().is_relative_to(real_root)
        ):
            raise ConfigError(
                "",
                f"-S {value!r}: {file!r} lies outside the project {root}; DVC would edit or "
                "create it there. Set params of the project's own files (-S key=value sets "
                "params.yaml)",
            )
