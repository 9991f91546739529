"""One writer per stage: a stage process holds an exclusive lock for as long as it runs.

A `dvc repro` killed with SIGKILL leaves its stage process running (DVC runs the command
as a child that nothing kills). A second `dvc repro` of that stage would otherwise train
beside it on the same checkpoint and MLflow run. The lock is `flock` on
`checkpoints/<stage>.lock` of the repository (a folder DVC never deletes): the kernel
drops it when the holder dies however it dies, so nothing stale is ever left to clean up,
and the file, which stays, says who held it last (`host:pid:start-time`, since when, and
the project root it ran in). A stage in DVC's temporary copy (`dvc exp run --temp`,
queued experiments) takes the lock of the repository the copy was made from, not one of
its own: a killed `dvc` leaves its stage running in that copy, and the next run, in the
workspace or in another copy, sees it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from src.config.layout import Layout, project_root, repo_root
from src.runtime.errors import StageBusyError
from src.runtime.workers import worker_id


def lock_file(stage: str, root: Path | None = None) -> Path:
    """`checkpoints/<stage>.lock` under `root`; by default under the repository, which a
    temporary experiment copy shares with the workspace."""
    return Layout(Path(root) if root is not None else repo_root()).checkpoints / f"{stage}.lock"


def _describe(holder: str, path: Path) -> str:
    """'process 123 on host h, running since ..., in <root>' from the lock file's text."""
    worker, since, where = (holder.strip().split("\n") + ["", ""])[:3]
    try:
        host, pid, _start = worker.rsplit(":", 2)
    except ValueError:
        return f"another process (see {path})"
    when = f", running since {since.strip()}" if since.strip() else ""
    here = where.strip() and Path(where.strip()) != project_root()
    return f"process {pid} on host {host}{when}" + (f", in {where.strip()}" if here else "")


@contextlib.contextmanager
def stage_lock(stage: str, root: Path | None = None) -> Iterator[Path]:
    """Hold `stage`'s lock for the block; StageBusyError (exit 1) naming the holder when
    another live process holds it. Taken before any work, so the refused run changes
    nothing: no checkpoint read, no MLflow run opened or closed."""
    path = lock_file(stage, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open's descriptors are close-on-exec: a child program (git, say) never inherits
    # the lock and so never outlives the stage holding it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            raise StageBusyError(
                f"stage {stage} is already running: {_describe(holder, path)}. Wait for it "
                f"to finish, or stop it, then run again ({path})"
            ) from None
        stamp = datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{worker_id()}\n{stamp}\n{project_root()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock (so does the process's death)
