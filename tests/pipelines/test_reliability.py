"""Interruptions: a stage killed at any moment resumes from its last checkpoint and
ends with the same metrics as an uninterrupted run; no MLflow run stays RUNNING."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from src.config.layout import PROJECT_ROOT
from tests.conftest import update_params

METRIC_KEYS = ("final_train_loss", "final_val_loss", "test_loss", "test_accuracy", "steps")


def _stage(root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "DVC_ROOT": str(root)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.train", "baseline", "--no-progress", *extra],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _metrics(root: Path) -> dict:
    metrics = json.loads((root / "reports/baseline/metrics.json").read_text())
    return {k: metrics[k] for k in METRIC_KEYS} | {"run_id": metrics["mlflow_run_id"]}


def _runs(root: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("cifar10")
    return client.search_runs([exp.experiment_id], "attributes.run_name = 'baseline'")


@pytest.fixture
def long_enough(prepared: Path) -> Path:
    """Enough validations (and so checkpoints) to kill a run between two of them. Numerics
    pinned: on a CPU with native bf16, `auto` measures the step, and on this tiny network
    the variants are close enough for the reference run and the killed one to choose
    differently (a resumed run keeps its checkpoint's choice; that is what is tested)."""
    update_params(
        prepared,
        **{
            "baseline.train.epochs": 8,
            "baseline.train.early_stop_count": 0,
            "common.precision": "fp32",
        },
    )
    return prepared


@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGKILL,
        pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
    ],
    ids=["SIGKILL", "SIGTERM", "SIGINT"],
)
def test_killed_stage_resumes_to_the_same_result(long_enough: Path, sig):
    root = long_enough
    done = _stage(root)
    assert done.wait(timeout=300) == 0, done.stdout.read()
    reference = _metrics(root)

    ckpt = root / "checkpoints/baseline.pt"
    proc = _stage(root)
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the stage finished before it could be killed"
    time.sleep(0.3)  # somewhere between two checkpoints
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    output = proc.stdout.read()
    assert code != 0
    if sig != signal.SIGKILL:
        assert code == 130 and "resume" in output
    assert ckpt.exists(), "the checkpoint survives the kill"

    again = _stage(root)
    assert again.wait(timeout=300) == 0
    output = again.stdout.read()
    assert "resuming from checkpoint" in output
    resumed = _metrics(root)
    assert {k: resumed[k] for k in METRIC_KEYS} == {k: reference[k] for k in METRIC_KEYS}
    assert not ckpt.exists(), "a finished stage removes its checkpoint"

    runs = {r.info.run_id: r.info.status for r in _runs(root)}
    assert "RUNNING" not in runs.values()
    assert runs[resumed["run_id"]] == "FINISHED"
    assert len(runs) == 2, "the killed run was resumed, not duplicated"


# --------------------------------------------------------------------------- dead runs

# Runs a stage in a subprocess whose `attr` of `module` is replaced by a function that
# touches a marker file and waits: the test knows the stage is at that point, and kills it.
HOLD = """
import pathlib, sys, time
import {module} as target
def hold(*args, **kwargs):
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(600)
target.{attr} = hold
from pipelines import {stage_module}
{stage_module}.main({args})
"""


def _hold_at(
    root: Path, module: str, attr: str, stage_module: str, argv: list | None
) -> subprocess.Popen:
    """The stage running in a subprocess, held (alive) where `module`.`attr` is called."""
    marker = root / "held"
    marker.unlink(missing_ok=True)
    args = "" if argv is None else repr(argv)
    code = HOLD.format(module=module, attr=attr, stage_module=stage_module, args=args)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(marker)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DVC_ROOT": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=30)[0] if proc.poll() is not None else ""
    return proc


def _kill_at(root: Path, module: str, attr: str, stage_module: str, argv: list | None) -> None:
    proc = _hold_at(root, module, attr, stage_module, argv)
    proc.kill()
    proc.wait(timeout=60)


def _statuses(root: Path, name: str) -> dict[str, str]:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("cifar10")
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
    return {r.info.run_id: r.info.status for r in runs}


