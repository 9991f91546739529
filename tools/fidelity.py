"""Low fidelity against full size: export trials of a study, and tabulate their retrains.

    python -m tools.fidelity export --trials 33 39 31 0 --out .device/retrain/trials.json
    scripts/retrain_trials.sh .device/retrain/trials.json     (on any machine: the tuned
                                                              stage's code path per trial)
    python -m tools.fidelity table <out>/retrain.json --stage trial-33=tuned --machine TEXT

`export` writes each trial's knobs and study score (plus optional probes: knob sets no
trial ran, `--probe name=path.yaml`); `table` ranks the retrains (and trials a DVC stage
trained: the tuned stage is the best trial, improved the hand design) by full-size
validation accuracy next to the study's order: reports/tune/<study>/fidelity.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from src.config.design import study_slug
from src.config.layout import Layout
from src.config.load import load_params


def _study(name: str, storage: str):
    import optuna

    from src.tune.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=open_storage(storage).storage)


def export(study_name: str, storage: str, numbers: list[int], probes: list[str]) -> list[dict]:
    from src.tune.apply import is_hand_tuned

    study = _study(study_name, storage)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    complete = sorted(
        (t for t in by_number.values() if t.value is not None), key=lambda t: -t.value
    )
    rank = {t.number: i + 1 for i, t in enumerate(complete)}
    entries = []
    for n in numbers:
        t = by_number[n]
        hand = is_hand_tuned(study, t)
        entries.append(
            {
                "name": f"trial-{n}",
                "trial": n,
                "study_rank": rank.get(n),
                "study_val_accuracy": t.value,
                "knobs": {} if hand else dict(t.params),  # the hand design as params.yaml has it
            }
        )
    import yaml

    for probe in probes:
        name, path = probe.split("=", 1)
        knobs = yaml.safe_load(Path(path).read_text())
        entries.append(
            {
                "name": name,
                "trial": None,
                "study_rank": None,
                "study_val_accuracy": None,
                "knobs": knobs,
            }
        )
    return entries


def _study_ranks(study_name: str, storage: str) -> dict[int, tuple[int, float]]:
    """trial number -> (rank among completed trials by score, score)."""
    study = _study(study_name, storage)
    done = sorted(
        (t for t in study.get_trials(deepcopy=False) if t.value is not None), key=lambda t: -t.value
    )
    return {t.number: (i + 1, t.value) for i, t in enumerate(done)}


def table(
    results: list[dict], stages: dict[str, str], study_name: str, storage: str, machine: str
) -> Path:
    """fidelity.csv: each retrained trial (and probe) with its study rank and score and
    its full-size figures; `stages` names trials a DVC stage trained (name -> stage), read
    from reports/<stage>/metrics.json."""
    ranks = _study_ranks(study_name, storage)
    rows = [dict(r) for r in results]
    for name, stage in stages.items():
        metrics = json.loads((Layout().reports / stage / "metrics.json").read_text())
        rows.append({"name": name, "stage": stage, **metrics})
    for row in rows:
        trial = int(row["name"].split("-")[1]) if row["name"].startswith("trial-") else None
        rank, score = ranks.get(trial, (None, None))
        row.update(trial=trial, study_rank=rank, study_val_accuracy=score)
    by_full = sorted(rows, key=lambda r: -(r.get("final_val_accuracy") or 0))
    for i, row in enumerate(by_full):
        row["full_rank"] = i + 1
    path = Layout().tune_reports / study_slug(study_name) / "fidelity.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [
        "name",
        "trial",
        "stage",
        "study_rank",
        "study_val_accuracy",
        "full_rank",
        "final_val_accuracy",
        "test_accuracy",
        "epochs_run",
        "train_images_per_s",
        "wall_time_s",
        "numerics",
        "machine",
    ]
    rows.sort(key=lambda r: (r["study_rank"] is None, r["study_rank"] or 0, r["name"]))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "machine": machine})
    return path


def main(argv: list[str] | None = None) -> int:
    params = load_params()
    tune = params.tune
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--trials", type=int, nargs="+", required=True)
    ex.add_argument("--probe", action="append", default=[], metavar="NAME=KNOBS.yaml")
    ex.add_argument("--out", type=Path, required=True)
    tb = sub.add_parser("table")
    tb.add_argument("results", type=Path, nargs="*", help="retrain.json files")
    tb.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME=STAGE",
        help="a trial a DVC stage trained at full size, e.g. trial-33=tuned",
    )
    tb.add_argument("--machine", default="")
    args = parser.parse_args(argv)
    if args.command == "export":
        entries = export(tune["study"], tune["storage"], args.trials, args.probe)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"study": tune["study"], "entries": entries}, indent=1))
        print(f"{len(entries)} entries -> {args.out}")
    else:
        results = [r for path in args.results for r in json.loads(path.read_text())]
        stages = dict(item.split("=", 1) for item in args.stage)
        print(table(results, stages, tune["study"], tune["storage"], args.machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
