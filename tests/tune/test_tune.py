"""Hyperparameter search (`python -m src.tune`) on tiny data: the space is validated,
trials land in storage and MLflow with the right states, pruning and failures are
recorded and the search goes on, a study resumes, a dead worker's trial is rerun, two
processes share one study, and `apply` gives a command that reproduces the best config."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from src.config.design import conv_filters, knobs_into, read_best_knobs
from src.config.layout import PROJECT_ROOT
from src.config.load import load_params
from src.config.typed import flatten, to_dict
from src.runtime.errors import ConfigError
from src.tracking.runs import run_params
from src.training import recipe
from src.training.loop import FitResult, NonFiniteLossError
from src.tune import search, summary
from src.tune.__main__ import main as tune_main
from src.tune.space import (
    NOT_DESIGN,
    BudgetConfig,
    hand_tuned_knobs,
    load_tune_config,
    suggest_knobs,
    trial_section,
)
from src.tune.storage import open_storage
from src.tune.trials import trials_done

PARAMS = PROJECT_ROOT / "params.yaml"


@pytest.fixture(autouse=True)
def _figures_only_where_checked(request, monkeypatch):
    """Drawing Optuna's figures takes seconds; only the end-to-end test checks them."""
    if "three_trial" not in request.node.name:
        monkeypatch.setattr(summary, "write_figures", lambda study, out_dir: {})


def _search(*args: str) -> None:
    tune_main(["--no-progress", *args])


def _study(name: str, storage: str = "reports/tune/journal.log") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage).storage)


def _runs(root, study: str):
    """The study's parent run and its nested trial runs (ordered by trial number)."""
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("cifar10-tune")
    parents = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = 'tune-{study}'")
    assert len(parents) == 1, "one parent run per study"
    parent = parents[0]
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    children.sort(key=lambda r: int(r.data.tags["optuna.trial_number"]))
    return client, parent, children


MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def _contrived_fit(accuracy):
    """A stand-in for `fit`: reports `accuracy(trial number)` at four validations,
    or raises what it returns when that is an exception."""

    def fake_fit(model, data, cfg, pipeline, *, on_validation, name, **kwargs):
        acc = accuracy(int(name.split("-")[1]))
        if isinstance(acc, Exception):
            raise acc
        for k in range(1, 5):
            row = {"step": 10 * k, "epoch": k / 2, "train_loss": 1.0, "val_loss": 1.0}
            on_validation({**row, "val_accuracy": acc}, [(10 * k, 1.0)])
        final = {"final_train_accuracy": acc, "final_val_accuracy": acc, "final_val_loss": 1.0}
        final.update(test_accuracy=0.0, test_loss=0.0)
        return FitResult([], final, 40, None, 40, 2.0, 0.1, 0.0, 1.0)

    return fake_fit


# --------------------------------------------------------------------------- config


def test_the_real_tune_section_validates():
    for profile in ("full", "quick"):
        params = load_params(PARAMS, overrides={"profile": profile})
        tcfg = load_tune_config(params)
        assert {"width", "blocks", "kernel_size", "dropout", "lr"} <= set(tcfg.space)
        assert tcfg.space["kernel_size"].choices == (3, 5)
        assert {"momentum", "scheduler", "label_smoothing"} <= set(tcfg.space)
        assert tcfg.space["lr"].log and tcfg.space["dropout"].high == 0.5


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"tune.space.lr.low": 1.0}, "tune.space.lr.low"),  # low above high
        ({"tune.space.lr.low": 0.0}, "tune.space.lr.low"),  # log needs low > 0
        ({"tune.space.colour": {"kind": "float", "low": 0, "high": 1}}, "tune.space.colour"),
        ({"tune.space.kernel_size.choices": [3, 4]}, "tune.space.kernel_size"),  # even + same
        ({"tune.space.blocks.high": 6}, "tune.space.blocks"),  # 32 px halved 6 times
        ({"tune.space.batch_size": {"kind": "float", "low": 16, "high": 64}}, "tune.space"),
        ({"tune.space.dropout.kind": "categorical"}, "tune.space.dropout.choices"),
        ({"tune.pruner.args": {"n_warmup": 1}}, "tune.pruner.args.n_warmup"),
        ({"tune.pruner.kind": "patient"}, "tune.pruner.kind"),
        ({"tune.budget.epochs": 0}, "tune.budget.epochs"),
        ({"tune.base": "resnet"}, "tune.base"),
        ({"tune.bogus": 1}, "tune.bogus"),
    ],
)
def test_an_invalid_space_names_its_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_tune_config(load_params(PARAMS, overrides=overrides))
    assert info.value.key.startswith(key), info.value


