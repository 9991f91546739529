"""`common.precision: auto` measures the stage's own step in bf16 + channels_last,
float32 + channels_last and float32 and keeps the fastest; forced precisions are never
measured; a resumed run keeps what its checkpoint trained in."""

from __future__ import annotations

import pytest
import torch

from src.config.load import load_params
from src.config.stages import get_stage
from src.training import device, numerics_probe
from src.training.augment import InputPipeline
from src.training.device import Placement
from src.training.feature_cache import FeatureInput
from src.training.numerics_probe import Variant
from src.training.recipe import stage_recipe, with_numerics
from tests.training.test_recipe import _splits

CPU = torch.device("cpu")
BF16_CL, FP32_CL, FP32 = Variant(True, True), Variant(False, True), Variant(False, False)


def _auto(monkeypatch) -> Placement:
    monkeypatch.setattr(device, "cpu_bf16_flags", lambda: ("amx_bf16",))
    placement = Placement.for_device(CPU, precision="auto")
    assert placement.auto and placement.bf16 and placement.channels_last
    return placement


def _rates(monkeypatch, rates: dict) -> None:
    monkeypatch.setattr(numerics_probe, "step_rates", lambda *a, **k: rates)


def _weights_format(model: torch.nn.Module) -> set[bool]:
    convs = [p for p in model.parameters() if p.dim() == 4]
    return {p.is_contiguous(memory_format=torch.channels_last) for p in convs}


@pytest.mark.parametrize(
    ("rates", "chosen"),
    [
        ({BF16_CL: 800.0, FP32_CL: 1430.0, FP32: 900.0}, FP32_CL),
        ({BF16_CL: 450.0, FP32_CL: 360.0, FP32: 500.0}, FP32),
        ({BF16_CL: 1000.0, FP32_CL: 1040.0, FP32: 300.0}, BF16_CL),  # within the margin
    ],
    ids=["fp32+cl", "fp32", "within-margin"],
)
def test_auto_keeps_bf16_unless_another_variant_is_clearly_faster(
    monkeypatch, project, rates, chosen
):
    _rates(monkeypatch, rates)
    section = load_params().improved  # its filters are wider than 1: a 4-D weight differs
    recipe = stage_recipe(
        get_stage("improved"), section, _auto(monkeypatch), seed=0, data=_splits()
    )
    placement = recipe.placement
    assert (placement.bf16, placement.channels_last) == chosen
    assert (
        placement.reason.endswith(f": {chosen.name}")
        and "measured img/s bf16+cl" in placement.reason
    )
    assert recipe.tags["numerics"] == ("bf16" if chosen.bf16 else "fp32")
    assert recipe.tags["numerics_reason"] == placement.reason
    assert _weights_format(recipe.model) == {chosen.channels_last}
    assert isinstance(recipe.pipeline, InputPipeline)
    assert recipe.pipeline.channels_last == chosen.channels_last
    x = recipe.pipeline(recipe.data.train_x[:4], train=False)
    assert x.is_contiguous(memory_format=torch.channels_last) == chosen.channels_last


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_forced_precision_is_never_measured(monkeypatch, project, precision):
    _auto(monkeypatch)
    monkeypatch.setattr(numerics_probe, "step_rates", pytest.fail)
    placement = Placement.for_device(CPU, precision=precision)
    section = load_params().baseline
    recipe = stage_recipe(get_stage("baseline"), section, placement, seed=0, data=_splits())
    assert recipe.placement == placement


def test_the_probe_times_every_variant_and_leaves_the_model_and_rng_alone(monkeypatch, project):
    placement = _auto(monkeypatch)
    section = load_params().baseline
    recipe = stage_recipe(get_stage("baseline"), section, Placement(CPU), seed=0, data=_splits())
    before = {k: v.clone() for k, v in recipe.model.state_dict().items()}
    rng = torch.get_rng_state()
    rates = numerics_probe.step_rates(
        recipe.model, recipe.pipeline, recipe.data, 16, placement, steps=1, rounds=2
    )
    assert set(rates) == {BF16_CL, FP32_CL, FP32} and all(r > 0 for r in rates.values())
    assert all(torch.equal(before[k], v) for k, v in recipe.model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_float32_head_on_bf16_cached_features(monkeypatch, project):
    """The prefix caches in bf16; the head measured faster in float32 gets float32 input
    in the default memory format, and trains."""
    _rates(monkeypatch, {BF16_CL: 1.0, FP32_CL: 1.5, FP32: 2.0})
    section = load_params().resnet  # weights none, 32 px, cached
    recipe = stage_recipe(get_stage("resnet"), section, _auto(monkeypatch), seed=0, data=_splits())
    assert recipe.data.train_x.dtype == torch.bfloat16  # cached in what the prefix ran in
    assert not recipe.placement.bf16 and not recipe.placement.channels_last
    assert isinstance(recipe.pipeline, FeatureInput)
    x = recipe.pipeline(recipe.data.train_x[:4], train=True)
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert recipe.fit_model(x).dtype == torch.float32


def test_a_resumed_run_keeps_what_its_checkpoint_trained_in(monkeypatch, project):
    _rates(monkeypatch, {BF16_CL: 1.0, FP32_CL: 2.0, FP32: 1.0})
    section = load_params().resnet
    recipe = stage_recipe(get_stage("resnet"), section, _auto(monkeypatch), seed=0, data=_splits())
    assert (recipe.placement.bf16, recipe.placement.channels_last) == FP32_CL
    resumed = with_numerics(recipe, True, True, "as the checkpoint (resumed)")
    assert resumed.placement.bf16 and resumed.pipeline.placement.bf16
    assert resumed.tags["numerics"] == "bf16"
    assert resumed.tags["numerics_reason"] == "as the checkpoint (resumed)"
    assert with_numerics(resumed, True, True, "x") is resumed
