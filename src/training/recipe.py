"""The stage recipe: what a training stage builds before `fit`, in one place.

From a stage's catalog entry (`src.config.stages`, kind "cnn" or "transfer"), its typed params
section and a `Placement`: the network (`models.build_stage_network`, seeded, on the
device), its input pipeline (`augment.input_pipeline`, resized to the network's image
size), the data (`splits.load_splits`, unless the caller brings it) and, for the
transfer network, the feature cache (`feature_cache.prepare_transfer_training`). The
pipelines' stages, tuning trials and the benchmark train what it returns with
`fit_recipe`. Serving and the report
need only the network of a saved config: `models.network_from_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from src.config.schema import CNNStageConfig, TrainConfig, TransferConfig
from src.config.stages import Stage
from src.data.prepare import Dataset
from src.training.augment import InputPipeline, Pipeline, input_pipeline
from src.training.device import Placement
from src.training.feature_cache import (
    FeatureInput,
    describe_weights,
    prepare_transfer_training,
)
from src.training.loop import FitResult, fit
from src.training.models import build_stage_network, count_parameters
from src.training.numerics_probe import formatted, measured_variant
from src.training.splits import TensorSplits, check_train_size, load_splits

Section = CNNStageConfig | TransferConfig


@dataclass
class StageNetwork:
    """A stage's network on its device, initialised as the stage initialises it, and
    the input pipeline that feeds it uint8 images."""

    stage: Stage
    section: Section
    model: nn.Module
    pipeline: InputPipeline
    placement: Placement


@dataclass
class StageRecipe:
    """What `fit` trains and what the stage saves."""

    model: nn.Module  # the whole network: saved, logged and registered
    fit_model: nn.Module  # what `fit` trains: `model`, or its head on cached features
    pipeline: Pipeline
    train_cfg: TrainConfig  # the section's; with the budget applied when features are cached
    data: TensorSplits  # on the device: uint8 images, or cached features
    placement: Placement
    dataset: Dataset | None = None  # the prepared data set, when the recipe loaded it
    tags: dict = field(default_factory=dict)  # for the run: parameters, device, weights
    metrics: dict = field(default_factory=dict)  # joins the stage's metrics (cache time)
    note: str = ""  # one line for the console: what trains, where


def build_stage(stage: Stage, section: Section, placement: Placement, seed: int) -> StageNetwork:
    """The network (seeded with `seed` first, so every caller starts from the same
    weights) and its input pipeline. A backbone whose weights cannot be had raises
    WeightsError here, before any data is read."""
    torch.manual_seed(seed)
    network, image_size = build_stage_network(stage.kind, section)
    pipeline = input_pipeline(section.train, placement, image_size)
    return StageNetwork(stage, section, placement.place_model(network), pipeline, placement)


def prepare_fit(
    net: StageNetwork,
    data: TensorSplits,
    *,
    seed: int,
    train_cfg: TrainConfig | None = None,
    params_key: str | None = None,
    progress: bool = False,
) -> StageRecipe:
    """`fit`'s inputs for `net` on `data` (on the network's device), training with
    `train_cfg` (default: the section's). A training set smaller than one batch is a
    ConfigError naming `params_key` (default `<stage>.train`), raised before any
    feature is cached. A transfer network trains its head on cached features when nothing
    augments (`src.training.feature_cache`)."""
    cfg = train_cfg or net.section.train
    check_train_size(len(data.train_y), cfg, params_key or f"{net.stage.name}.train")
    model, device = net.model, net.placement.device
    n_params = count_parameters(model)
    if net.stage.kind != "transfer":
        placement, pipeline = _measured(model, model, net.pipeline, data, cfg, net.placement)
        tags = {"n_parameters": n_params, "device": str(device), **placement.describe()}
        note = f"{n_params:,} parameters on {_where(placement)}"
        return StageRecipe(model, model, pipeline, cfg, data, placement, tags=tags, note=note)
    section = dataclasses.replace(net.section, train=cfg)
    training = prepare_transfer_training(
        model,
        section,
        data,
        net.pipeline,
        seed,
        net.placement,
        label=net.stage.name,
        progress=progress,
    )
    # the prefix cached its features in what auto chose; the head's own step is measured
    placement, pipeline = _measured(
        model,
        training.fit_model,
        training.pipeline,
        training.data,
        training.train_cfg,
        net.placement,
    )
    n_trainable = count_parameters(model, trainable_only=True)
    cache = training.note if training.cached else f"off: {training.note}"
    tags = {
        **describe_weights(section.weights, section.backbone),
        "n_parameters": n_params,
        "device": str(device),
        **placement.describe(),
        "n_trainable_parameters": n_trainable,
    }
    return StageRecipe(
        model,
        training.fit_model,
        pipeline,
        training.train_cfg,
        training.data,
        placement,
        tags={**tags, "feature_cache": cache},
        metrics=training.metrics(),
        note=(
            f"{section.backbone}, weights {section.weights}; {n_trainable:,} of "
            f"{n_params:,} parameters train on {_where(placement)}; "
            f"{'cached ' if training.cached else 'not cached: '}{training.note}"
        ),
    )


def _where(placement: Placement) -> str:
    numerics = placement.precision + (" channels_last" if placement.channels_last else "")
    return f"{placement.device} in {numerics} ({placement.reason or 'set by the caller'})"


def _measured(
    model: nn.Module,
    fit_model: nn.Module,
    pipeline: Pipeline,
    data: TensorSplits,
    cfg: TrainConfig,
    placement: Placement,
) -> tuple[Placement, Pipeline]:
    """What `fit_model` trains fastest in here (`numerics_probe`, `common.precision: auto`
    only), applied to the models and the pipeline."""
    found = measured_variant(fit_model, pipeline, data, cfg.batch_size, placement)
    if found is None:
        return placement, pipeline
    (bf16, channels_last), reason = found
    return _apply(model, fit_model, pipeline, placement, bf16, channels_last, reason)


def _apply(
    model: nn.Module,
    fit_model: nn.Module,
    pipeline: Pipeline,
    placement: Placement,
    bf16: bool,
    channels_last: bool,
    reason: str,
) -> tuple[Placement, Pipeline]:
    new = dataclasses.replace(placement, bf16=bf16, channels_last=channels_last, reason=reason)
    if channels_last != placement.channels_last:
        formatted(model, channels_last)
        formatted(fit_model, channels_last)
    if isinstance(pipeline, FeatureInput):
        pipeline = FeatureInput(new)
    elif isinstance(pipeline, InputPipeline):
        pipeline = dataclasses.replace(pipeline, channels_last=channels_last)
    return new, pipeline


def with_numerics(recipe: StageRecipe, bf16: bool, channels_last: bool, reason: str) -> StageRecipe:
    """`recipe` training in the given numerics (a resumed run keeps what its checkpoint
    trained in, whatever a new measurement would say)."""
    if (recipe.placement.bf16, recipe.placement.channels_last) == (bf16, channels_last):
        return recipe
    placement, pipeline = _apply(
        recipe.model,
        recipe.fit_model,
        recipe.pipeline,
        recipe.placement,
        bf16,
        channels_last,
        reason,
    )
    tags = {**recipe.tags, **placement.describe()}
    return dataclasses.replace(recipe, placement=placement, pipeline=pipeline, tags=tags)


def stage_recipe(
    stage: Stage,
    section: Section,
    placement: Placement,
    *,
    seed: int,
    data: TensorSplits | None = None,
    params_key: str | None = None,
    progress: bool = False,
) -> StageRecipe:
    """Everything `fit` needs for `stage`: the network first (missing backbone weights stop
    the stage before any data is read), then the prepared data set onto the device
    (unless `data` is given: a tuning search loads it once for all its trials), then
    the budget and the feature cache (a progress bar when `progress`)."""
    net = build_stage(stage, section, placement, seed)
    dataset = None
    if data is None:
        dataset, data = load_splits(placement.device, user=f"stage {stage.name}")
    recipe = prepare_fit(net, data, seed=seed, params_key=params_key, progress=progress)
    recipe.dataset = dataset
    return recipe


def fit_recipe(recipe: StageRecipe, *, seed: int, **options: Any) -> FitResult:
    """`fit` on what `recipe` trains, on its device; `options` are `fit`'s other keyword
    arguments (validation callback, checkpoint, progress, name)."""
    return fit(
        recipe.fit_model,
        recipe.data,
        recipe.train_cfg,
        recipe.pipeline,
        seed=seed,
        placement=recipe.placement,
        **options,
    )