def test_a_trial_is_the_base_config_with_the_sampled_knobs():
    params = load_params(PARAMS)
    base = params.improved
    knobs = {"width": 0.5, "blocks": 3, "kernel_size": 5, "lr": 0.01, "hflip": False}
    section = trial_section(base, knobs, BudgetConfig(epochs=1, subset=500))
    assert section.model.filters == (64, 128, 256)
    assert (section.model.kernel_size, section.train.lr) == (5, 0.01)
    assert section.train.augment.hflip is False
    assert (section.train.epochs, section.train.subset) == (1, 500)
    assert section.model.fc == base.model.fc and section.train.augment.crop_padding == 4
    assert conv_filters((8, 16), blocks=4) == (8, 16, 32, 64)
    # the hand-tuned design, as knob values, gives the base back (weight decay 0 is
    # clipped into the log-scale range, and says so)
    tcfg = load_tune_config(params)
    values, notes = hand_tuned_knobs(base, tcfg.space)
    again = trial_section(base, values, BudgetConfig())
    assert again.model == base.model
    assert again.train.weight_decay == tcfg.space["weight_decay"].low
    assert any("weight_decay" in note for note in notes)


# --------------------------------------------------------------------------- studies


def test_a_three_trial_study_in_storage_and_mlflow_then_resumed(tune_project, capsys, monkeypatch):
    _search("--study-name", "e2e", "--n-trials", "3")
    study = _study("e2e")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state.is_finished() for t in trials)
    params = load_params()
    tcfg = load_tune_config(params)
    assert trials[0].user_attrs["hand_tuned"]
    assert study.metric_names == [search.OBJECTIVE]  # optuna-dashboard shows this name
    hand_tuned = hand_tuned_knobs(params.improved, tcfg.space)[0]
    assert {k: trials[0].params[k] for k in hand_tuned} == hand_tuned
    assert len(trials[0].intermediate_values) >= 2  # a report per validation

    client, parent, children = _runs(tune_project, "e2e")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.study_name"] == "e2e"
    assert "tune.space.lr.high" in parent.data.params and "best_val_accuracy" in parent.data.metrics
    assert not [m for m in parent.data.metrics if m.startswith("system/")]  # the trials' own
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/optimization_history.png" in figures
    assert [c.data.tags["optuna.trial_number"] for c in children] == ["0", "1", "2"]
    for trial, run in zip(trials, children):
        assert run.data.tags["optuna.trial_state"] == trial.state.name
        assert run.info.status == MLFLOW_STATUS[trial.state.name]
        assert run.data.params["model.kernel_size"] == str(trial.params["kernel_size"])
        # the stages' param names, plus the search-only knobs under their own
        assert set(run_params(params, params.improved)) <= set(run.data.params)
        assert {"width", "blocks"} & set(trial.params) <= set(run.data.params)
        assert "curves/val_accuracy" in run.data.metrics
        assert not [m for m in run.data.metrics if m.startswith("test")]  # never looked at
        history = client.get_metric_history(run.info.run_id, "curves/val_accuracy")
        assert len(history) == len(trial.intermediate_values)
    report = tune_project / "reports/tune/e2e"
    assert (report / "best_params.yaml").is_file()
    assert (report / "optimization_history.png").is_file()

    # the same command with a larger budget adds trials to the study
    monkeypatch.setattr(summary, "write_figures", lambda study, out_dir: {})  # checked above
    _search("--study-name", "e2e", "--n-trials", "5")
    again = _study("e2e").get_trials()
    assert len(again) == 5 and all(t.state.is_finished() for t in again)
    assert [t.datetime_start for t in again[:3]] == [t.datetime_start for t in trials]
    assert _study("e2e").user_attrs["workers_joined"] == 2
    _, parent_again, children = _runs(tune_project, "e2e")
    assert parent_again.info.run_id == parent.info.run_id and len(children) == 5

    # `apply` prints a dvc exp run command whose -S overrides reproduce the best config
    capsys.readouterr()
    tune_main(["apply", "--study-name", "e2e"])
    command = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert command[:4] == ["dvc", "exp", "run", "-n"] and command[-1] == "improved"
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "-S"]
    from dvc.utils.hydra import apply_overrides

    copy = tune_project / "params-applied.yaml"
    copy.write_text((tune_project / "params.yaml").read_text())
    apply_overrides(copy, sets)
    retrained = flatten(load_params(copy).improved)
    best = flatten(_study("e2e").best_trial.user_attrs["config"])
    design = [k for k in best if k.split(".")[-1] not in NOT_DESIGN]
    assert {k: retrained[k] for k in design} == {k: best[k] for k in design}
    # ... and best_params.yaml's knobs, put into params.yaml's design, are the same design
    knobs = read_best_knobs(report / "best_params.yaml")
    hand = to_dict(load_params(tune_project / "params.yaml").improved)
    from_knobs = flatten(knobs_into(hand, knobs))
    assert {k: from_knobs[k] for k in design} == {k: retrained[k] for k in design}


