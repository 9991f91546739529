"""A stage's runs over seeds: their spread, and its git-tracked record.

`python -m src.seeds` runs a stage over seeds (DVC experiments) and writes
`reports/seeds/<stage>.json`; the report reads it. A run repeats exactly only on the same
machine, so the record names the machine and the commit the runs came from.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from src.config.layout import Layout, repo_root
from src.runtime.machine import machine

METRIC = "test_accuracy"


@dataclass
class SeedRun:
    name: str
    seed: int
    value: float | None  # test accuracy; None while queued or running, or when it failed
    state: str  # DVC's executor state ("success", "failed", "queued", "running", ...)
    numerics: str = ""  # what its metrics.json says it computed in (bf16 | fp32); "" unknown


@dataclass
class Spread:
    stage: str
    runs: list[SeedRun] = field(default_factory=list)
    commit: str = ""  # the commit the experiments derive from (full sha)
    machine: str = ""  # where they ran, as a record names it (`machine()`)

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.runs if r.value is not None]

    @property
    def numerics(self) -> str:
        """What the finished runs computed in: one value, "mixed", or "" when none says."""
        kinds = {r.numerics for r in self.runs if r.value is not None and r.numerics}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation (n - 1); None below two runs."""
        return statistics.stdev(self.values) if self.n >= 2 else None


# --------------------------------------------------------------------------- records


def record_path(stage: str, root: Path | None = None) -> Path:
    return Layout(root or repo_root()).seeds / f"{stage}.json"


def write_record(spread: Spread, root: Path | None = None) -> Path:
    """`reports/seeds/<stage>.json`: the finished runs of `spread`, where they ran."""
    path = record_path(spread.stage, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "stage": spread.stage,
        "metric": METRIC,
        "commit": spread.commit,
        "machine": spread.machine or machine(),
        "runs": [
            {"name": r.name, "seed": r.seed, METRIC: r.value}
            for r in spread.runs
            if r.value is not None
        ],
        "n": spread.n,
        "mean": spread.mean,
        "std": spread.std,
    }
    if spread.numerics:  # a record without it predates it: float32 runs
        record["numerics"] = spread.numerics
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(record, indent=2) + "\n")
    temp.replace(path)
    return path


def read_record(path: Path) -> Spread:
    """A record `write_record` wrote, as a Spread (mean and std recomputed from its runs);
    ValueError naming what is wrong."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        raise ValueError(f"{path}: not a seed record (no list of runs)")
    if record.get("stage") != path.stem:
        raise ValueError(f"{path}: holds stage {record.get('stage')!r}, not {path.stem!r}")
    spread = Spread(
        path.stem, commit=str(record.get("commit", "")), machine=str(record.get("machine", ""))
    )
    for run in record["runs"]:
        value = run.get(METRIC) if isinstance(run, dict) else None
        seed = run.get("seed") if isinstance(run, dict) else None
        if (
            not isinstance(seed, int)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"{path}: a run without an integer seed and a finite {METRIC}")
        numerics = str(record.get("numerics", "fp32"))  # a record without it predates bf16
        spread.runs.append(
            SeedRun(str(run.get("name", "")), seed, float(value), "success", numerics)
        )
    return spread
