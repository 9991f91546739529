"""`python -m src.seeds`: a training stage repeated over seeds, and the spread of its result.

    python -m src.seeds baseline --seeds 0 1 2          # queue, run one after another, summarise
    python -m src.seeds baseline --seeds 0 1 2 --queue-only   # queue; `dvc queue start` runs them
    python -m src.seeds baseline --seeds 0 1 2 --print  # print the dvc commands, run nothing
    python -m src.seeds                                 # summarise every training stage
    python -m src.seeds baseline improved               # ... or these
    python -m src.seeds baseline --seeds 3 -- --pull    # after --: more `dvc exp run` arguments

Seed k of stage S is the DVC experiment `S-seed<k>`, queued as
`dvc exp run --queue -n S-seed<k> -S ++common.seed=<k> S` (`src.config.overrides` builds it,
as for the quick run) and run by `dvc exp run --run-all`: in temporary copies of the
repository, one at a time (the stages use every core), each logged to MLflow with its
`dvc_exp_name`. The workspace, params.yaml and dvc.lock are never touched. `--run-all`
runs everything in the queue, not only these. A seed equal to params.yaml's, on a stage
`dvc status` calls up to date, reruns nothing: DVC takes the committed result. An
existing name is refused by DVC: `dvc exp remove <stage>-seed<k>` first (`-f` would
also rerun the stages upstream, the download among them).

The summary reads `dvc exp show --json` (experiments of the current commit) and gives,
per stage, the mean ± sample standard deviation (n - 1) of test accuracy over its
`S-seed<k>` experiments, with n and each seed's value. A run repeats exactly only on the
same machine (same seed, machines of one kind: baseline 0.7161 on one, 0.7251 on two), so the
spread over seeds is the honest error bar, not one run.

After running (or with `--write`), each stage with a finished seed run gets its record
`reports/seeds/<stage>.json` (the seeds, their test accuracies, the commit they ran from, the
machine): commit it with git; the report (a dependency of its stage) shows mean ± std from
it, since `dvc exp show` lists a commit's experiments only while that commit is checked out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from src.artifacts import StagePaths
from src.config.layout import repo_root
from src.config.overrides import check_set_params, exp_run_command
from src.config.stages import TRAINING_STAGES
from src.runtime import temp_copies
from src.runtime.entry import guarded
from src.seeds.spread import METRIC, SeedRun, Spread, read_record, record_path, write_record

RUN_ALL = ["dvc", "exp", "run", "--run-all"]  # follows the logs until the queue is empty
EXP_SHOW = ["dvc", "exp", "show", "--json"]
_NAME = re.compile(r"(?P<stage>[A-Za-z_][\w]*)-seed(?P<seed>\d+)")


def experiment_name(stage: str, seed: int) -> str:
    return f"{stage}-seed{seed}"


def queue_commands(stage: str, seeds: Sequence[int], extra: Sequence[str] = ()) -> list[list[str]]:
    """One `dvc exp run --queue -n <stage>-seed<k> -S ++common.seed=<k> [extra] <stage>` per
    seed, in order."""
    return [
        exp_run_command(
            experiment_name(stage, seed),
            {"common.seed": seed},
            targets=[stage],
            extra=["--queue", *extra],
        )
        for seed in seeds
    ]


# --------------------------------------------------------------------------- summary


def _dig(tree: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def _seed_run(stage: str, entry: dict) -> SeedRun | None:
    """An experiment of `dvc exp show --json` (an item of a commit's "experiments") as a
    run of `stage`, or None when it is not one of that stage's seed experiments."""
    match = _NAME.fullmatch(str(entry.get("name") or ""))
    if not match or match["stage"] != stage:
        return None
    revs = entry.get("revs") or [{}]
    latest = revs[0] if isinstance(revs[0], dict) else {}
    data = latest.get("data") or {}
    state = str(_dig(entry, "executor", "state") or ("failed" if latest.get("error") else "done"))
    seed = _dig(data, "params", "params.yaml", "data", "common", "seed")
    metrics_file = StagePaths.for_stage(stage, Path()).metrics.as_posix()
    value = _dig(data, "metrics", metrics_file, "data", METRIC)
    numerics = _dig(data, "metrics", metrics_file, "data", "numerics")
    ok = isinstance(value, (int, float)) and math.isfinite(value) and state != "failed"
    return SeedRun(
        name=match.group(0),
        seed=seed if isinstance(seed, int) else int(match["seed"]),
        value=float(value) if ok else None,
        state=state,
        numerics=numerics if isinstance(numerics, str) else "",
    )


def collect(payload: list, stages: Sequence[str]) -> tuple[dict[str, Spread], str]:
    """Each stage's seed experiments in a `dvc exp show --json` payload, and the commit
    they derive from. The latest experiment of a name wins (DVC lists newest first)."""
    spreads = {stage: Spread(stage) for stage in stages}
    baseline = ""
    for commit in payload:
        if not isinstance(commit, dict) or commit.get("rev") == "workspace":
            continue
        baseline = baseline or str(commit.get("name") or commit.get("rev", ""))[:12]
        for entry in commit.get("experiments") or []:
            for stage, spread in spreads.items():
                run = isinstance(entry, dict) and _seed_run(stage, entry)
                if run and run.name not in {r.name for r in spread.runs}:
                    spread.runs.append(run)
                    spread.commit = spread.commit or str(commit.get("rev", ""))
    for spread in spreads.values():
        spread.runs.sort(key=lambda r: r.seed)
    return spreads, baseline


def committed_records(stages: Sequence[str], root: Path | None = None) -> dict[str, Spread]:
    """The seed records committed under reports/seeds/ (unreadable ones left out)."""
    records = {}
    for stage in stages:
        path = record_path(stage, root)
        if path.is_file():
            with contextlib.suppress(ValueError):
                records[stage] = read_record(path)
    return records


def summary_lines(
    spreads: dict[str, Spread], baseline: str = "", recorded: dict[str, Spread] | None = None
) -> list[str]:
    """Per stage: its seed experiments of this commit, else its committed record
    (`recorded`), else how to make one."""
    where = f" of {baseline}" if baseline else ""
    lines = [
        f"Test accuracy over seeds (DVC experiments <stage>-seed<k>{where}; "
        "mean ± sample std, n - 1):"
    ]
    for stage, spread in spreads.items():
        if not spread.runs and stage in (recorded or {}):
            spread = recorded[stage]
            commit = f" of commit {spread.commit[:10]}" if spread.commit else ""
            on = f" on {spread.machine}" if spread.machine else ""
            record = record_path(stage, Path()).as_posix()
            lines.append(f"  {stage:<9} recorded in {record} (experiments{commit}{on}):")
        elif not spread.runs:
            lines.append(
                f"  {stage:<9} no experiment {stage}-seed<k> yet "
                f"(python -m src.seeds {stage} --seeds 0 1 2)"
            )
            continue
        if spread.n == 0:
            head = "no finished run"
        elif spread.n == 1:
            head = f"{spread.mean:.4f} (n=1: no spread yet)"
        else:
            head = f"{spread.mean:.4f} ± {spread.std:.4f} (n={spread.n})"
        each = ", ".join(
            f"seed {r.seed} {r.value:.4f}" if r.value is not None else f"seed {r.seed} {r.state}"
            for r in spread.runs
        )
        indent = " " * 12 if not spreads[stage].runs else ""
        lines.append(f"  {indent or f'{stage:<9} '}{head}; {each}")
    return lines


# --------------------------------------------------------------------------- records


def write_records(spreads: dict[str, Spread]) -> None:
    for spread in spreads.values():
        if spread.n:
            path = write_record(spread)
            print(f"wrote {path.relative_to(repo_root())}: commit it (git add) for the report")


# --------------------------------------------------------------------------- running DVC


def _dvc(command: list[str], capture: bool = False) -> subprocess.CompletedProcess:
    """`dvc ...` (command[0] == "dvc") as this interpreter's module, in the repository."""
    return subprocess.run(
        [sys.executable, "-m", "dvc", *command[1:]],
        cwd=repo_root(),
        capture_output=capture,
        text=True,
        check=False,
    )


def exp_show() -> list:
    """`dvc exp show --json` of the repository; exits with DVC's code when it fails."""
    done = _dvc(EXP_SHOW, capture=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        sys.exit(done.returncode)
    payload = json.loads(done.stdout or "[]")
    return payload if isinstance(payload, list) else []


def _parser() -> argparse.ArgumentParser:
    parts = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(
        prog="python -m src.seeds",
        description=parts[0],
        epilog="\n\n".join(parts[1:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = ", ".join(s.name for s in TRAINING_STAGES)
    parser.add_argument("stages", nargs="*", metavar="stage", help=f"{names} (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", help="queue and run these seeds")
    parser.add_argument("--queue-only", action="store_true", help="queue them, run nothing")
    parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--write", action="store_true", help="with the summary: write reports/seeds/<stage>.json"
    )
    return parser


@guarded
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    extra = argv[cut + 1 :]  # more `dvc exp run` arguments
    check_set_params(extra, repo_root())
    parser = _parser()
    args = parser.parse_args(argv[:cut])
    known = [s.name for s in TRAINING_STAGES]
    unknown = [name for name in args.stages if name not in known]
    if unknown:  # not argparse's `choices`: with nargs="*" it refuses an empty list (3.11)
        parser.error(f"not a training stage: {', '.join(unknown)} (choose from {known})")
    stages = args.stages or known
    if args.seeds is None:
        spreads, baseline = collect(exp_show(), stages)
        print("\n".join(summary_lines(spreads, baseline, committed_records(stages))))
        if args.write:
            write_records(spreads)
        return
    if not args.stages:
        parser.error("name the stage(s) to repeat, e.g. python -m src.seeds baseline --seeds 0 1 2")
    if min(args.seeds) < 0 or len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: distinct integers >= 0")
    commands = [c for stage in stages for c in queue_commands(stage, args.seeds, extra)]
    if not args.print:
        for line in temp_copies.clean(repo_root()):
            print(line, flush=True)
    for command in [*commands, *([] if args.queue_only else [RUN_ALL])]:
        print(shlex.join(command), flush=True)
        if not args.print and _dvc(command).returncode:
            sys.exit(1)
    if args.print:
        return
    if args.queue_only:
        print(
            "Queued. `dvc queue start` runs them in the background; then: "
            "python -m src.seeds --write"
        )
        return
    spreads, baseline = collect(exp_show(), stages)
    print("\n".join(summary_lines(spreads, baseline)))
    write_records(spreads)


if __name__ == "__main__":
    main()
