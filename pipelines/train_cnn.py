"""Stages `baseline` (task 2) and `improved` (task 3): one entry point, one builder.

python -m pipelines.train_cnn baseline      (dvc repro baseline)
python -m pipelines.train_cnn improved      (dvc repro improved)
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
from src.training.loop import check_train_size
from src.training.models import build_cnn, count_parameters

STAGES = ("baseline", "improved")


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    params = load_params()
    section = getattr(params, args.stage)
    check_device(section.train, f"{args.stage}.train")  # exit 2 before any work
    with stage_lock(args.stage):  # before any work: one writer per stage
        metrics = _train(args.stage, params, progress=not args.no_progress)
    print(
        f"[{args.stage}] test accuracy {metrics['test_accuracy']:.4f} "
        f"(val {metrics['final_val_accuracy']:.4f}, train {metrics['final_train_accuracy']:.4f})"
    )


def _train(stage: str, params: Params, progress: bool) -> dict:
    section = getattr(params, stage)
    placement = prepare_device(section.train)
    device = placement.device
    dataset, data = load_data(device)
    check_train_size(len(dataset.train), section.train, f"{stage}.train")
    torch.manual_seed(params.common.seed)
    model = placement.place_model(build_cnn(section.model))
    pipeline = input_pipeline(section.train, placement)
    n_params = count_parameters(model)
    print(f"[{stage}] {n_params:,} parameters on {device}")
    return run_training_stage(
        stage,
        params,
        section,
        model,
        train_cfg=section.train,
        data=data,
        pipeline=pipeline,
        dataset=dataset,
        tags={"n_parameters": n_params, "device": str(device)},
        progress=progress,
        placement=placement,
    )


if __name__ == "__main__":
    main()
