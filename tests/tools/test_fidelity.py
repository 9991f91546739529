"""tools.fidelity: a study's order against its trials retrained at full size."""

from __future__ import annotations

import csv
import json

import optuna

from src.tune.storage import open_storage
from tools import fidelity


def _study(root) -> str:
    storage = str(root / "reports/tune/journal.log")
    (root / "reports/tune").mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="s", storage=open_storage(storage).storage, direction="maximize"
    )
    for lr, score in ((0.1, 0.5), (0.2, 0.6), (0.3, 0.4)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr},
                distributions={"lr": optuna.distributions.FloatDistribution(0.01, 1.0)},
                value=score,
            )
        )
    return storage


def test_export_then_table_ranks_both_ways(project, tmp_path):
    storage = _study(project)
    entries = fidelity.export("s", storage, [1, 0], [])
    assert [(e["name"], e["study_rank"], e["knobs"]) for e in entries] == [
        ("trial-1", 1, {"lr": 0.2}),
        ("trial-0", 2, {"lr": 0.1}),
    ]
    (project / "reports/improved").mkdir(parents=True)
    (project / "reports/improved/metrics.json").write_text(
        json.dumps({"final_val_accuracy": 0.80, "test_accuracy": 0.79})
    )
    retrained = [
        {"name": "trial-1", "final_val_accuracy": 0.70, "test_accuracy": 0.69},
        {"name": "probe", "final_val_accuracy": 0.90, "test_accuracy": 0.88},
    ]
    path = fidelity.table(retrained, {"trial-0": "improved"}, "s", storage, "test machine")
    rows = list(csv.DictReader(path.open()))
    assert [(r["name"], r["study_rank"], r["full_rank"]) for r in rows] == [
        ("trial-1", "1", "3"),  # the study's best is last at full size
        ("trial-0", "2", "2"),
        ("probe", "", "1"),  # no trial of the study: no study rank
    ]
    assert rows[1]["stage"] == "improved" and rows[0]["machine"] == "test machine"
