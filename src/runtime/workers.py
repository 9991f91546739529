"""Who runs this process, and whether a process recorded earlier still runs.

A worker id is ``host:pid:start-time``: the start time (clock ticks after boot, from
/proc) tells a reused pid from the original. Used by the tuning workers (a trial
whose worker died is rerun) and by tracking (a stage run whose process died is
closed KILLED).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...), or None without that process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def worker_id() -> str:
    """host:pid:start-time; the start time tells a reused pid from the original."""
    pid = os.getpid()
    fields = _proc_stat(pid)
    return f"{socket.gethostname()}:{pid}:{fields[19] if fields else ''}"


def worker_alive(worker: str) -> bool | None:
    """Whether the worker process runs; None when it ran on another host (or the id
    is not one `worker_id` makes)."""
    try:
        host, pid_text, start = worker.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X") and fields[19] == start
