"""The network a stage trained, rebuilt from its resolved config in one place
(`stage_network`), and its architecture table."""

from __future__ import annotations

import functools
import json

import pandas as pd
from torch import nn

from src.report import theory


def stage_network(config: dict, stage: str) -> tuple[nn.Module, int]:
    """The network `config` (a stage's resolved config) describes, in random init, and the
    image size it takes; built once per config and stage. Callers must not change it."""
    return _built(json.dumps(config, sort_keys=True, default=list), stage)


@functools.lru_cache(maxsize=8)
def _built(config_json: str, stage: str) -> tuple[nn.Module, int]:
    from src.training.models import network_from_config

    return network_from_config(json.loads(config_json), stage)


def n_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe_module(module) -> str:
    def pair(v) -> str:
        v = v if isinstance(v, tuple) else (v, v)
        return f"{v[0]}×{v[1]}"

    if isinstance(module, nn.Conv2d):
        return (
            f"Conv2d {module.in_channels:,}→{module.out_channels:,}, {pair(module.kernel_size)}, "
            f"stride {module.stride[0]}, padding {module.padding[0]}"
        )
    if isinstance(module, nn.MaxPool2d):
        return f"MaxPool2d {pair(module.kernel_size)}, stride {pair(module.stride)[0]}"
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features:,}→{module.out_features:,}"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"{type(module).__name__}({module.num_features:,})"
    if isinstance(module, (nn.Dropout, nn.Dropout2d)):
        return f"{type(module).__name__}(p={module.p:g})"
    if isinstance(module, nn.LeakyReLU):
        return f"LeakyReLU(slope {module.negative_slope:g})"
    if isinstance(module, nn.Sequential) and len(module):
        return f"{len(module)} × {type(module[0]).__name__}"
    return type(module).__name__


def architecture_table(model, image_size: int) -> pd.DataFrame:
    """One row per top-level layer: what it is, its output shape (C×H×W for one
    image of `image_size`), its parameters (from `theory.layer_parameter_table`)
    and whether they train."""
    import torch

    counts = theory.layer_parameter_table(model)
    shapes: dict[str, tuple] = {}
    hooks = [
        child.register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
        )
        for name, child in model.named_children()
    ]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    rows = []
    for name, child in model.named_children():
        n = sum(r["total"] for r in counts if r["name"] == name or r["name"].startswith(f"{name}."))
        trains = any(p.requires_grad for p in child.parameters())
        rows.append(
            {
                "Layer": name,
                "Module": describe_module(child),
                "Output shape": "×".join(f"{d:,}" for d in shapes.get(name, ())) or "—",
                "Parameters": n,
                "Trainable": ("yes" if trains else "frozen") if n else "—",
            }
        )
    return pd.DataFrame(rows)