def test_stage_killed_before_its_first_checkpoint_leaves_no_running_run(prepared: Path):
    from pipelines import train

    _kill_at(prepared, "src.training.recipe", "fit", "train", ["baseline", "--no-progress"])
    assert not (prepared / "checkpoints/baseline.pt").exists()
    (dead,) = _statuses(prepared, "baseline").items()
    assert dead[1] == "RUNNING", "the SIGKILLed process could not end its run"

    train.main(["baseline", "--no-progress"])
    runs = _statuses(prepared, "baseline")
    assert runs[dead[0]] == "KILLED"
    assert sorted(runs.values()) == ["FINISHED", "KILLED"]


def test_download_killed_midway_leaves_no_running_run(prepared: Path):
    from pipelines import download

    before = _statuses(prepared, "download")
    _kill_at(prepared, "pipelines.download", "load_dataset", "download", None)
    (dead,) = [run for run in _statuses(prepared, "download") if run not in before]
    assert _statuses(prepared, "download")[dead] == "RUNNING"

    download.main()
    runs = _statuses(prepared, "download")
    assert runs[dead] == "KILLED"
    assert "RUNNING" not in runs.values() and len(runs) == len(before) + 2


def test_stage_killed_while_registering_leaves_one_tagged_version(prepared: Path):
    """kill -9 right after the registry created the version (before the alias and the
    stage's last writes): the version already carries its smoke tags, and the rerun, which
    resumes the same run, repairs that version instead of adding a second one."""
    from pipelines import train

    update_params(prepared, **{"baseline.train.dry_run": True})  # a smoke run
    argv = ["baseline", "--no-progress"]
    _kill_at(prepared, "src.tracking.registry", "register_version", "train", argv)
    assert (prepared / "checkpoints/baseline.pt").exists()
    mlflow.set_tracking_uri(f"sqlite:///{prepared}/mlflow.db")
    client = mlflow.MlflowClient()
    (killed,) = client.search_model_versions("name = 'cifar10-baseline'")
    assert killed.tags["servable"] == "false" and "dry run" in killed.tags["smoke"]

    train.main(argv)
    (version,) = client.search_model_versions("name = 'cifar10-baseline'")
    assert version.version == killed.version and version.run_id == killed.run_id
    assert version.tags == killed.tags
    assert _metrics(prepared)["run_id"] == killed.run_id  # the same run, resumed
    assert sorted(_statuses(prepared, "baseline").values()) == ["FINISHED"]


def _dead_worker() -> str:
    """The worker id of a process that has ended (and been reaped)."""
    import socket

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    return f"{socket.gethostname()}:{int(proc.stdout)}:1"


def _closes_only_dead_runs_of_this_stage_and_root(root: Path) -> None:
    from src.runtime.workers import worker_id
    from src.tracking.dead_runs import close_dead_runs
    from src.tracking.runs import set_experiment

    exp = set_experiment("cifar10")
    client = mlflow.MlflowClient()
    dead, here = _dead_worker(), str(root)
    temp_copy = str(root.resolve() / ".dvc/tmp/exps/standalone/tmp1a2b3c4d")
    cases = {
        "dead": {"stage": "baseline", "worker": dead, "project_root": here},
        "resumed next": {"stage": "baseline", "worker": dead, "project_root": here},
        "alive": {"stage": "baseline", "worker": worker_id(), "project_root": here},
        "other host": {"stage": "baseline", "worker": "elsewhere:1:1", "project_root": here},
        "other root": {"stage": "baseline", "worker": dead, "project_root": f"{here}-copy"},
        "other stage": {"stage": "improved", "worker": dead, "project_root": here},
        "untagged": {"stage": "baseline", "project_root": here},
        # `dvc exp run --temp` killed: its copy's run, found by the next run from any copy
        "dead temp copy": {"stage": "baseline", "worker": dead, "project_root": temp_copy},
        "alive temp copy": {"stage": "baseline", "worker": worker_id(), "project_root": temp_copy},
    }
    ids = {name: client.create_run(exp, tags=tags).info.run_id for name, tags in cases.items()}
    closed = close_dead_runs("baseline", exp, keep=ids["resumed next"])
    killed = {"dead", "dead temp copy"}
    assert sorted(closed) == sorted(ids[name] for name in killed)
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {name: "KILLED" if name in killed else "RUNNING" for name in cases}


