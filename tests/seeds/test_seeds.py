"""`python -m src.seeds`: the `dvc exp run` commands it queues, and the spread it reads
from a `dvc exp show --json` payload (the shape DVC 3.67 prints, made up here: no DVC
runs, nothing trains)."""

from __future__ import annotations

import json
import statistics
import subprocess

import pytest

from src.seeds import experiments as seeds
from src.seeds import spread as spread_record


def test_one_queued_experiment_per_seed():
    assert seeds.queue_commands("baseline", [0, 2], extra=["--pull"]) == [
        ["dvc", "exp", "run", "-n", "baseline-seed0", "-S", "++common.seed=0"]
        + ["--queue", "--pull", "baseline"],
        ["dvc", "exp", "run", "-n", "baseline-seed2", "-S", "++common.seed=2"]
        + ["--queue", "--pull", "baseline"],
    ]


def _exp(name: str, seed: int, accuracy: float | None, state: str = "success", stage="") -> dict:
    """One experiment as `dvc exp show --json` lists it under its commit."""
    stage = stage or name.split("-seed")[0]
    metrics = {}
    if accuracy is not None:
        metrics = {f"reports/{stage}/metrics.json": {"data": {"test_accuracy": accuracy}}}
    rev = {
        "rev": "9c4082cd7ef3e9ed828561bac40e544199aae825",
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": {"common": {"seed": seed}}}},
            "metrics": metrics,
        },
        "error": {"type": "ReproductionError"} if state == "failed" else None,
        "experiments": None,
    }
    return {"revs": [rev], "executor": {"state": state, "name": "dvc-task"}, "name": name}


def _payload() -> list:
    committed = {"reports/baseline/metrics.json": {"data": {"test_accuracy": 0.99}}}
    return [
        {"rev": "workspace", "name": None, "data": {"metrics": committed}, "experiments": None},
        {
            "rev": "2098bc17d963a21ed15c775d8536a41da7f4ef50",
            "name": "main",
            "data": {"metrics": committed},  # the commit itself: not a seed experiment
            "experiments": [
                _exp("baseline-seed1", 1, 0.7251),
                _exp("baseline-seed0", 0, 0.7161),
                _exp("baseline-seed2", 2, None, state="failed"),
                _exp("baseline-seed1", 1, 0.10),  # older, same name: the newest wins
                _exp("improved-seed0", 0, None, state="queued"),
                _exp("quick", 0, 0.5, stage="baseline"),  # not a seed experiment
                _exp("resnet-seed4", 4, 0.9012),
            ],
        },
    ]


def test_the_spread_of_each_stage():
    spreads, baseline = seeds.collect(_payload(), ["baseline", "improved", "resnet"])
    assert baseline == "main"
    base = spreads["baseline"]
    assert [(r.seed, r.value, r.state) for r in base.runs] == [
        (0, 0.7161, "success"),
        (1, 0.7251, "success"),
        (2, None, "failed"),
    ]
    assert base.n == 2 and base.mean == pytest.approx(0.7206)
    assert base.std == pytest.approx(statistics.stdev([0.7161, 0.7251]))  # n - 1
    assert base.std == pytest.approx(0.0063640, abs=1e-7)
    assert spreads["improved"].n == 0 and spreads["improved"].mean is None
    assert spreads["resnet"].n == 1 and spreads["resnet"].std is None

    lines = seeds.summary_lines(spreads, baseline)
    assert "of main" in lines[0] and "sample std" in lines[0]
    assert lines[1].split() == (
        "baseline 0.7206 ± 0.0064 (n=2); seed 0 0.7161, seed 1 0.7251, seed 2 failed".split()
    )
    assert lines[2].split() == "improved no finished run; seed 0 queued".split()
    assert lines[3].split() == "resnet 0.9012 (n=1: no spread yet); seed 4 0.9012".split()


def test_a_stage_without_seed_experiments_says_so():
    spreads, _ = seeds.collect([], ["baseline"])
    assert (
        seeds.summary_lines(spreads)[1].split()
        == "baseline no experiment baseline-seed<k> yet (python -m src.seeds baseline "
        "--seeds 0 1 2)".split()
    )


def _fake_dvc(monkeypatch, payload: list, root=None) -> list[list[str]]:
    """`dvc` answering `payload`; records go under `root` (a temporary project)."""
    calls = []
    if root is not None:
        monkeypatch.setenv("DVC_ROOT", str(root))

    def fake(command: list[str], capture: bool = False) -> subprocess.CompletedProcess:
        calls.append(command)
        out = json.dumps(payload) if command == seeds.EXP_SHOW else ""
        return subprocess.CompletedProcess(command, 0, out, "")

    monkeypatch.setattr(seeds, "_dvc", fake)
    return calls


