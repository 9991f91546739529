"""Low fidelity against full size: export trials of a study, and tabulate their retrains.

    python -m tools.fidelity export --trials 33 39 31 0 --out .device/retrain/trials.json
    scripts/retrain_trials.sh .device/retrain/trials.json     (on any machine: the tuned
                                                              stage's code path per trial)
    python -m tools.fidelity table <retrain results.json> [--machine TEXT]

`export` writes each trial's knobs and study score (plus optional probes: knob sets no
trial ran, `--probe name=path.yaml`); `table` ranks the retrains by full-size validation
accuracy next to the study's order and writes reports/tune/<study>/fidelity.csv.
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


def table(results: list[dict], study_name: str, machine: str) -> Path:
    rows = sorted(results, key=lambda r: -(r.get("final_val_accuracy") or 0))
    for i, row in enumerate(rows):
        row["full_rank"] = i + 1
    path = Layout().tune_reports / study_slug(study_name) / "fidelity.csv"
    columns = [
        "name",
        "trial",
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
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["study_rank"] is None, r["study_rank"] or 0)):
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
    tb.add_argument("results", type=Path)
    tb.add_argument("--machine", default="")
    args = parser.parse_args(argv)
    if args.command == "export":
        entries = export(tune["study"], tune["storage"], args.trials, args.probe)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"study": tune["study"], "entries": entries}, indent=1))
        print(f"{len(entries)} entries -> {args.out}")
    else:
        results = json.loads(args.results.read_text())
        print(table(results, tune["study"], args.machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
