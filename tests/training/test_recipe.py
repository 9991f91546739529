"""The stage recipe: every training stage of the catalog builds through it; what serving
and the report rebuild from a saved config is the network that trained; data reaches
the device through one loader."""

from __future__ import annotations

import pytest
import torch

from src.config.load import load_params
from src.config.stages import TRAINING_STAGES, get_stage
from src.config.typed import to_dict
from src.runtime.errors import ConfigError, DataError
from src.training.device import Placement
from src.training.models import count_parameters, network_from_config
from src.training.recipe import build_stage, stage_recipe
from src.training.splits import TensorSplits, load_splits
from tests.conftest import make_images

CPU = Placement(torch.device("cpu"))


def _splits(n_train: int = 48, n_eval: int = 8) -> TensorSplits:
    parts = []
    for n, seed in ((n_train, 3), (n_eval, 4), (n_eval, 5)):
        x, y = make_images(n, seed=seed)
        parts += [torch.from_numpy(x[:n]), torch.from_numpy(y[:n])]
    return TensorSplits(*parts)


@pytest.mark.parametrize("stage", TRAINING_STAGES, ids=lambda s: s.name)
def test_every_training_stage_builds_and_its_saved_config_rebuilds_it(project, stage):
    section = getattr(load_params(), stage.name)
    recipe = stage_recipe(stage, section, CPU, seed=0, data=_splits())
    assert recipe.dataset is None  # the caller brought the data
    with torch.no_grad():
        x = recipe.data.train_x[:2]
        assert recipe.fit_model(recipe.pipeline(x, train=False)).shape == (2, 10)
    assert recipe.tags["n_parameters"] == count_parameters(recipe.model)
    # serving and the report rebuild the same network from the resolved config
    for name in (stage.name, None):
        network, size = network_from_config(to_dict(section), name)
        assert count_parameters(network) == count_parameters(recipe.model)
        assert [p.shape for p in network.parameters()] == [
            p.shape for p in recipe.model.parameters()
        ]
    assert size == 32


def test_the_same_seed_builds_the_same_weights(project):
    stage = get_stage("baseline")
    section = load_params().baseline
    a, b = (build_stage(stage, section, CPU, seed=3).model for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_the_resnet_trains_its_head_on_cached_features(project):
    section = load_params().resnet  # weights none, 32 px, no augmentation
    recipe = stage_recipe(get_stage("resnet"), section, CPU, seed=0, data=_splits())
    assert recipe.fit_model is not recipe.model
    assert recipe.data.train_x.dtype == torch.float32  # features, not uint8 images
    assert recipe.metrics["features_cached"] == 1
    assert recipe.tags["feature_cache"].startswith("features after layer3")
    assert recipe.tags["pretrained"] == "false"


def test_too_few_images_for_one_batch_is_named_before_any_training(project):
    section = load_params().baseline  # batch 16
    with pytest.raises(ConfigError) as info:
        stage_recipe(get_stage("baseline"), section, CPU, seed=0, data=_splits(n_train=10))
    assert info.value.key == "baseline.train.batch_size"


def test_the_loader_puts_every_split_on_the_device_or_leaves_test_out(prepared):
    dataset, data = load_splits(torch.device("cpu"))
    assert len(data.train_y) == len(dataset.train.labels) and len(data.test_y) == 60
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1:] == (32, 32, 3)
    _, no_test = load_splits(torch.device("cpu"), test=False)
    assert len(no_test.test_y) == 0 and torch.equal(no_test.val_y, data.val_y)


def test_the_loader_says_how_to_prepare_missing_data(project):
    with pytest.raises(
        DataError,
        match="the benchmark trains on the prepared data set, and "
        "data/cifar10/ holds none: prepare it first with `dvc repro download`",
    ):
        load_splits(torch.device("cpu"), user="the benchmark")