def test_pruning_and_a_crash_are_recorded_and_the_search_goes_on(tune_project, monkeypatch):
    outcomes = {1: 0.2, 2: NonFiniteLossError("[trial-002] non-finite training loss at step 3")}
    monkeypatch.setattr(recipe, "fit", _contrived_fit(lambda n: outcomes.get(n, 0.8 + n / 100)))
    pruner = "tune.pruner.args={n_startup_trials: 1, n_warmup_steps: 1}"
    _search("--study-name", "contrived", "--n-trials", "4", "-S", pruner)
    trials = _study("contrived").get_trials()
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]
    assert list(trials[1].intermediate_values) == [1]  # pruned at its first report
    assert "non-finite" in trials[2].user_attrs["fail_reason"]
    assert trials[3].value == pytest.approx(0.83)
    _, _, runs = _runs(tune_project, "contrived")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED", "FAILED", "FINISHED"]
    assert (
        runs[1].info.run_name == "trial-001 (pruned)" and runs[1].data.tags["stage"] == "trial-001"
    )
    assert [r.data.tags["optuna.trial_state"] for r in runs] == [s.name for s in states]
    assert "non-finite" in runs[2].data.tags["optuna.fail_reason"]


def test_a_dead_workers_trial_is_failed_and_rerun(tune_project, monkeypatch):
    monkeypatch.setattr(recipe, "fit", _contrived_fit(lambda n: 0.5))
    _search("--study-name", "dead", "--n-trials", "1")
    study = _study("dead")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = study.ask()  # as a worker killed mid-trial leaves it
    knobs = suggest_knobs(orphan, load_tune_config(load_params()).space)
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{gone.pid}:1")
    _search("--study-name", "dead", "--n-trials", "3")
    trials = _study("dead").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL] + [
        TrialState.COMPLETE
    ] * 2
    assert "stopped mid-trial" in trials[1].user_attrs["fail_reason"]
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == knobs
    assert trials_done(_study("dead")) == 3  # the rerun replaces the dead trial


