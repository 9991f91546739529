"""Runs a killed process left RUNNING: every run is tagged at creation with the process
that runs it and the project root, so the stage's next start can close, KILLED, the
RUNNING runs of that stage whose process is gone from this host (any store), its own
and those of DVC's temporary experiment copies of the same repository."""

from __future__ import annotations

from pathlib import Path

from src.config.layout import DVC_TEMP_EXPS, project_root, repo_root
from src.runtime.workers import worker_alive, worker_id
from src.tracking import store


def identity_tags(stage: str) -> dict[str, str]:
    """What `close_dead_runs` matches on: the stage, the process running it and the
    project root (a DVC experiment in a temporary copy has its own)."""
    return {"stage": stage, "worker": worker_id(), "project_root": str(project_root())}


def close_dead_runs(stage: str, experiment_id: str, keep: str | None = None) -> list[str]:
    """End KILLED the RUNNING runs of `stage` from this project root, or from a temporary
    experiment copy of its repository (`dvc exp run --temp`, queued runs: a killed `dvc`
    leaves the copy's run behind, and the next run has another copy), whose process is
    gone from this host; their ids. `keep` (a run about to be resumed) is left alone, and
    so are runs from other hosts, other roots or without a `worker` tag."""
    import mlflow

    client = mlflow.MlflowClient()
    root = str(project_root())
    temp_copies = repo_root().joinpath(*DVC_TEMP_EXPS)

    def ours(tagged_root: str | None) -> bool:
        return tagged_root == root or (
            bool(tagged_root) and Path(tagged_root).is_relative_to(temp_copies)
        )
    query = "attributes.status = 'RUNNING'"
    if "'" not in stage:  # otherwise filtered below only
        query += f" AND tags.stage = '{stage}'"
    closed, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=500, page_token=token)
        for run in page:
            tags = run.data.tags
            if (
                run.info.run_id == keep
                or tags.get("stage") != stage
                or not ours(tags.get("project_root"))
                or worker_alive(tags.get("worker", "")) is not False
            ):
                continue
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
            print(
                f"[{stage}] MLflow run {run.info.run_id} was left RUNNING by a process that "
                f"is gone ({tags['worker']}); marked KILLED"
            )
        token = page.token
        if not token:
            return closed


def mark_run_killed(run_id: str) -> bool:
    """Used when resuming: a run left RUNNING by a SIGKILLed process ends KILLED; one
    whose process still runs on this host is left alone (the stage lock keeps a second
    run of a stage out; this holds even without it). False when the store in use has no
    run `run_id` (it was deleted, or $MLFLOW_TRACKING_URI changed since the checkpoint);
    True otherwise, and with tracking off."""
    if not store.tracking_enabled():
        return True
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    store.point_mlflow()
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        return exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
    except Exception:  # the store cannot answer now: resuming will say why
        return True
    alive = worker_alive(run.data.tags.get("worker", ""))
    if run.info.status == "RUNNING" and alive is not True:
        client.set_terminated(run_id, status="KILLED")
    return True
