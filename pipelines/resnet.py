"""Stage `resnet` (task 4a): ImageNet ResNet18, layer4 and a new fc fine-tuned.

python -m pipelines.resnet      (dvc repro resnet)

Weights come first: when they cannot be had, the stage stops before loading data.
"""

from __future__ import annotations

import argparse

import torch

from src.cli import guarded
from src.config.load import check_device, load_params
from src.config.schema import Params
from src.stage import load_data, run_training_stage
from src.stage_lock import stage_lock
from src.training.augment import input_pipeline
from src.training.device import prepare_device
from src.training.feature_cache import describe_weights, prepare_resnet_training
from src.training.loop import check_train_size
from src.training.models import build_resnet, count_parameters

STAGE = "resnet"


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    params = load_params()
    section = params.resnet
    check_device(section.train, f"{STAGE}.train")  # exit 2 before any work
    with stage_lock(STAGE):  # before any work (weights, feature cache): one writer
        metrics = _train(params, progress=not args.no_progress)
    print(
        f"[{STAGE}] test accuracy {metrics['test_accuracy']:.4f} "
        f"(val {metrics['final_val_accuracy']:.4f}, train {metrics['final_train_accuracy']:.4f})"
    )


def _train(params: Params, progress: bool) -> dict:
    section = params.resnet
    placement = prepare_device(section.train)
    device = placement.device
    torch.manual_seed(params.common.seed)
    # WeightsError here, before any data is read
    model = placement.place_model(build_resnet(section))
    dataset, data = load_data(device)
    check_train_size(len(dataset.train), section.train, f"{STAGE}.train")  # before caching
    pipeline = input_pipeline(section.train, placement, section.image_size)
    training = prepare_resnet_training(
        model, section, data, pipeline, params.common.seed, placement
    )
    del data  # the cached features replace the images
    n_params, n_trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    print(
        f"[{STAGE}] weights {section.weights}; {n_trainable:,} of {n_params:,} parameters "
        f"train on {device}; {'cached ' if training.cached else 'not cached: '}{training.note}"
    )
    return run_training_stage(
        STAGE,
        params,
        section,
        model,
        train_cfg=training.train_cfg,
        data=training.data,
        pipeline=training.pipeline,
        dataset=dataset,
        fit_model=training.fit_model,
        tags={
            **describe_weights(section.weights),
            "n_parameters": n_params,
            "n_trainable_parameters": n_trainable,
            "feature_cache": training.note if training.cached else f"off: {training.note}",
            "device": str(device),
        },
        extra_metrics=training.metrics(),
        progress=progress,
        placement=placement,
    )


if __name__ == "__main__":
    main()
