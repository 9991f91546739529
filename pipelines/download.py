"""Stage `download`: fetch or read CIFAR-10, verify it, write the prepared arrays.

    python -m pipelines.download        (dvc repro download)

The source comes from params.yaml `data.source`, or $CIFAR10_SOURCE. Its sample grid is
drawn downstream (`python -m pipelines.figures download`).
"""

from __future__ import annotations

from src.artifacts import StagePaths, atomic_write_json
from src.config.layout import Layout
from src.config.load import load_params
from src.config.schema import Params
from src.data.prepare import load_dataset, prepare_dataset
from src.data.sources import source_location
from src.runner.lock import stage_lock
from src.runtime.entry import guarded
from src.tracking import store
from src.tracking.datasets import log_datasets
from src.tracking.runs import run_params, stage_run

STAGE = "download"


@guarded
def main() -> None:
    params = load_params()
    layout = Layout()
    # an artifact store it cannot write stops it before the data is read
    store.check_store(params.common.experiment)
    with stage_lock(STAGE):  # before any work: one writer per stage
        manifest = _prepare(params, layout)
    print(f"[{STAGE}] prepared {manifest['counts']} from {manifest['source']} into {layout.data}")


def _prepare(params: Params, layout: Layout) -> dict:
    out_dir, paths = layout.data, StagePaths.for_stage(STAGE, layout.root)
    logged = run_params(params, params.data)
    # Before the tracking run: a bad source, a too-small split or a folder the stage
    # may not replace stops it (exit 1 or 2) with no run started.
    manifest = prepare_dataset(params.data, out_dir, layout.raw)
    with stage_run(STAGE, logged, experiment=params.common.experiment) as run:
        dataset = load_dataset(out_dir)
        counts = {f"n_{split}": n for split, n in manifest["counts"].items()}
        run.log_metrics(counts)
        run.log_dict(manifest, "manifest.json")
        origin = source_location(params.data)
        # the source's name and place are provenance for MLflow, not part of the data
        run.set_tags({"data_source": manifest["source"]["kind"], "data_source_location": origin})
        log_datasets(run, dataset, origin)
        atomic_write_json(paths.metrics, {**counts, "mlflow_run_id": run.run_id})
    return manifest


if __name__ == "__main__":
    main()
