"""Through `dvc repro` itself, in a git + DVC copy of the project: DVC deletes a stage's
outs before running its command, so what a params value can do is tested there, not only
through the stage command. Also what a killed `dvc` process leaves behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from src.config.layout import PROJECT_ROOT
from src.runtime.workers import worker_alive
from tests.conftest import archive_folder, tiny_params, write_image_folder

COPIED = ("dvc.yaml", "src", "pipelines")
SENTINELS = ("mlruns/x", "tests/x", "mydata/notes.txt", ".git/keep.txt")


@pytest.fixture
def repo(tmp_path: Path, tiny_cifar) -> Path:
    """A git + DVC repository holding the project's pipeline, tiny params and sentinel
    files inside (MLflow store, tests, a user folder, .git) and outside it."""
    root = tmp_path / "project"
    root.mkdir()
    for name in COPIED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    archive_folder(write_image_folder(tmp_path / "cifar-images", tiny_cifar), _archive(root))
    raw = tiny_params(root, "official")  # CIFAR10_SOURCE (_env) points at the archive
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q", check=True)
    for name in SENTINELS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{name}: keep me")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("outside: keep me")
    (outside / "baseline.pt").write_text("a user's model: keep me")
    (root / "link").symlink_to(outside)
    return root


def _archive(root: Path) -> Path:
    """The tiny image-folder archive of `repo`, beside the project."""
    return root.parent / "cifar-images.tar.gz"


def _env(root: Path) -> dict:
    """What a user's shell has: the project's python first on PATH, the offline source in
    CIFAR10_SOURCE; DVC sets DVC_ROOT itself."""
    drop = ("DVC_ROOT", "MLFLOW_TRACKING_URI", "CIFAR_MLOPS_TRACKING")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"  # tests never reach the internet
    env["CIFAR10_SOURCE"] = str(_archive(root))
    return env


def _dvc(root: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


def _repro(root: Path, *args: str) -> subprocess.CompletedProcess:
    return _dvc(root, "repro", *args)


def _snapshot(root: Path) -> dict[str, str]:
    files = [root / name for name in SENTINELS]
    files += [root.parent / "outside" / "keep.txt", root.parent / "outside" / "baseline.pt"]
    return {str(p): p.read_text() for p in files}


def _set(root: Path, tree: dict) -> None:
    """Merge `tree` into the repository's params.yaml."""

    def merge(node: dict, update: dict) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                merge(node[key], value)
            else:
                node[key] = value

    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    merge(raw, tree)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize(
    "paths",
    [
        {"data": "../outside"},
        {"data": "link/cifar10"},  # a symlink out of the project
        {"data": "mlruns"},
        {"data": "tests"},
        {"data": "mydata"},
        {"data": ".git"},
        {"models": "../outside", "reports": "mydata"},
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()),
)
def test_no_path_param_makes_dvc_repro_delete_anything(repo: Path, paths: dict):
    before = _snapshot(repo)
    _set(repo, {"common": {"paths": paths}})
    proc = _repro(repo, "download")
    assert proc.returncode != 0, proc.stdout
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and ours[0].startswith("error: params: 'common.paths': "), proc.stderr
    assert "unknown key" in ours[0] and "Traceback" not in proc.stderr
    assert _snapshot(repo) == before
    assert not (repo / "dvc.lock").exists()


def test_dvc_repro_download_writes_only_its_own_outs(repo: Path):
    before = _snapshot(repo)
    proc = _repro(repo, "download")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (repo / "data/cifar10/manifest.json").is_file()
    assert (repo / "reports/download/metrics.json").is_file()
    assert _snapshot(repo) == before
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert "paths" not in lock["stages"]["download"]["params"]["params.yaml"].get("common", {})


def test_a_directory_remote_shares_the_outputs_offline(repo: Path, tmp_path: Path):
    """The documented recipe (docs/scaling-out.md): `dvc remote add -d` a directory,
    `dvc push`; where the outputs are missing, `dvc pull` brings them back unretrained."""
    assert _repro(repo, "download").returncode == 0
    _dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "remote"), check=True)
    assert _dvc(repo, "push", "download").returncode == 0
    shutil.rmtree(repo / "data/cifar10")
    shutil.rmtree(repo / ".dvc/cache")
    pulled = _dvc(repo, "pull", "download")  # only download ran here
    assert pulled.returncode == 0, pulled.stderr
    assert (repo / "data/cifar10/manifest.json").is_file()
    status = _dvc(repo, "status", "download")
    assert "up to date" in status.stdout, status.stdout


