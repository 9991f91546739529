"""`common.precision: auto` measures the stage's own step with and without bf16
autocast and keeps the faster; forced precisions are never measured; a resumed run
keeps what its checkpoint trained in."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from src.config.load import load_params
from src.config.stages import get_stage
from src.training import autocast_probe, device
from src.training.device import Placement
from src.training.feature_cache import FeatureInput
from src.training.recipe import stage_recipe, with_autocast
from tests.training.test_recipe import _splits

CPU = torch.device("cpu")


def _auto(monkeypatch) -> Placement:
    monkeypatch.setattr(device, "cpu_bf16_flags", lambda: ("amx_bf16",))
    placement = Placement.for_device(CPU, precision="auto")
    assert placement.auto and placement.bf16 and placement.channels_last
    return placement


@pytest.mark.parametrize(
    ("rates", "bf16"),
    [({True: 800.0, False: 1430.0}, False), ({True: 1000.0, False: 1040.0}, True)],
    ids=["fp32-faster", "within-margin"],
)
def test_auto_keeps_bf16_unless_float32_is_clearly_faster(monkeypatch, project, rates, bf16):
    placement = _auto(monkeypatch)
    monkeypatch.setattr(autocast_probe, "step_rates", lambda *a, **k: rates)
    recipe = stage_recipe(
        get_stage("baseline"), load_params().baseline, placement, seed=0, data=_splits()
    )
    assert recipe.placement.bf16 is bf16 and recipe.placement.channels_last
    assert "measured 800 img/s bf16, 1,430 fp32: fp32" in recipe.placement.reason or bf16
    assert recipe.tags["numerics"] == ("bf16" if bf16 else "fp32")
    assert recipe.tags["numerics_reason"] == recipe.placement.reason


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_forced_precision_is_never_measured(monkeypatch, project, precision):
    _auto(monkeypatch)
    monkeypatch.setattr(autocast_probe, "step_rates", pytest.fail)
    placement = Placement.for_device(CPU, precision=precision)
    recipe = stage_recipe(
        get_stage("baseline"), load_params().baseline, placement, seed=0, data=_splits()
    )
    assert recipe.placement == placement


def test_the_probe_times_both_and_leaves_the_model_and_rng_alone(monkeypatch, project):
    placement = _auto(monkeypatch)
    recipe = stage_recipe(
        get_stage("baseline"), load_params().baseline, Placement(CPU), seed=0, data=_splits()
    )
    before = {k: v.clone() for k, v in recipe.model.state_dict().items()}
    rng = torch.get_rng_state()
    rates = autocast_probe.step_rates(
        recipe.model, recipe.pipeline, recipe.data, 16, placement, steps=1, rounds=2
    )
    assert set(rates) == {True, False} and all(r > 0 for r in rates.values())
    assert all(torch.equal(before[k], v) for k, v in recipe.model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_float32_head_on_bf16_cached_features(monkeypatch, project):
    """The prefix caches in bf16; the head measured faster in float32 gets float32 input
    and trains."""
    placement = _auto(monkeypatch)
    monkeypatch.setattr(autocast_probe, "step_rates", lambda *a, **k: {True: 1.0, False: 2.0})
    section = load_params().resnet  # weights none, 32 px, cached
    recipe = stage_recipe(get_stage("resnet"), section, placement, seed=0, data=_splits())
    assert recipe.data.train_x.dtype == torch.bfloat16  # cached in what the prefix ran in
    assert not recipe.placement.bf16 and isinstance(recipe.pipeline, FeatureInput)
    x = recipe.pipeline(recipe.data.train_x[:4], train=True)
    assert x.dtype == torch.float32
    assert recipe.fit_model(x).dtype == torch.float32


def test_a_resumed_run_keeps_what_its_checkpoint_trained_in(monkeypatch, project):
    placement = _auto(monkeypatch)
    monkeypatch.setattr(autocast_probe, "step_rates", lambda *a, **k: {True: 1.0, False: 2.0})
    section = load_params().resnet
    recipe = stage_recipe(get_stage("resnet"), section, placement, seed=0, data=_splits())
    resumed = with_autocast(recipe, True, "cpu amx_bf16; measured ...: bf16 (resumed)")
    assert resumed.placement.bf16 and resumed.pipeline.placement.bf16
    assert resumed.tags["numerics"] == "bf16"
    assert with_autocast(resumed, True, "x") is resumed
    assert dataclasses.replace(resumed.placement, bf16=False) == recipe.placement
