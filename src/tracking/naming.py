"""How runs read in the MLflow UI: one param name per knob in every stage and trial,
metric keys grouped so a run's charts open on its learning curves, the split each final
figure was measured on, and the experiments' descriptions. Names only; `src.tracking.runs`
writes them."""

from __future__ import annotations

from typing import Any

from src.config.typed import flatten

# The UI's chart view groups metrics by the prefix before "/" and shows named groups in
# alphabetical order before the unprefixed ones ("Model metrics": the final figures,
# which the Models tab and the report read by these plain names). So the learning
# curves get the group that sorts first, and one-value figures groups after it.
CHART_GROUPS = {
    "curves": (
        "train_loss",
        "train_loss_std",
        "train_accuracy",
        "train_step_loss",
        "val_loss",
        "val_accuracy",
    ),
    "progress": ("epoch", "lr", "images_per_s"),  # per validation, not learning curves
    "run": ("steps", "best_step", "early_stop_step", "epochs_run", "resumed_from_step"),
    "timing": (
        "train_time_s",
        "eval_time_s",
        "eval_share",
        "train_images_per_s",
        "features_cached",
        "feature_cache_time_s",
    ),
}
_CHART_KEYS = {name: f"{group}/{name}" for group, names in CHART_GROUPS.items() for name in names}
EXPERIMENT_DESCRIPTIONS = {
    "": (
        "CIFAR-10 pipeline (TDT4265 assignment 3): one run per stage execution, named "
        "after the stage. Params have one name in every stage (`model.filters`, "
        "`train.lr`, `seed`, ...), so Compare lines runs up; learning curves are under "
        "`curves/`, final figures (`test_accuracy`, ...) unprefixed. Each training stage "
        "registers its model as `cifar10-<stage>`; the alias `champion` is the version "
        "to serve."
    ),
    "-tune": (
        "Optuna studies (`python -m src.tune`): a parent run `tune-<study>` per study with "
        "the optimisation history, and a nested run per trial logging the same param and "
        "metric names as the pipeline stages. Pruned trials end FINISHED with `pruned` in "
        "their name; failed ones FAILED."
    ),
}


def chart_key(name: str) -> str:
    """The MLflow metric key of one of the project's figures (see CHART_GROUPS)."""
    return _CHART_KEYS.get(name, name)


_SPLIT_PREFIXES = (("test_", "test"), ("final_val_", "val"), ("final_train_", "train"))


def metric_split(name: str) -> str | None:
    """The split a final figure was measured on (`test_accuracy`: test), or None."""
    return next((split for prefix, split in _SPLIT_PREFIXES if name.startswith(prefix)), None)


# Params logged under another name, so that a knob has one name in every stage: the
# CNNs' input size sits in their model section, the ResNet's at the top of its own.
RENAMED = {"model.image_size": "image_size"}


def run_params(params: Any, section: Any, **extra: Any) -> dict[str, Any]:
    """What a run logs as params: the stage's own section flattened without the stage's
    name (`model.filters`, `train.lr`, `weights`, ...; `RENAMED` applied), the shared
    `seed` and `profile`, and `extra` (a trial's search-only knobs, a `profile` label):
    one name per knob in every stage and trial."""
    flat = {RENAMED.get(k, k): v for k, v in flatten(section).items()}
    return {**flat, "seed": params.common.seed, "profile": params.profile, **extra}


def run_name(stage: str, profile: str | None, dvc_exp_name: str = "") -> str:
    """`baseline` for a full run; `baseline (quick)` for DVC experiment `quick`, and
    `baseline (custom)` for edited params run outside an experiment: the runs list tells
    them apart at a glance (the `profile` param and `dvc_exp_name` tag say it too)."""
    label = dvc_exp_name or (profile if profile and profile != "full" else "")
    return f"{stage} ({label})" if label else stage


def describe_experiment(client: Any, exp_id: str, name: str) -> None:
    """The model-training view (not the GenAI one) and a description, once."""
    tags = client.get_experiment(exp_id).tags
    wanted = {"mlflow.experimentKind": "custom_model_development"}
    suffix = "-tune" if name.endswith("-tune") else ""
    wanted["mlflow.note.content"] = EXPERIMENT_DESCRIPTIONS[suffix]
    for key, value in wanted.items():
        if key not in tags:  # a description the user edited in the UI stays
            client.set_experiment_tag(exp_id, key, value)
