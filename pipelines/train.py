"""The training stages (the catalog's `src.config.stages.TRAINING_STAGES`): one entry point.

python -m pipelines.train baseline      (dvc repro baseline: task 2)
python -m pipelines.train improved      (dvc repro improved: task 3)
python -m pipelines.train tuned         (dvc repro tuned: task 3, the search's best design)
python -m pipelines.train resnet        (dvc repro resnet: task 4a)

What a stage builds comes from `src.training.recipe`; what it does around `fit`
(tracking, resume, outputs) from `src.runner.training_stage`.
"""

from __future__ import annotations

import argparse

from src.config.design import check_tuned_source
from src.config.layout import Layout
from src.config.load import check_device, load_params
from src.config.stages import TRAINING_STAGES, get_stage
from src.runner.lock import stage_lock
from src.runner.training_stage import run_training_stage
from src.runtime.entry import guarded
from src.tracking import store
from src.training.device import prepare_device
from src.training.recipe import stage_recipe


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=[s.name for s in TRAINING_STAGES])
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    stage = get_stage(args.stage)
    params = load_params()
    if not stage.own_section:  # `tuned`: the committed study's best design
        check_tuned_source(params.tune, Layout().tune_reports)
    section = getattr(params, stage.name)
    check_device(section.train, f"{stage.name}.train")  # exit 2 before any work
    store.check_store(params.common.experiment)  # a store it cannot write: exit 2 now
    # before any work (weights, data, feature cache): one writer per stage
    with stage_lock(stage.name):
        # the device, and how it runs there
        placement = prepare_device(section.train, params.common.precision)
        recipe = stage_recipe(
            stage, section, placement, seed=params.common.seed, progress=not args.no_progress
        )
        print(f"[{stage.name}] {recipe.note}")
        metrics = run_training_stage(
            stage.name, params, section, recipe, progress=not args.no_progress
        )
    print(
        f"[{stage.name}] test accuracy {metrics['test_accuracy']:.4f} "
        f"(val {metrics['final_val_accuracy']:.4f}, train {metrics['final_train_accuracy']:.4f})"
    )


if __name__ == "__main__":
    main()
