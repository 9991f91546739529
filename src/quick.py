"""`python -m src.quick`: the whole pipeline in minutes on a CPU, as a DVC experiment.

    python -m src.quick                 # dvc exp run --temp -n quick -S <profiles.quick> ...
    python -m src.quick --print         # only print that command
    python -m src.quick -- -f           # arguments after -- go to `dvc exp run` (-f: replace)

`profiles.quick` in params.yaml holds the dotted values, in one place, and no stage reads
it: they reach the stages as real params (`-S key=value`), so `dvc exp show`,
`dvc params diff` and `dvc exp diff` show what the experiment trained with. `--temp`
runs it in a temporary copy of the repository (<repo>/.dvc/tmp/exps/): the workspace,
its params, lock and outputs are never touched, so nothing needs undoing afterwards.
Its MLflow runs land in the repository's own store (`src.config.layout.repo_root`), named
`<stage> (quick)`.

DVC runs in this process, so that the warnings it logs while it fills the temporary copy
("No file hash info found for <an output no stage has made yet>. It won't be created.",
one per output the committed dvc.lock lacks) are dropped: they need no action. At the
end it prints where the report went (an artifact of the MLflow run `report (quick)`),
how to see the runs, and the smoke model versions the run registered.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.config.layout import repo_root
from src.config.load import load_params, load_raw, profile_overrides
from src.config.overrides import check_set_params, exp_run_command
from src.config.schema import SOURCE_ENV_VAR
from src.runtime import temp_copies
from src.runtime.entry import guarded
from src.runtime.errors import ConfigError

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
    return exp_run_command(name, quick_overrides(raw), temp=True, extra=extra or ())


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.quick",
        description=__doc__.split("\n\n")[0],
        epilog="Then: python -m src.compare (docs/pipeline.md: 'The quick run').",
    )
    parser.add_argument("--name", default=EXPERIMENT, help="experiment name (default: quick)")
    parser.add_argument("--print", action="store_true", help="print the command, run nothing")
    parser.add_argument("dvc_args", nargs="*", help="after --: more `dvc exp run` arguments")
    args = parser.parse_args(argv)
    absolute_source()
    load_params(profile=PROFILE)  # the quick values must make a valid config (exit 2)
    check_set_params(args.dvc_args, repo_root())
    command = quick_command(load_raw(), args.name, args.dvc_args)
    print(shlex.join(command), flush=True)
    if args.print:
        return
    for line in temp_copies.clean(repo_root()):
        print(line, flush=True)
    since_ms = int(time.time() * 1000)
    code = run_dvc(command)
    if code:
        sys.exit(code)
    print("\n".join(summary(args.name, since_ms)), flush=True)


def absolute_source() -> None:
    """$CIFAR10_SOURCE as an absolute path, resolved against the directory the user typed
    the command in: the stages run in DVC's temporary copy, where a relative path would
    name nothing."""
    source = os.environ.get(SOURCE_ENV_VAR)
    if source and source != "official":
        os.environ[SOURCE_ENV_VAR] = str(Path(source).expanduser().resolve())


# What DVC logs for each output the committed dvc.lock has no hash of, while it fills the
# temporary copy (dvc_data/index/checkout.py, dvc_data/hashfile/checkout.py).
MISSING_OUTPUT = "No file hash info found for "
_DVC_CHECKOUT_LOGGERS = ("dvc_data.index.checkout", "dvc_data.hashfile.checkout")


class _DropMissingOutputs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(MISSING_OUTPUT) and message.endswith("won't be created."))


@contextlib.contextmanager
def _quiet_missing_outputs() -> Iterator[None]:
    drop = _DropMissingOutputs()
    loggers = [logging.getLogger(name) for name in _DVC_CHECKOUT_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def run_dvc(command: list[str], cwd: Path | None = None) -> int:
    """`dvc ...` (command[0] == "dvc") in this process, in `cwd` (default: the repository
    root); its exit code. In-process, so a filter on DVC's loggers drops `MISSING_OUTPUT`
    warnings (the terminal and DVC's progress bars stay as they are)."""
    from dvc.cli import main as dvc_main

    with contextlib.chdir(cwd or repo_root()), _quiet_missing_outputs():
        return dvc_main(command[1:])


def summary(name: str, since_ms: int = 0) -> list[str]:
    """Where experiment `name`'s report, runs and models are: its MLflow runs (tag
    `dvc_exp_name`) started since `since_ms`."""
    from src.tracking import store

    if not store.tracking_enabled():
        return [f"Experiment {name!r} done (tracking is off: no MLflow runs)."]
    import mlflow

    store.point_mlflow()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(load_params().common.experiment)
    if experiment is None:
        return [f"Experiment {name!r} done; it made no MLflow run."]
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.dvc_exp_name = '{name}' AND attributes.start_time >= {since_ms}",
        order_by=["attributes.start_time ASC"],
    )
    ui = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}"
    lines = [f"\nExperiment {name!r} (smoke values, not results):"]
    report = next((r for r in runs if r.data.tags.get("stage") == "report"), None)
    if report is None:
        lines.append("  report:  no report run found")
    else:
        run_id, uri = report.info.run_id, report.info.artifact_uri
        lines.append(f"  report:  artifacts of MLflow run {run_id} ({report.info.run_name}):")
        if uri.startswith("file://"):
            lines.append(f"           {uri.removeprefix('file://')}/report.html (opens offline)")
        lines.append(f"           {ui}/runs/{run_id}/artifacts")
    lines.append(f"  runs:    {', '.join(r.info.run_name for r in runs) or 'none found'}")
    lines.append(f"           see them: `mlflow ui` in {repo_root()}, then open")
    lines.append(f"           {ui}?workflowType=machine_learning")
    versions = [
        v for run in runs for v in client.search_model_versions(f"run_id = '{run.info.run_id}'")
    ]
    for i, v in enumerate(versions):
        why = f" (smoke: {v.tags['smoke']})" if v.tags.get("smoke") else ""
        lines.append(f"  {'models:' if i == 0 else '':<9}models:/{v.name}/{v.version}{why}")
    if not versions:
        lines.append("  models:  none registered")
    lines.append("  compare: python -m src.compare  (the params it changed, each stage's accuracy)")
    lines.append(
        "  note:    nothing to undo: the workspace is as it was. `dvc exp apply` is not "
        "needed (docs/pipeline.md: 'The quick run')"
    )
    return lines


if __name__ == "__main__":
    main()
