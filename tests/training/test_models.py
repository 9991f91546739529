"""Every model: forward and backward on a small batch, shapes, no NaN, parameter counts."""

from __future__ import annotations

import pytest
import torch

from src.config.layout import PROJECT_ROOT
from src.config.load import load_params
from src.config.schema import ModelConfig
from src.runtime.errors import ConfigError
from src.training.models import build_cnn, count_parameters

PARAMS = load_params(PROJECT_ROOT / "params.yaml")


def _layers_with_params(model):
    return [m for m in model.modules() if list(m.parameters(recurse=False))]


def test_baseline_is_the_course_network():
    model = build_cnn(PARAMS.baseline.model)
    counts = [sum(p.numel() for p in m.parameters()) for m in _layers_with_params(model)]
    assert counts == [2_432, 51_264, 204_928, 131_136, 650]
    assert count_parameters(model) == 390_410
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d"] * 3 + ["Flatten", "Linear", "ReLU", "Linear"]
    assert all(
        m.padding == (2, 2) and m.stride == (1, 1)
        for m in model
        if hasattr(m, "padding") and isinstance(m, torch.nn.Conv2d)
    )


def test_improved_is_the_reference_design():
    model = build_cnn(PARAMS.improved.model)
    kinds = [type(m).__name__ for m in model]
    block = ["Conv2d", "LeakyReLU", "BatchNorm2d", "Dropout2d", "MaxPool2d"]
    fc = ["Linear", "LeakyReLU", "BatchNorm1d", "Dropout"]
    assert kinds == block * 4 + ["Flatten"] + fc * 2 + ["Linear"]
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512, 1024]
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4096, 512), (512, 64), (64, 10)]


@pytest.mark.parametrize(
    "cfg",
    [
        PARAMS.baseline.model,
        ModelConfig(
            filters=(8, 16, 16, 32),
            kernel_size=3,
            activation="leaky_relu",
            batch_norm=True,
            dropout=0.05,
            fc=(32, 16),
        ),
        ModelConfig(filters=(8, 16), kernel_size=7, activation="gelu", fc=()),
        ModelConfig(filters=(8, 8), kernel_size=5, padding="valid", activation="elu", fc=(16,)),
    ],
    ids=["baseline", "improved-narrow", "k7-no-fc", "valid-padding"],
)
def test_forward_backward(cfg):
    torch.manual_seed(0)
    model = build_cnn(cfg)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_impossible_geometry_is_a_config_error():
    with pytest.raises(ConfigError, match="filters"):
        ModelConfig(filters=(8,) * 6, kernel_size=3)
    with pytest.raises(ConfigError, match="kernel_size"):
        ModelConfig(kernel_size=4)