def test_two_processes_share_one_study(tune_project, monkeypatch):
    """A `python -m src.tune` subprocess and this process run one study at once: this
    process's first trial lasts until the other worker is done, so they overlap."""
    command = [sys.executable, "-m", "src.tune", "--no-progress"]
    command += ["--study-name", "pair", "--n-trials", "4"]
    other = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env={**os.environ, "DVC_ROOT": str(tune_project)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def accuracy(number: int) -> float:
        other.wait(timeout=300)
        return 0.5

    monkeypatch.setattr(recipe, "fit", _contrived_fit(accuracy))
    try:
        _search("--study-name", "pair", "--n-trials", "4")
    finally:
        log = other.communicate(timeout=300)[0]
    assert other.returncode == 0, log
    assert "the last one draws the figures" in log  # this process was still busy
    trials = _study("pair").get_trials()
    assert [t.number for t in trials] == list(range(4)), log  # exactly --n-trials
    assert all(t.state == TrialState.COMPLETE for t in trials), log
    assert len({t.user_attrs["worker"] for t in trials}) == 2, log
    _, parent, runs = _runs(tune_project, "pair")  # one parent, every trial under it
    assert [int(r.data.tags["optuna.trial_number"]) for r in runs] == list(range(4))
    assert len({r.data.tags["optuna.worker"] for r in runs}) == 2
    assert parent.info.status == "FINISHED"  # set by the last worker out


def test_tuning_without_prepared_data_says_what_to_run(project, capsys):
    """As after `python -m src.quick`: its data lives in a temporary copy only."""
    with pytest.raises(SystemExit) as info:
        _search("--study-name", "nodata")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "tuning trains on the prepared data set, and data/cifar10/ holds none" in err
    assert "`CIFAR10_SOURCE=/path/to/cifar-10-python.tar.gz dvc repro download`" in err
    assert "Traceback" not in err


def test_an_unreachable_storage_fails_fast_without_leaking_the_password(tune_project, capsys):
    started = time.monotonic()
    with pytest.raises(SystemExit) as info:
        _search("--storage", "postgresql://tuner:s3cret@127.0.0.1:9/optuna")
    assert info.value.code == 1 and time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "cannot open the Optuna storage postgresql" in err
    assert "://tuner:***@127.0.0.1:9/optuna" in err
    assert "s3cret" not in err


@pytest.mark.parametrize("command", ["search", "apply"])
def test_a_storage_that_is_not_a_journal_file_is_refused_by_name(tune_project, capsys, command):
    """A directory, params.yaml, or a path under a file: one line naming it, exit 2,
    nothing written (no journal lines appended to params.yaml, no lock file)."""
    folder = tune_project / "optuna-dir"
    folder.mkdir(exist_ok=True)
    params = tune_project / "params.yaml"
    before = params.read_bytes()
    for spec, says in [
        (str(folder), "is a directory, not an Optuna journal file"),
        ("params.yaml", "is not an Optuna journal file"),
        ("params.yaml/journal.log", "cannot create"),
    ]:
        listing = sorted(p.name for p in tune_project.iterdir())
        with pytest.raises(SystemExit) as info:
            tune_main([command, "--no-progress", "--storage", spec, "--study-name", "x"])
        assert info.value.code == 2, spec
        err = capsys.readouterr().err
        (line,) = err.strip().splitlines()
        assert line.startswith("error: ") and f"storage {spec!r}" in line and says in line
        assert "Traceback" not in err
        assert params.read_bytes() == before
        assert sorted(p.name for p in tune_project.iterdir()) == listing
        assert not list(folder.iterdir())


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("CIFAR_MLOPS_PG_URL"), reason="CIFAR_MLOPS_PG_URL unset")
def test_a_postgresql_storage(tune_project, monkeypatch):
    """`postgresql://` (SQLAlchemy 2.1 would pick psycopg 3; psycopg2 is installed)."""
    url = os.environ["CIFAR_MLOPS_PG_URL"]
    monkeypatch.setattr(recipe, "fit", _contrived_fit(lambda n: 0.5 + n / 100))
    name = f"pg-{uuid.uuid4().hex[:8]}"
    try:
        _search("--storage", url, "--study-name", name, "--n-trials", "2")
        trials = _study(name, url).get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(url).storage)


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_trial(tune_project):
    """SIGKILL mid-trial; the next run fails that trial, reruns it and finishes."""
    args = ["--study-name", "killed", "--n-trials", "3", "--no-progress"]
    args += ["-S", "tune.budget.epochs=40", "-S", "improved.train.early_stop_count=0"]
    env = {**os.environ, "DVC_ROOT": str(tune_project)}
    worker = subprocess.Popen([sys.executable, "-m", "src.tune", *args], cwd=PROJECT_ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = optuna.study.get_all_study_names(open_storage("reports/tune/journal.log").storage)
        running = []
        if "killed" in names:
            running = [
                t
                for t in _study("killed").get_trials(states=(TrialState.RUNNING,))
                if t.intermediate_values
            ]
        if running:
            break
        time.sleep(0.2)
    assert running, "no trial started"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    tune_main(args)
    trials = _study("killed").get_trials()
    assert trials[0].state == TrialState.FAIL and "stopped" in trials[0].user_attrs["fail_reason"]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].state == TrialState.COMPLETE
    assert trials_done(_study("killed")) == 3
    _, _, runs = _runs(tune_project, "killed")
    assert runs[0].info.status == "KILLED"
    assert to_dict(trials[1].params) == to_dict(trials[0].params)