def test_the_command_queues_runs_then_summarises(monkeypatch, capsys, tmp_path):
    calls = _fake_dvc(monkeypatch, _payload(), tmp_path)
    seeds.main(["baseline", "--seeds", "0", "1", "2"])
    assert calls == [*seeds.queue_commands("baseline", [0, 1, 2]), seeds.RUN_ALL, seeds.EXP_SHOW]
    out = capsys.readouterr().out
    assert "dvc exp run -n baseline-seed2 -S ++common.seed=2 --queue baseline" in out
    assert "0.7206 ± 0.0064 (n=2)" in out
    assert "wrote reports/seeds/baseline.json" in out

    # the record the report reads: the finished runs, their commit and machine
    path = tmp_path / "reports/seeds/baseline.json"
    record = json.loads(path.read_text())
    assert record["commit"] == "2098bc17d963a21ed15c775d8536a41da7f4ef50"
    assert [(r["seed"], r["test_accuracy"]) for r in record["runs"]] == [(0, 0.7161), (1, 0.7251)]
    assert record["machine"] and record["n"] == 2
    spread = spread_record.read_record(path)
    assert spread.n == 2 and spread.mean == pytest.approx(0.7206)
    assert spread.commit == record["commit"] and spread.machine == record["machine"]


def test_a_bad_record_is_refused_by_name(tmp_path):
    path = tmp_path / "baseline.json"
    for text, why in (
        ("{", "unreadable"),
        ('{"stage": "baseline"}', "no list of runs"),
        ('{"stage": "improved", "runs": []}', "holds stage 'improved'"),
        ('{"stage": "baseline", "runs": [{"seed": 0, "test_accuracy": NaN}]}', "finite"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=why):
            spread_record.read_record(path)


def test_the_summary_writes_records_only_when_asked(monkeypatch, capsys, tmp_path):
    _fake_dvc(monkeypatch, _payload(), tmp_path)
    seeds.main(["baseline"])
    assert not (tmp_path / "reports/seeds").exists()
    seeds.main(["baseline", "improved", "--write"])  # improved: no finished run, no record
    assert [p.name for p in (tmp_path / "reports/seeds").iterdir()] == ["baseline.json"]


def test_print_and_queue_only_run_less(monkeypatch, capsys, tmp_path):
    calls = _fake_dvc(monkeypatch, _payload(), tmp_path)
    seeds.main(["improved", "--seeds", "3", "--print", "--", "--pull"])
    assert calls == []
    assert capsys.readouterr().out.splitlines() == [
        "dvc exp run -n improved-seed3 -S ++common.seed=3 --queue --pull improved",
        "dvc exp run --run-all",
    ]
    seeds.main(["improved", "--seeds", "3", "--queue-only"])
    assert calls == seeds.queue_commands("improved", [3])
    calls.clear()
    seeds.main([])  # no --seeds: the summary of every training stage
    assert calls == [seeds.EXP_SHOW]
    assert "resnet" in capsys.readouterr().out


def test_bad_arguments_exit_2(monkeypatch):
    _fake_dvc(monkeypatch, [])
    for argv in (["--seeds", "0"], ["nope"], ["baseline", "--seeds", "1", "1"]):
        with pytest.raises(SystemExit) as info:
            seeds.main(argv)
        assert info.value.code == 2, argv


def test_the_summary_reads_a_committed_record_when_this_commit_has_no_experiment(tmp_path):
    runs = [
        spread_record.SeedRun(f"baseline-seed{k}", k, v, "success")
        for k, v in enumerate([0.7251, 0.7228, 0.7180])
    ]
    spread_record.write_record(
        spread_record.Spread("baseline", runs, commit="96b884ac56ff", machine="AMD EPYC"),
        root=tmp_path,
    )
    recorded = seeds.committed_records(["baseline", "improved"], root=tmp_path)
    assert set(recorded) == {"baseline"}
    spreads, _ = seeds.collect([], ["baseline", "improved"])
    text = "\n".join(seeds.summary_lines(spreads, recorded=recorded))
    assert "baseline  recorded in reports/seeds/baseline.json" in text
    assert "0.7220 ± 0.0036 (n=3); seed 0 0.7251, seed 1 0.7228, seed 2 0.7180" in text
    assert "no experiment improved-seed<k> yet" in text
    assert "no experiment baseline-seed<k>" not in text


def test_a_record_says_what_its_runs_computed_in(tmp_path):
    from src.seeds.spread import SeedRun, Spread, read_record, write_record

    runs = [SeedRun(f"improved-seed{k}", k, 0.81 + k / 1000, "success", "bf16") for k in (0, 1)]
    path = write_record(Spread("improved", runs, commit="abc"), tmp_path)
    assert json.loads(path.read_text())["numerics"] == "bf16"
    assert read_record(path).numerics == "bf16"
    record = json.loads(path.read_text())
    del record["numerics"]  # written before records said it: float32 runs
    path.write_text(json.dumps(record))
    assert read_record(path).numerics == "fp32"
    mixed = [*runs, SeedRun("improved-seed2", 2, 0.8, "success", "fp32")]
    assert Spread("improved", mixed).numerics == "mixed"
