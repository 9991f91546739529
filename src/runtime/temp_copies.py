"""The temporary experiment copies a killed DVC leaves behind, and their removal.

`dvc exp run --temp` and queued experiments (`dvc exp run --run-all`, `dvc queue start`)
run in a copy of the repository under <repo>/.dvc/tmp/exps/ (`standalone/tmpXXXXXXXX`
for `--temp`, `tmpXXXXXXXX` for the queue), which DVC removes when the run ends. A
`kill -9` of `dvc` leaves the copy (as large as the workspace with its data), and
`dvc exp show` lists its experiment as Running for ever; no DVC command removes it
(`dvc exp clean` clears the queue's messages only). DVC records each run in an info
file, `.dvc/tmp/exps/[standalone/]run/<rev>/<rev>.run` (JSON: the copy as `root_dir`,
the experiment's `name`, its `status`).

A copy is stale when its info file says its run has not ended, has not changed for
`STALE_AFTER_S`, and no process on this host works in it (its current directory inside
the copy, read from /proc): DVC moves into the copy before it runs a stage, and the
stage runs there, so a live run, or a stage a killed `dvc` left running, always has one.
Without /proc nothing is called stale.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from src.config.layout import DVC_TEMP_EXPS

# DVC's TaskStatus (dvc/repo/experiments/executor/base.py): PENDING 0, PREPARING 1,
# RUNNING 2, then ended: SUCCESS 3, FAILED 4, CANCELED 5, FINISHED 6.
_ENDED = 3
_FAILED = 4
# An info file younger than this may belong to a run DVC is still setting up (its copy
# made, `dvc` not yet inside it): seconds.
STALE_AFTER_S = 120.0


@dataclass(frozen=True)
class TempCopy:
    path: Path  # the copy, <repo>/.dvc/tmp/exps/[standalone/]tmpXXXXXXXX
    info: Path  # DVC's info file about its run
    name: str  # the experiment's name ("" when DVC recorded none)


def _exps(repo: Path) -> Path:
    return repo.resolve().joinpath(*DVC_TEMP_EXPS)


def _info_files(repo: Path) -> list[Path]:
    exps = _exps(repo)
    return sorted([*exps.glob("run/*/*.run"), *exps.glob("standalone/run/*/*.run")])


def _copy_of(info: dict, exps: Path) -> Path | None:
    """The copy an info file names, when it is one of DVC's (a `tmp*` folder directly in
    exps/ or exps/standalone/, no symlink): nothing else is ever removed."""
    root = info.get("root_dir")
    if not isinstance(root, str) or not root:
        return None
    path = Path(root)
    if not path.is_absolute() or path.is_symlink() or not path.is_dir():
        return None
    path = path.resolve()
    if path.parent not in (exps, exps / "standalone") or not path.name.startswith("tmp"):
        return None
    return path


def working_folders() -> list[Path] | None:
    """The current directory of every process on this host that this user may read;
    None without /proc (then no process can be ruled out)."""
    proc = Path("/proc")
    if not (proc / "self" / "cwd").exists():
        return None
    folders = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                folders.append(Path(os.readlink(entry / "cwd")))
            except OSError:  # gone meanwhile, a zombie, or another user's
                continue
    return folders


def _records(repo: Path) -> dict[Path, list[tuple[Path, dict]]]:
    """DVC's info files by the copy they name (DVC writes one under run/ and another
    under standalone/run/ for a `--temp` run)."""
    exps = _exps(repo)
    records: dict[Path, list[tuple[Path, dict]]] = {}
    for info_file in _info_files(repo):
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            continue
        copy = _copy_of(info, exps) if isinstance(info, dict) else None
        if copy is not None:
            records.setdefault(copy, []).append((info_file, info))
    return records


def stale_copies(repo: Path, now: float | None = None) -> list[TempCopy]:
    """The copies under `repo`'s .dvc/tmp/exps/ whose run has not ended by DVC's records,
    none of them younger than STALE_AFTER_S, and that no process works in."""
    folders = working_folders()
    if folders is None:
        return []
    now = time.time() if now is None else now
    found = []
    for copy, records in _records(repo).items():
        try:
            youngest = min(now - info_file.stat().st_mtime for info_file, _ in records)
        except OSError:
            continue
        statuses = [info.get("status") for _, info in records]
        if youngest < STALE_AFTER_S or not all(isinstance(s, int) and s < _ENDED for s in statuses):
            continue
        if any(folder == copy or folder.is_relative_to(copy) for folder in folders):
            continue
        names = [str(info.get("name") or "") for _, info in records]
        found.append(TempCopy(copy, records[0][0], next((n for n in names if n), "")))
    return found


def remove_stale_copies(repo: Path, now: float | None = None) -> list[TempCopy]:
    """Remove the copies `stale_copies` finds and record their runs as failed in DVC's
    info files (as DVC does when a run fails), so `dvc exp show` no longer lists them as
    running; the copies removed."""
    removed = []
    for copy in stale_copies(repo, now):
        records = _records(repo).get(copy.path, [])
        shutil.rmtree(copy.path)
        for info_file, info in records:
            info["status"] = _FAILED
            info_file.write_text(json.dumps(info))
        removed.append(copy)
    return removed


def describe(copy: TempCopy, repo: Path, verb: str = "removed") -> str:
    """One line: which copy, and whose."""
    root = repo.resolve()
    where = copy.path.relative_to(root) if copy.path.is_relative_to(root) else copy.path
    name = f" (experiment {copy.name})" if copy.name else ""
    return f"{verb} {where}{name}: the temporary copy a killed `dvc exp run` left"


def clean(repo: Path) -> list[str]:
    """`remove_stale_copies`, one line per copy removed: what the project's commands that
    start DVC experiments do first."""
    return [describe(copy, repo) for copy in remove_stale_copies(repo)]