def test_close_dead_runs_sqlite(project: Path):
    _closes_only_dead_runs_of_this_stage_and_root(project)


@pytest.mark.slow  # a real `mlflow server`: about 40 s
def test_close_dead_runs_tracking_server(project: Path, mlflow_server, monkeypatch):
    url, _ = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    _closes_only_dead_runs_of_this_stage_and_root(project)


# --------------------------------------------------------------------------- one writer


def _run_stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DVC_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_second_run_of_a_live_stage_refuses_and_touches_nothing(prepared: Path):
    """What a killed `dvc repro` leaves: the stage process still running, with a
    checkpoint and a RUNNING MLflow run. A second run of the stage refuses at once,
    naming that process; it neither resumes its checkpoint nor marks its run KILLED."""
    ckpt = prepared / "checkpoints/baseline.pt"
    # held after training, before its outputs: the checkpoint and the live run exist
    holder = _hold_at(prepared, "src.runner.training_stage", "write_outputs", "train", ["baseline"])
    try:
        (live,) = _statuses(prepared, "baseline").items()
        assert live[1] == "RUNNING" and ckpt.exists()
        before = ckpt.read_bytes()

        proc = _run_stage(prepared, "pipelines.train", "baseline", "--no-progress")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: stage baseline is already running")
        assert f"process {holder.pid} " in lines[0] and "running since" in lines[0]
        assert _statuses(prepared, "baseline") == dict([live]), "the live run is untouched"
        assert ckpt.read_bytes() == before
        assert not (prepared / "models/baseline.pt").exists()
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process, nothing stale is left
        holder.wait(timeout=60)

    proc = _run_stage(prepared, "pipelines.train", "baseline", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from checkpoint" in proc.stdout
    runs = _statuses(prepared, "baseline")
    assert runs[live[0]] == "FINISHED", "the resumed run is the killed one, finished now"
    assert len(runs) == 1 and (prepared / "models/baseline.pt").exists()


def test_a_second_download_refuses_while_one_runs(prepared: Path):
    data = prepared / "data/cifar10"
    manifest = (data / "manifest.json").read_bytes()
    before = set(_statuses(prepared, "download"))
    holder = _hold_at(prepared, "pipelines.download", "load_dataset", "download", None)
    try:
        proc = _run_stage(prepared, "pipelines.download")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"stage download is already running: process {holder.pid} " in proc.stderr
        (live,) = set(_statuses(prepared, "download")) - before
        assert _statuses(prepared, "download")[live] == "RUNNING"
        assert (data / "manifest.json").read_bytes() == manifest
    finally:
        holder.kill()
        holder.wait(timeout=60)


def test_the_stage_lock_names_its_holder_and_dies_with_it(project: Path):
    from src.runner.lock import stage_lock
    from src.runtime.errors import StageBusyError

    code = (
        "import sys, time\n"
        "from src.runner.lock import stage_lock\n"
        "with stage_lock('improved'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DVC_ROOT": str(project)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StageBusyError, match=f"process {holder.pid} on host"):
            with stage_lock("improved"):
                pass
        with stage_lock("baseline"):  # another stage is not blocked
            pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with stage_lock("improved") as path:  # SIGKILL left nothing stale
        assert path == project / "checkpoints/improved.lock"
        assert path.read_text().split(":")[1] == str(os.getpid())


def _temp_copy(project: Path, name: str) -> Path:
    """A stand-in for DVC's temporary experiment copy of `project` (`dvc exp run --temp`):
    a folder with .dvc/ and params.yaml under <project>/.dvc/tmp/exps/standalone/."""
    copy = project / ".dvc/tmp/exps/standalone" / name
    (copy / ".dvc").mkdir(parents=True)
    (copy / "params.yaml").write_bytes((project / "params.yaml").read_bytes())
    return copy


def _in_copy(project: Path, copy: Path, *args: str, **popen) -> subprocess.Popen:
    """`python <args>` as DVC runs a stage in `copy`: there, with DVC_ROOT the repository."""
    env = {**os.environ, "DVC_ROOT": str(project), "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen([sys.executable, *args], cwd=copy, env=env, text=True, **popen)


def test_the_stage_lock_spans_temporary_experiment_copies(project: Path):
    """A killed `dvc exp run --temp` leaves its stage running in its temporary copy. A run
    of that stage in the workspace, or in another copy, refuses in one line naming the
    process and its copy; once that process is gone, the next run takes the lock."""
    from src.runner.lock import stage_lock

    orphan_copy = _temp_copy(project, "tmp1a2b3c4d")
    code = (
        "import time\n"
        "from src.runner.lock import stage_lock\n"
        "with stage_lock('baseline'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = _in_copy(project, orphan_copy, "-c", code, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        workspace = _run_stage(project, "pipelines.train", "baseline", "--no-progress")
        other = _in_copy(
            project,
            _temp_copy(project, "tmp5e6f7g8h"),
            "-m",
            "pipelines.train",
            "baseline",
            "--no-progress",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = other.communicate(timeout=300)
        for code_, stderr in ((workspace.returncode, workspace.stderr), (other.returncode, err)):
            assert code_ == 1, stderr
            (line,) = stderr.strip().splitlines()
            assert line.startswith("error: stage baseline is already running: ")
            assert f"process {holder.pid} on host " in line and f", in {orphan_copy}" in line
        assert not (project / "checkpoints/baseline.pt").exists()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with stage_lock("baseline") as path:  # the orphan is gone: the lock is free
        assert path == project / "checkpoints/baseline.lock"
    assert not (orphan_copy / "checkpoints").exists()


def test_resuming_never_marks_a_live_run_killed(project: Path):
    from src.runtime.workers import worker_id
    from src.tracking import dead_runs
    from src.tracking.runs import set_experiment

    exp = set_experiment("cifar10")
    client = mlflow.MlflowClient()
    alive = client.create_run(exp, tags={"worker": worker_id()}).info.run_id
    dead = client.create_run(exp, tags={"worker": _dead_worker()}).info.run_id
    dead_runs.mark_run_killed(alive)
    dead_runs.mark_run_killed(dead)
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(dead).info.status == "KILLED"


@pytest.mark.parametrize("change", ["store deleted", "MLFLOW_TRACKING_URI changed"])
def test_a_store_gone_since_the_kill_resumes_training_in_a_new_run(
    prepared: Path, tmp_path: Path, change: str
):
    """Killed after its last checkpoint; then the store the checkpoint's run lives in is
    gone from the rerun's view. The rerun says so in one line and finishes from the
    checkpoint in a new run of the store in use; nobody deletes a checkpoint by hand."""
    update_params(prepared, **{"baseline.train.dry_run": True})
    _kill_at(prepared, "src.tracking.registry", "log_model", "train", ["baseline", "--no-progress"])
    assert (prepared / "checkpoints/baseline.pt").exists()
    env = {**os.environ, "DVC_ROOT": str(prepared)}
    db = prepared / "mlflow.db"
    if change == "store deleted":
        db.unlink()
    else:
        db = tmp_path / "team" / "mlflow.db"
        db.parent.mkdir()
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.train", "baseline", "--no-progress"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (note,) = [line for line in proc.stdout.splitlines() if "is not in the MLflow store" in line]
    assert "resuming from checkpoint" in proc.stdout
    assert not (prepared / "checkpoints/baseline.pt").exists()
    # read directly: this process's MLflow may still hold the deleted file open
    with sqlite3.connect(db) as con:
        runs = con.execute("SELECT run_uuid, name, status FROM runs").fetchall()
    (run_id, name, status) = [run for run in runs if run[1] == "baseline"][0]
    assert len(runs) == 1 and status == "FINISHED" and run_id not in note, runs
    assert (
        json.loads((prepared / "reports/baseline/metrics.json").read_text())["mlflow_run_id"]
        == run_id
    )
