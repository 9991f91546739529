"""What a killed `dvc exp run` leaves under .dvc/tmp/exps/: the copy is removed once no
process works in it, never while one does, and nothing else is touched. DVC's copies
and info files are made here as DVC lays them out (dvc/repo/experiments/executor/)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.config.layout import PROJECT_ROOT
from src.runtime import temp_copies

OLD = time.time() - 3600  # an info file's mtime well past STALE_AFTER_S


def _copy(repo: Path, name: str, status: int, *, queue: bool = False, when=OLD) -> Path:
    """A temporary copy `name` with DVC's info files about its run: a `--temp` run has one
    under run/ (written while preparing) and one under standalone/run/ (the current one);
    a queued run one under run/."""
    exps = repo / ".dvc/tmp/exps"
    copy = exps / name if queue else exps / "standalone" / name
    (copy / ".dvc").mkdir(parents=True)
    (copy / "data").mkdir()
    (copy / "data/train.npz").write_bytes(b"0" * 1024)
    rev = hashlib.sha1(name.encode()).hexdigest()
    info = {"location": "dvc-task" if queue else "tempdir", "root_dir": str(copy)}
    records = [(exps / "run", 1 if not queue else status)]
    if not queue:
        records.append((exps / "standalone/run", status))
    for folder, state in records:
        path = folder / rev / f"{rev}.run"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**info, "name": f"exp-{name}", "status": state}))
        os.utime(path, (when, when))
    return copy


def _statuses(repo: Path, copy: Path) -> list[int]:
    return [
        json.loads(p.read_text())["status"]
        for p in sorted((repo / ".dvc/tmp/exps").rglob("*.run"))
        if json.loads(p.read_text())["root_dir"] == str(copy)
    ]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".dvc/tmp/exps").mkdir(parents=True)
    return root


@pytest.fixture
def worker(repo: Path):
    """A process working in a copy, as a stage a killed `dvc` left running does."""
    procs = []

    def start(copy: Path) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "600"], cwd=copy / "data")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=60)


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_only_copies_of_ended_processes_are_removed(repo: Path, tmp_path: Path, worker):
    dead = _copy(repo, "tmpdead0001", status=2)
    dead_queued = _copy(repo, "tmpdead0002", status=2, queue=True)
    preparing = _copy(repo, "tmpprep0003", status=1)  # killed before it ran a stage
    live = _copy(repo, "tmplive0004", status=2)
    young = _copy(repo, "tmpyoung005", status=2, when=time.time())  # DVC may be setting up
    ended = _copy(repo, "tmpended006", status=6)  # DVC's own record: finished
    outside = tmp_path / "outside"  # an info file naming a folder that is not DVC's copy
    (outside / "keep.txt").parent.mkdir()
    (outside / "keep.txt").write_text("keep me")
    info = repo / ".dvc/tmp/exps/run/x/x.run"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"root_dir": str(outside), "status": 2}))
    os.utime(info, (OLD, OLD))
    holder = worker(live)

    removed = temp_copies.remove_stale_copies(repo)
    assert sorted(c.path for c in removed) == sorted(
        p.resolve() for p in (dead, dead_queued, preparing)
    )
    for copy in (dead, dead_queued, preparing):
        assert not copy.exists()
        assert _statuses(repo, copy) and set(_statuses(repo, copy)) == {4}  # FAILED
    for copy in (live, young, ended):
        assert (copy / "data/train.npz").read_bytes() == b"0" * 1024
    assert (outside / "keep.txt").read_text() == "keep me"
    assert temp_copies.remove_stale_copies(repo) == []

    holder.kill()  # the orphan ends: its copy goes at the next start
    holder.wait(timeout=60)
    assert [c.path for c in temp_copies.remove_stale_copies(repo)] == [live.resolve()]
    assert not live.exists()


def _clean_command(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_ROOT": str(repo)}
    return subprocess.run(
        [sys.executable, "-m", "src.exp_clean", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_the_clean_command_lists_then_removes(repo: Path, worker):
    dead = _copy(repo, "tmpdead0001", status=2)
    live = _copy(repo, "tmplive0002", status=2)
    worker(live)
    listed = _clean_command(repo, "--print")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "stale: .dvc/tmp/exps/standalone/tmpdead0001 (experiment exp-tmpdead0001): "
        "the temporary copy a killed `dvc exp run` left"
    ]
    assert dead.exists()
    done = _clean_command(repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed .dvc/tmp/exps/standalone/tmpdead0001 ")
    assert not dead.exists() and live.exists()
    again = _clean_command(repo)
    assert again.stdout.strip() == "no temporary copy of a killed `dvc exp run` to remove"


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_quick_and_seeds_clean_before_they_start_dvc(project: Path, monkeypatch, worker):
    from src import quick
    from src.seeds import experiments

    at_start: list[tuple[bool, bool]] = []
    for command in ("quick", "seeds"):
        dead = _copy(project, f"tmp{command}dead", status=2)
        live = _copy(project, f"tmp{command}live", status=2)
        worker(live)

        def started(*args, dead=dead, live=live, command=command, **kwargs):
            at_start.append((dead.exists(), live.exists()))
            return 1 if command == "quick" else subprocess.CompletedProcess(args, 1)

        if command == "quick":
            monkeypatch.setattr(quick, "run_dvc", started)
            main = lambda: quick.main([])  # noqa: E731
        else:
            monkeypatch.setattr(experiments, "_dvc", started)
            main = lambda: experiments.main(["baseline", "--seeds", "0"])  # noqa: E731
        with pytest.raises(SystemExit):
            main()
    assert at_start == [(False, True), (False, True)]
