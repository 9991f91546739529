"""This machine in words, for every record of a measurement: runs differ by machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """Its CPU model and core count (Linux), else the platform: "AMD EPYC, 2 cores"."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"
