"""Stage `download`: fetch or read CIFAR-10, verify it, write the prepared arrays.

    python -m pipelines.download        (dvc repro download)

The source comes from params.yaml `data.source`, or $CIFAR10_SOURCE.
"""

from __future__ import annotations

from src import tracking
from src.artifacts import atomic_write_json
from src.cli import guarded
from src.config import load_params, resolve_path
from src.data import load_dataset, prepare_dataset
from src.plots import sample_grid

STAGE = "download"


@guarded
def main() -> None:
    params = load_params()
    paths = params.common.paths
    out_dir, reports = resolve_path(paths.data), resolve_path(paths.reports) / STAGE
    tracking.check_store()  # a store at the old place stops it before the data is read
    logged = tracking.run_params(params, params.data)
    # Before the tracking run: a bad source, a too-small split or a folder the stage
    # may not replace stops it (exit 1 or 2) with no run started.
    manifest = prepare_dataset(params.data, out_dir, resolve_path(paths.raw))
    with tracking.stage_run(STAGE, logged, experiment=params.common.experiment) as run:
        dataset = load_dataset(out_dir)
        tracking.write_figure(
            sample_grid(dataset.train.images, dataset.train.labels), reports / "samples.png", run
        )
        counts = {f"n_{split}": n for split, n in manifest["counts"].items()}
        run.log_metrics(counts)
        run.log_dict(manifest, "manifest.json")
        run.set_tags({"data_source": manifest["source"]["kind"]})
        run.log_datasets(dataset, out_dir)
        atomic_write_json(reports / "metrics.json", {**counts, "mlflow_run_id": run.run_id})
    print(f"[{STAGE}] prepared {manifest['counts']} from {manifest['source']} into {out_dir}")


if __name__ == "__main__":
    main()
