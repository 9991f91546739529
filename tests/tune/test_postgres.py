"""Many workers on one PostgreSQL study (the server .ci/run starts on 127.0.0.1):
exactly the requested trials, none lost or duplicated, and a worker killed
mid-trial leaves the study usable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from src.config.layout import PROJECT_ROOT
from src.tune.storage import open_storage
from src.tune.trials import trials_done

PG_URL = os.environ.get("CIFAR_MLOPS_PG_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="CIFAR_MLOPS_PG_URL unset (.ci/run sets it)"),
]


def _worker(root, study: str, n_trials: int, *extra: str) -> subprocess.Popen:
    args = ["--storage", PG_URL, "--study-name", study, "--n-trials", str(n_trials)]
    return subprocess.Popen(
        [sys.executable, "-m", "src.tune", "--no-progress", *args, *extra],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DVC_ROOT": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def study_name():
    name = f"pg-{uuid.uuid4().hex[:8]}"
    yield name
    storage = open_storage(PG_URL).storage
    if name in optuna.study.get_all_study_names(storage):
        optuna.delete_study(study_name=name, storage=storage)


def _trials(name: str) -> list:
    storage = open_storage(PG_URL).storage
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_four_workers_run_exactly_the_requested_trials(tune_project, study_name):
    workers = [_worker(tune_project, study_name, 8) for _ in range(4)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, "\n".join(logs)[-4000:]
    trials = _trials(study_name)
    assert sorted(t.number for t in trials) == list(range(8))  # none lost or duplicated
    # every trial ran to its end: completed, or pruned by the median rule (tiny trials)
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}, trials
    assert len({t.user_attrs["worker"] for t in trials}) >= 2, "the work was shared"


def test_a_killed_worker_leaves_the_study_usable(tune_project, study_name):
    # long enough trials to kill one mid-way; every worker of a study needs the same settings
    slow = ("-S", "tune.budget.epochs=15", "-S", "improved.train.early_stop_count=0")
    victim = _worker(tune_project, study_name, 3, *slow)
    deadline = time.monotonic() + 180
    running = []
    while not running and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.3)
        try:
            running = [
                t
                for t in _trials(study_name)
                if t.state == TrialState.RUNNING and t.intermediate_values
            ]
        except KeyError:  # the study is not created yet
            pass
    assert running, "no trial reached its first validation"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()

    survivor = _worker(tune_project, study_name, 3, *slow)
    log = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, log[-3000:]
    trials = _trials(study_name)
    states = [t.state for t in trials]
    assert states[0] == TrialState.FAIL and "stopped" in trials[0].user_attrs["fail_reason"]
    assert TrialState.RUNNING not in states
    assert (
        trials_done(optuna.load_study(study_name=study_name, storage=open_storage(PG_URL).storage))
        == 3
    )