def test_a_failed_download_keeps_the_git_tracked_metrics(repo: Path):
    """DVC deletes a stage's outs before its command: the git-tracked metrics are
    `persist: true`, so an offline or mistyped source loses nothing."""
    metrics = repo / "reports/download/metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"n_train": 45000}')
    env = {**_env(repo), "CIFAR10_SOURCE": str(repo.parent / "no-such.tar.gz")}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "download"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    assert metrics.read_text() == '{"n_train": 45000}'


@pytest.mark.slow  # three `dvc repro` runs with tracking: about 25 s
def test_data_on_another_disk_through_the_dvc_cache(repo: Path, tmp_path: Path):
    """The README's way to keep the data elsewhere: DVC's cache there, outs linked."""
    cache = tmp_path / "big-disk" / "dvc-cache"
    _dvc(repo, "cache", "dir", str(cache), check=True)
    _dvc(repo, "config", "cache.type", "symlink", check=True)
    for args in (("download",), ("-f", "download")):  # the second replaces the first
        proc = _repro(repo, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        train = repo / "data/cifar10/train.npz"
        assert train.is_symlink() and train.resolve().is_relative_to(cache)
    assert "didn't change, skipping" in _repro(repo, "download").stdout


# --------------------------------------------------------------------------- kill -9 of dvc


def _runs(root: Path, held: int | None = None) -> dict[str, str]:
    """The baseline runs and their states. `held`: the pid of a SIGSTOPped stage process,
    which may have been stopped inside an SQLite write: then it is let run for a moment
    (SIGCONT, SIGSTOP) until the store can be read."""
    import sqlalchemy.exc

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    for _ in range(50):
        try:
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name("cifar10")
            runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'baseline'")
            return {r.info.run_id: r.info.status for r in runs}
        except (sqlalchemy.exc.OperationalError, mlflow.exceptions.MlflowException):
            if held is None:
                raise
            os.kill(held, signal.SIGCONT)
            time.sleep(0.05)
            os.kill(held, signal.SIGSTOP)
    raise AssertionError("the store stayed locked")


@pytest.mark.slow  # a download and a training through dvc: about 60 s
def test_a_killed_dvc_leaves_one_writer(repo: Path):
    """kill -9 of `dvc repro baseline` leaves its stage process training. A second
    `dvc repro baseline` refuses naming it and leaves its MLflow run RUNNING; the first
    process writes its outs when it ends (persistent: DVC deleted none meanwhile), and
    `dvc commit` records them."""
    _set(repo, {"baseline": {"train": {"epochs": 20, "early_stop_count": 0}}})
    assert _repro(repo, "download").returncode == 0
    ckpt, lock = repo / "checkpoints/baseline.pt", repo / "checkpoints/baseline.lock"
    with open(repo.parent / "first.log", "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "baseline"],
            cwd=repo,
            env=_env(repo),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pid = None
    try:
        deadline = time.time() + 120
        while not ckpt.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), (repo.parent / "first.log").read_text()
        worker = lock.read_text().splitlines()[0]  # host:pid:start of the stage process
        pid = int(worker.split(":")[1])
        os.kill(pid, signal.SIGSTOP)  # held mid-training while the second repro runs
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        assert worker_alive(worker), "the stage process outlives dvc"
        (live,) = _runs(repo, held=pid).items()
        assert live[1] == "RUNNING"

        second = _repro(repo, "baseline")
        assert second.returncode != 0
        assert f"error: stage baseline is already running: process {pid} " in second.stderr
        assert _runs(repo, held=pid) == dict([live]), "the live run is not marked KILLED"
        assert not (repo / "models/baseline.pt").exists()

        os.kill(pid, signal.SIGCONT)
        deadline = time.time() + 120
        while worker_alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not worker_alive(worker)
    finally:
        if pid is not None and worker_alive(worker):
            os.kill(pid, signal.SIGKILL)
        first.kill()
    assert _runs(repo) == {live[0]: "FINISHED"}
    assert (repo / "models/baseline.pt").is_file() and not ckpt.exists()
    assert _dvc(repo, "commit", "-f", "baseline").returncode == 0
    assert _dvc(repo, "status", "baseline").stdout.strip().endswith("up to date.")
    assert "didn't change, skipping" in _repro(repo, "baseline").stdout


def test_dvc_repro_download_keeps_a_users_file_in_the_prepared_folder(repo: Path):
    """DVC would restore an unchanged stage's outs from its run cache, deleting what a user
    put in data/cifar10 without running the stage; the out is persistent, so the stage
    runs, refuses naming the file, and the file stays."""
    assert _repro(repo, "download").returncode == 0
    mine = repo / "data/cifar10/my_notes.txt"
    mine.write_text("a user's file: keep me")
    proc = _repro(repo, "download")
    assert proc.returncode != 0, proc.stdout
    assert "my_notes.txt" in proc.stderr and "not a prepared data folder" in proc.stderr
    assert mine.read_text() == "a user's file: keep me"


def test_dvc_repro_keeps_a_model_behind_a_models_folder_linked_out(repo: Path):
    """DVC deletes a stage's outs before its command runs unless they are persistent: the
    model outs are, so `models/` made a symlink out of the project loses nothing at the
    link's target; the stage refuses, naming the link."""
    assert _repro(repo, "download").returncode == 0
    outside = repo.parent / "outside"
    model = (outside / "baseline.pt").read_bytes()
    (repo / "models").symlink_to(outside)
    before = _snapshot(repo)
    proc = _repro(repo, "baseline")
    assert proc.returncode != 0, proc.stdout
    assert f"{repo / 'models'} resolves to {outside}" in proc.stderr, proc.stderr
    assert (outside / "baseline.pt").read_bytes() == model
    assert _snapshot(repo) == before


@pytest.mark.parametrize("stage", ["figures-download", "report"])
def test_dvc_repro_keeps_figures_and_the_report_behind_a_reports_folder_linked_out(
    repo: Path, stage: str
):
    """Figures and the report are persistent outs too: with `reports/` a symlink out of
    the project, a forced `dvc repro` of a figures stage or of the report deletes nothing
    at the link's target (DVC would, before the command runs); the stage refuses."""
    assert _repro(repo, "figures-download").returncode == 0
    outside = repo.parent / "outside" / "reports"
    (repo / "reports").rename(outside)
    (repo / "reports").symlink_to(outside)
    for name in ("report.md", "report.html", "report/keep.png"):  # a user's, at the target
        (outside / name).parent.mkdir(parents=True, exist_ok=True)
        (outside / name).write_text(f"{name}: keep me")
    kept = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    assert outside / "download/samples.png" in kept
    before = _snapshot(repo)
    proc = _repro(repo, "-f", "-s", stage)
    assert proc.returncode != 0, proc.stdout
    assert f"{repo / 'reports'} resolves to {outside}" in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == kept
    assert _snapshot(repo) == before


@pytest.mark.slow  # a download, then two `dvc exp run --temp`: about 30 s
def test_a_killed_dvc_exp_run_temp_leaves_one_writer_and_a_copy_to_clean(repo: Path):
    """kill -9 of `dvc exp run --temp baseline` leaves its stage training in the temporary
    copy. A second `dvc exp run --temp baseline` (in a copy of its own) refuses naming that
    process and its copy; once the process is gone, the copy is one `src.exp_clean`
    removes (DVC's own records of it, as DVC wrote them)."""
    from src.runtime import temp_copies

    _set(repo, {"baseline": {"train": {"epochs": 20, "early_stop_count": 0}}})
    assert _repro(repo, "download").returncode == 0
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=repo, check=True)
    lock = repo / "checkpoints/baseline.lock"
    with open(repo.parent / "first.log", "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "dvc", "exp", "run", "--temp", "baseline"],
            cwd=repo,
            env=_env(repo),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pid = worker = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and first.poll() is None:
            lines = lock.read_text().splitlines() if lock.exists() else []
            if len(lines) == 3 and ".dvc/tmp/exps/" in lines[2]:
                break
            time.sleep(0.05)
        assert len(lines) == 3, (repo.parent / "first.log").read_text()
        worker, copy = lines[0], Path(lines[2])  # the stage process, in its copy
        pid = int(worker.split(":")[1])
        os.kill(pid, signal.SIGSTOP)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        assert worker_alive(worker), "the stage process outlives dvc"

        second = _dvc(repo, "exp", "run", "--temp", "baseline")
        assert second.returncode != 0
        line = next(x for x in second.stderr.splitlines() if x.startswith("error: stage"))
        assert line.startswith(f"error: stage baseline is already running: process {pid} ")
        assert f", in {copy}" in line
        later = time.time() + 3600  # DVC's records then old enough to be stale
        assert temp_copies.stale_copies(repo, now=later) == [], "a process works there"
    finally:
        if pid is not None and worker_alive(worker):
            os.kill(pid, signal.SIGKILL)
        first.kill()
    deadline = time.time() + 60
    while worker_alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    (stale,) = temp_copies.stale_copies(repo, now=later)
    assert stale.path == copy.resolve() and copy.is_dir()
    assert [c.path for c in temp_copies.remove_stale_copies(repo, now=later)] == [stale.path]
    assert not copy.exists()
    shown = _dvc(repo, "exp", "show", "--no-pager")
    assert "Running" not in shown.stdout, shown.stdout
