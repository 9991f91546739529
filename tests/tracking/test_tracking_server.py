"""A stage logs to a real `mlflow server` (database backend, served artifacts) on
127.0.0.1 through MLFLOW_TRACKING_URI, and the run reads back over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow

from src.config.layout import PROJECT_ROOT


def test_stage_logs_to_a_tracking_server(prepared: Path, mlflow_server, tmp_path):
    url, store = mlflow_server
    env = {**os.environ, "DVC_ROOT": str(prepared), "MLFLOW_TRACKING_URI": url}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.train", "baseline", "--no-progress"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads((prepared / "reports/baseline/metrics.json").read_text())["mlflow_run_id"]

    # Read back over HTTP only: REST for the run, served artifacts for the files.
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}") as resp:
        run = json.load(resp)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert {m["key"] for m in run["data"]["metrics"]} >= {"test_accuracy", "curves/val_loss"}
    mlflow.set_tracking_uri(url)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "dl"))
    downloaded = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    assert {"history.csv", "predictions.csv", "metrics.json"} <= downloaded
    # the artifacts live in the server's store, not in the project
    assert any((store / "artifacts").rglob("predictions.csv"))
    assert not any((prepared / "mlruns").rglob("predictions.csv"))
