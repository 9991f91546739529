"""Stage `download`: fetch or read CIFAR-10, verify it, write the prepared arrays.

    python -m pipelines.download        (dvc repro download)

The source comes from params.yaml `data.source`, or $CIFAR10_SOURCE.
"""

from __future__ import annotations

from src.artifacts import StagePaths, atomic_write_json
from src.cli import guarded
from src.config.layout import Layout
from src.config.load import load_params
from src.config.schema import Params
from src.data.prepare import load_dataset, prepare_dataset
from src.report.figures import sample_grid
from src.stage_lock import stage_lock
from src.tracking import runs as tracking
from src.tracking import store
from src.tracking.datasets import log_datasets

STAGE = "download"
SAMPLES_FILE = "samples.png"  # under reports/download/, beside metrics.json


@guarded
def main() -> None:
    params = load_params()
    layout = Layout()
    # a store at the old place or one it cannot write stops it before the data is read
    store.check_store(params.common.experiment)
    with stage_lock(STAGE):  # before any work: one writer per stage
        manifest = _prepare(params, layout)
    print(f"[{STAGE}] prepared {manifest['counts']} from {manifest['source']} into {layout.data}")


def _prepare(params: Params, layout: Layout) -> dict:
    out_dir, paths = layout.data, StagePaths.for_stage(STAGE, layout.root)
    logged = tracking.run_params(params, params.data)
    # Before the tracking run: a bad source, a too-small split or a folder the stage
    # may not replace stops it (exit 1 or 2) with no run started.
    manifest = prepare_dataset(params.data, out_dir, layout.raw)
    with tracking.stage_run(STAGE, logged, experiment=params.common.experiment) as run:
        dataset = load_dataset(out_dir)
        tracking.write_figure(
            sample_grid(dataset.train.images, dataset.train.labels),
            paths.reports / SAMPLES_FILE,
            run,
        )
        counts = {f"n_{split}": n for split, n in manifest["counts"].items()}
        run.log_metrics(counts)
        run.log_dict(manifest, "manifest.json")
        run.set_tags({"data_source": manifest["source"]["kind"]})
        log_datasets(run, dataset, out_dir)
        atomic_write_json(paths.metrics, {**counts, "mlflow_run_id": run.run_id})
    return manifest


if __name__ == "__main__":
    main()
