"""`python -m src.quick`: the whole pipeline in minutes on a CPU, as a DVC experiment.

    python -m src.quick                 # dvc exp run --temp -n quick -S <profiles.quick> ...
    python -m src.quick --print         # only print that command
    python -m src.quick -- -f           # arguments after -- go to `dvc exp run` (-f: replace)

`profiles.quick` in params.yaml holds the dotted values, in one place, and no stage reads
it: they reach the stages as real params (`-S key=value`), so `dvc exp show`,
`dvc params diff` and `dvc exp diff` show what the experiment trained with. `--temp`
runs it in a temporary copy of the repository (<repo>/.dvc/tmp/exps/): the workspace,
its params, lock and outputs are never touched, so nothing needs undoing afterwards.
Its MLflow runs land in the repository's own store (`config.repo_root`).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from typing import Any

from src.cli import guarded
from src.config import (
    ConfigError,
    load_params,
    load_raw,
    profile_overrides,
    repo_root,
    set_param_args,
)

PROFILE = "quick"
EXPERIMENT = "quick"


def quick_overrides(raw: dict, profile: str = PROFILE) -> dict[str, Any]:
    """`profiles.<profile>`; ConfigError naming a key params.yaml does not hold (`dvc exp
    run -S key=value` changes keys, it does not add them)."""
    overrides = profile_overrides(raw, profile)
    for dotted in overrides:
        node: Any = raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(
                    f"profiles.{profile}.{dotted}",
                    "names a key params.yaml does not hold; add it there (with its full-run "
                    "value) so `dvc exp run -S` can set it",
                )
            node = node[part]
    return overrides


def quick_command(raw: dict, name: str = EXPERIMENT, extra: list[str] | None = None) -> list[str]:
    """`dvc exp run --temp -n <name> -S key=value ...` for `profiles.quick`."""
    return [
        "dvc",
        "exp",
        "run",
        "--temp",
        "-n",
        name,
        *set_param_args(quick_overrides(raw)),
        *(extra or []),
    ]


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.quick",
        description=__doc__.split("\n\n")[0],
        epilog="Then: dvc exp show --only-changed (README: 'Compare experiments').",
    )
    parser.add_argument("--name", default=EXPERIMENT, help="experiment name (default: quick)")
    parser.add_argument("--print", action="store_true", help="print the command, run nothing")
    parser.add_argument("dvc_args", nargs="*", help="after --: more `dvc exp run` arguments")
    args = parser.parse_args(argv)
    load_params(profile=PROFILE)  # the quick values must make a valid config (exit 2)
    command = quick_command(load_raw(), args.name, args.dvc_args)
    print(shlex.join(command), flush=True)
    if args.print:
        return
    code = subprocess.run(command, cwd=repo_root()).returncode
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
