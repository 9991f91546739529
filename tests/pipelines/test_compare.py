"""python -m src.compare: changed params and each stage's accuracy, within the width."""

from __future__ import annotations

from src.compare import comparison_rows, render


def _rows() -> list[dict]:
    base = {
        "Experiment": None,
        "typ": "baseline",
        "common.seed": 0,
        "baseline.train.epochs": 10,
        "baseline.train.subset": 0.0,  # DVC gives some whole params as floats
        "improved.model.filters": "[128, 256, 512, 1024]",
        "tune.n_trials": 40,
        "reports/baseline/metrics.json:test_accuracy": 0.7251,
        "reports/baseline/metrics.json:mlflow_run_id": "35a8",
        "reports/baseline/metrics.json:train_time_s": 422.76,
    }
    workspace = {**base, "rev": "workspace"}
    head = {**base, "rev": "9c2df77aa"}
    quick = {
        **base,
        "rev": "abc1234",
        "Experiment": "quick",
        "typ": "branch_commit",
        "baseline.train.epochs": 2,
        "baseline.train.subset": 10000,
        "improved.model.filters": [16, 32, 64, 128],
        "tune.n_trials": 3,
        "reports/baseline/metrics.json:test_accuracy": 0.3873,
    }
    seeds = [
        {
            **base,
            "rev": f"s{k}",
            "Experiment": f"baseline-seed{k}",
            "typ": "branch_commit",
            "common.seed": k,
            "reports/baseline/metrics.json:test_accuracy": 0.72 + k / 1000,
        }
        for k in range(6)
    ]
    return [workspace, head, quick, *seeds]


def test_only_changed_stage_params_and_test_accuracies():
    titles, table = comparison_rows(_rows(), ["quick"])
    assert titles == ["workspace", "quick"]
    labels = [label for label, _ in table]
    assert labels == [
        "baseline.train.epochs",
        "baseline.train.subset",
        "improved.model.filters",
        "baseline test_accuracy",
    ]
    assert dict(table)["baseline.train.subset"] == ["0", "10000"]
    assert dict(table)["improved.model.filters"] == ["[128,256,512,1024]", "[16,32,64,128]"]
    assert dict(table)["baseline test_accuracy"] == ["0.7251", "0.3873"]


def test_the_table_fits_the_width():
    titles, table = comparison_rows(_rows())
    assert titles[:2] == ["workspace", "quick"] and len(titles) == 8
    lines = render(titles, table, width=100)
    assert max(len(line) for line in lines) <= 100
    assert sum(line.startswith("param / metric") for line in lines) >= 2  # cut into blocks
    assert any("baseline-seed5" in line for line in lines)
