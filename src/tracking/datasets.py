"""The prepared splits as a run's MLflow inputs: train, val and test, each with its file's
sha256 as digest, so the run's final figures and its model's figures link to the split
they were measured on (`Run.log_metrics` with a `model_id`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.tracking.runs import Run, activate

# The splits a run records as inputs, with MLflow's context tag for each.
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def log_datasets(run: Run, dataset: Any, origin: str) -> None:
    """Record the prepared splits (`dataset.train`, ... with their manifest) as the run's
    inputs, each with `origin` as its source: where the images came from (the download
    URL or the local copy's absolute path, `src.data.sources.source_location`), which
    outlives a DVC experiment's temporary copy. `run.datasets` keeps them for the metrics
    logged afterwards."""
    if not run.active:
        return
    import mlflow

    digests = dataset.manifest.get("sha256", {})
    run.datasets = {
        split: mlflow.data.from_numpy(
            features=getattr(dataset, split).images,
            targets=getattr(dataset, split).labels,
            source=_dataset_source(origin),
            name=f"cifar10-{split}",
            digest=str(digests.get(f"{split}.npz", ""))[:16] or None,
        )
        for split in DATASET_CONTEXTS
    }
    with activate(run.run_id):
        for split, context in DATASET_CONTEXTS.items():
            mlflow.log_input(run.datasets[split], context=context)


def _dataset_source(origin: str) -> Any:
    """An explicit DatasetSource: given a plain string, MLflow 3.17 picks between two
    registrations of LocalArtifactDatasetSource and warns in every stage."""
    if origin.startswith(("http://", "https://")):
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        return HTTPDatasetSource(origin)
    from mlflow.data.dataset_source_registry import get_registered_sources

    uri = Path(origin).as_uri()
    for source in get_registered_sources():
        if source.__name__ == "LocalArtifactDatasetSource":
            return source(uri)
    return uri  # MLflow resolves it (and may warn)
