"""`python -m src.tune`: the search (default) and `apply`.

    python -m src.tune [--study-name NAME] [--storage PATH|URL] [--n-trials N] [--timeout S]
    python -m src.tune apply [--study-name NAME] [--run]

The space, per-trial budget, sampler and pruner live in params.yaml (`tune`). A trial is
the base stage's config (`tune.base`, normally `improved`) with the sampled knobs put in
and the budget applied; it trains through the same `build_cnn` and `fit` as that stage.
The objective is the trial's best validation accuracy; the test split never reaches
the trials. Every validation is reported to the pruner (step k = k-th validation).

Storage: a journal file (default `reports/tune/journal.log`, shared by processes on one
machine) or an RDB URL (`postgresql://...`, shared by machines). The same command with
the same study name continues the study; `--n-trials` is the study's total, shared by
all its workers. A trial whose worker died or was interrupted ends FAIL and is run
again once; a trial that crashes (NaN loss, a bad combination) ends FAIL with its
reason, and the search goes on.

MLflow (experiment `<common.experiment>-tune`): one parent run per study and a nested
run per trial. The best trial's config is written to
`reports/tune/<study>/best_params.yaml`; `python -m src.tune apply` prints (with
`--run`, runs) the `dvc exp run` command that retrains the base stage with it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from src.config.load import check_device, load_params
from src.runtime.entry import guarded
from src.runtime.errors import ConfigError
from src.tune.apply import apply_best
from src.tune.search import run_search
from src.tune.space import load_tune_config


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("", f"-S expects KEY=VALUE (dotted params key), got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.tune",
        description=(
            "Optuna (TPE + pruner) search over params.yaml `tune.space`. Each trial trains\n"
            "the `tune.base` stage's config with the sampled knobs, through that stage's\n"
            "builder and training loop, and scores its best validation accuracy (the test\n"
            "split is never used). The same study name continues a study; any number of\n"
            "workers may run it at once. MLflow: experiment <common.experiment>-tune, one\n"
            "parent run per study, a nested run per trial."
        ),
        epilog=(
            "examples:\n"
            "  python -m src.tune --n-trials 40                 # the default study\n"
            "  python -m src.tune --profile quick --study-name cpu --timeout 900\n"
            "  python -m src.tune --storage postgresql://user:pw@host/optuna  # many machines\n"
            "  python -m src.tune apply --study-name cpu       # print the dvc exp run command"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "command",
        nargs="?",
        choices=("search", "apply"),
        default="search",
        help="search (default): run trials. apply: write the best trial's knobs to "
        "reports/tune/<study>/best_params.yaml (what `dvc repro tuned` trains) and print "
        "the `dvc exp run` command that retrains params.yaml's own base design with them "
        "(whatever profile the study ran under) at its own budget",
    )
    p.add_argument(
        "--study-name",
        metavar="NAME",
        help="the study to create or continue (default: params tune.study)",
    )
    p.add_argument(
        "--storage",
        metavar="PATH|URL",
        help="where trials are kept: a journal file path, shared by workers on this "
        "machine (default: params tune.storage, relative to the project), or a database "
        "URL such as postgresql://user:password@host/db, shared by workers on many "
        "machines",
    )
    p.add_argument(
        "--n-trials",
        type=int,
        metavar="N",
        help="the study's total number of trials, counted over all workers and runs; "
        "a run stops when the study holds that many (default: params tune.n_trials)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="start no new trial after this many seconds (the running one finishes)",
    )
    p.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key for this run, as dvc exp run -S does, e.g. "
        "-S tune.budget.epochs=1 -S improved.train.num_threads=1 (YAML values)",
    )
    p.add_argument(
        "--profile",
        metavar="NAME",
        help="search: params profile (params.yaml `profiles`) applied to the base config, e.g. "
        "quick: a CPU-sized base network; the study records it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--run", action="store_true", help="apply: also run the dvc exp run command")
    return p


@guarded
def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    overrides = _overrides(args.set_param)
    if args.profile:
        overrides["profile"] = args.profile
    params = load_params(overrides=overrides)
    tcfg = load_tune_config(params)
    study_name = args.study_name or tcfg.study
    storage = args.storage or tcfg.storage
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError("", f"--n-trials must be >= 1, got {args.n_trials}")
    if args.command == "apply":
        code = apply_best(params, study_name, storage, run=args.run)
        if code:
            sys.exit(code)
        return
    check_device(getattr(params, tcfg.base).train, f"{tcfg.base}.train")  # exit 2
    run_search(
        params,
        tcfg,
        study_name=study_name,
        storage=storage,
        n_trials=args.n_trials or tcfg.n_trials,
        timeout=args.timeout,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    main()
