"""What a careless or hostile user can type: each refused before work, in bounded time and
memory, with one line naming the limit or the key, through the command the user types."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from src.config.layout import PROJECT_ROOT
from tests.conftest import update_params, write_image_folder


def _run(root: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DVC_ROOT": str(root), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return line


# --------------------------------------------------------------------------- params.yaml

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9)
)


def test_an_alias_bomb_in_params_is_refused_at_once(project: Path):
    (project / "params.yaml").write_text(
        (project / "params.yaml").read_text() + "bomb:\n" + _indent(ALIAS_BOMB)
    )
    proc = _run(project, "pipelines.train", "baseline", "--no-progress", timeout=60)
    assert proc.returncode == 2
    assert "MAX_PARAMS_NODES" in _one_error(proc)
    assert not (project / "checkpoints").exists()


def test_oversized_params_are_refused_naming_the_limit(project: Path):
    with open(project / "params.yaml", "a") as fh:
        fh.write("# padding\n" * 120_000)
    proc = _run(project, "pipelines.download", timeout=60)
    assert proc.returncode == 2
    assert "MAX_PARAMS_BYTES" in _one_error(proc)
    assert not (project / "data").exists()


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


@pytest.mark.parametrize("name", ["team/cifar", "cifar:v2", "bob's", "x" * 65])
def test_an_experiment_name_mlflow_refuses_stops_the_stage_before_training(
    prepared: Path, name: str
):
    update_params(prepared, **{"common.experiment": name})
    proc = _run(prepared, "pipelines.train", "baseline", "--no-progress")
    assert proc.returncode == 2
    assert "'common.experiment'" in _one_error(proc)
    assert not (prepared / "checkpoints/baseline.pt").exists()
    assert not (prepared / "models/baseline.pt").exists()


# --------------------------------------------------------------------------- archives


# Runs a module as `python -m` does and writes its peak resident memory (VmHWM, which
# exec resets, unlike a child's ru_maxrss that counts the forking test process) on exit.
_PEAK = """
import atexit, os, runpy, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(os.environ["PEAK_FILE"], "w").write(line.split()[1])
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _peak_mib(root: Path, module: str, **env: str) -> tuple[subprocess.CompletedProcess, int]:
    """The stage's result and its peak resident memory in MiB."""
    peak_file = root.parent / "peak.kb"
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, module],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DVC_ROOT": str(root), "PEAK_FILE": str(peak_file), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, int(peak_file.read_text()) // 1024


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_a_zip_bomb_image_is_refused_in_bounded_memory(project: Path, tmp_path: Path, tiny_cifar):
    folder = write_image_folder(tmp_path / "images", tiny_cifar)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*.png")):
            zf.write(path, path.relative_to(folder).as_posix())
        with zf.open("train/airplane/bomb.png", "w", force_zip64=True) as fh:
            for _ in range(400):
                fh.write(bytes(1 << 20))  # 400 MiB of zeros: about 400 KB compressed
    proc, peak = _peak_mib(project, "pipelines.download", CIFAR10_SOURCE=str(archive))
    assert proc.returncode == 1, proc.stderr
    assert "MAX_IMAGE_BYTES" in _one_error(proc) and "bomb.png" in proc.stderr
    assert peak < 300, f"peak {peak} MiB"


def test_a_huge_non_image_tar_member_is_never_read_whole(project: Path, tmp_path: Path, tiny_cifar):
    folder = write_image_folder(tmp_path / "images", tiny_cifar)
    archive = tmp_path / "images.tar.gz"
    size = 3 << 29  # 1.5 GiB of zeros: 8 MB compressed
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname="images")
        info = tarfile.TarInfo("images/train/notes.bin")
        info.size = size
        tar.addfile(info, _Zeros(size))
    proc, peak = _peak_mib(project, "pipelines.download", CIFAR10_SOURCE=str(archive))
    assert proc.returncode == 0, proc.stderr
    # the stage with MLflow and torch loaded: about 0.9 GB on the tiny data
    assert peak < 1200, f"peak {peak} MiB (the member alone is 1536)"


# --------------------------------------------------------------------------- tuning


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {row[0] for row in con.execute("SELECT name FROM sqlite_master")}


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_tuning_into_the_mlflow_store_is_refused_without_writing(prepared: Path, form: str):
    db = prepared / "mlflow.db"
    before = _tables(db)
    path = db if form == "absolute" else os.path.relpath(db, PROJECT_ROOT)  # cwd: PROJECT_ROOT
    url = f"sqlite:///{path}"
    proc = _run(prepared, "src.tune", "--storage", url, "--n-trials", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is the MLflow store" in _one_error(proc)
    assert _tables(db) == before


# --------------------------------------------------------------------------- where stages write


def test_an_artifact_store_it_cannot_write_stops_the_stage_before_training(prepared: Path):
    (folder,) = [p for p in (prepared / "mlruns").iterdir() if p.name not in {"0", "models"}]
    folder.rename(folder.with_name("moved"))
    folder.write_text("not a folder")  # as root a chmod is no obstacle; a file is
    proc = _run(prepared, "pipelines.train", "baseline", "--no-progress")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "MLflow artifact store: cannot write in" in _one_error(proc)
    assert not (prepared / "checkpoints/baseline.pt").exists()
    assert not (prepared / "models/baseline.pt").exists()


@pytest.mark.parametrize("folder", ["models", "reports", "checkpoints", "reports/baseline"])
def test_a_folder_linked_out_of_the_project_is_refused_naming_it(
    prepared: Path, tmp_path: Path, folder: str
):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "baseline.pt").write_text("a user's model: keep me")
    (outside / "metrics.json").write_text("a user's file: keep me")
    link = prepared / folder
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.exists():  # what the project had there moves out with the link
        link.rename(outside / "moved")
    link.symlink_to(outside)
    proc = _run(prepared, "pipelines.train", "baseline", "--no-progress")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{prepared / folder} resolves to {outside}" in _one_error(proc)
    assert {p.name for p in outside.iterdir()} <= {"baseline.pt", "metrics.json", "moved"}
    assert (outside / "baseline.pt").read_text() == "a user's model: keep me"


# --------------------------------------------------------------------------- -S through wrappers


def _wrapper(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("form", ["../{name}:a=1", "{outside}:a=1", "link/{name}:b.c=2"])
@pytest.mark.parametrize(
    "command",
    [["src.quick", "--print", "--"], ["src.seeds", "baseline", "--seeds", "0", "--print", "--"]],
    ids=["quick", "seeds"],
)
def test_set_param_into_a_file_outside_the_project_is_refused(
    tmp_path: Path, form: str, command: list[str]
):
    outside = tmp_path / "elsewhere.yaml"
    link = PROJECT_ROOT / "link"
    value = form.format(name=outside.name, outside=outside)
    if value.startswith("link/"):
        if link.exists() or link.is_symlink():
            pytest.skip(f"{link} exists")
        link.symlink_to(tmp_path)
    try:
        for flag in (["-S", value], [f"--set-param={value}"], [f"-S{value}"]):
            proc = _wrapper(*command, *flag)
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert "lies outside the project" in _one_error(proc)
            assert "dvc exp run" not in proc.stdout  # not even printed
    finally:
        if link.is_symlink():
            link.unlink()
    assert not outside.exists()


def test_set_param_of_a_project_file_still_passes(tmp_path: Path):
    proc = _wrapper("src.quick", "--print", "--", "-S", "params.yaml:seed=1")
    assert proc.returncode == 0, proc.stderr
    assert "-S params.yaml:seed=1" in proc.stdout
