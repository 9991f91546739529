"""`common.precision: auto`, measured: where auto chose bf16 autocast with channels_last,
the stage's own training step is timed in that and in float32 with and without
channels_last, on a copy of what trains, and the fastest is kept.

bf16 + channels_last is not the fastest for every network on a processor that has
bf16: on a Xeon with AMX, EfficientNet-Lite0's head on cached features trains about
1.6x faster in float32 + channels_last, and ResNet18's layer4 on 4x4 features faster in
plain float32 (BENCHMARKS.md); on an H200 these small CNNs train faster in float32.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import NamedTuple

import torch
from torch import nn

from src.training.augment import Pipeline
from src.training.device import Placement
from src.training.splits import TensorSplits
from src.training.steps import set_train_mode, train_step

STEPS = 3  # timed steps per candidate and round, after one untimed
ROUNDS = 2  # rotating order; the faster round of each counts
MARGIN = 0.05  # another variant replaces auto's only when this much faster: noise does not


class Variant(NamedTuple):
    bf16: bool
    channels_last: bool

    @property
    def name(self) -> str:
        return ("bf16" if self.bf16 else "fp32") + ("+cl" if self.channels_last else "")


CANDIDATES = (Variant(True, True), Variant(False, True), Variant(False, False))


def formatted(model: nn.Module, channels_last: bool) -> nn.Module:
    """`model` (in place) in the channels_last or the default memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(memory_format=fmt)


def step_rates(
    model: nn.Module,
    pipeline: Pipeline,
    data: TensorSplits,
    batch_size: int,
    placement: Placement,
    *,
    steps: int = STEPS,
    rounds: int = ROUNDS,
) -> dict[Variant, float]:
    """Training images/s of one batch of `data` in each of `CANDIDATES`, each on a fresh
    copy of `model` (the model, its buffers and every RNG are left as they were)."""
    n = min(batch_size, len(data.train_y))
    y = data.train_y[:n]
    devices = [placement.device] if placement.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        x = pipeline(data.train_x[:n], train=True, generator=torch.Generator().manual_seed(0))
    best: dict[Variant, float] = {}
    for r in range(rounds):
        order = CANDIDATES[r % len(CANDIDATES) :] + CANDIDATES[: r % len(CANDIDATES)]
        for variant in order:
            candidate = dataclasses.replace(placement, **variant._asdict())
            batch = x if variant.bf16 else x.float()  # cached features are stored in bf16
            batch = candidate.memory_format(batch) if variant.channels_last else batch.contiguous()
            with torch.random.fork_rng(devices=devices):
                net = formatted(copy.deepcopy(model), variant.channels_last)
                set_train_mode(net)
                trainable = [p for p in net.parameters() if p.requires_grad]
                optimizer = torch.optim.SGD(trainable, lr=0.0)
                loss_fn = nn.CrossEntropyLoss()
                train_step(net, optimizer, loss_fn, batch, y, candidate)  # warm-up
                candidate.synchronize()
                tic = time.perf_counter()
                for _ in range(steps):
                    train_step(net, optimizer, loss_fn, batch, y, candidate)
                candidate.synchronize()
                rate = steps * n / max(time.perf_counter() - tic, 1e-9)
            best[variant] = max(best.get(variant, 0.0), rate)
    return best


def measured_variant(
    model: nn.Module,
    pipeline: Pipeline,
    data: TensorSplits,
    batch_size: int,
    placement: Placement,
) -> tuple[Variant, str] | None:
    """The variant `model` trains fastest in here and a reason saying what was measured,
    when `common.precision: auto` chose bf16 + channels_last; None otherwise (a forced
    precision, or float32 already). Auto's own choice stays unless another variant is
    more than `MARGIN` faster."""
    chosen = Variant(placement.bf16, placement.channels_last)
    if not (placement.auto and chosen == CANDIDATES[0]):
        return None
    rates = step_rates(model, pipeline, data, batch_size, placement)
    fastest = max(rates, key=rates.get)
    if rates[fastest] > rates[chosen] * (1 + MARGIN):
        chosen = fastest
    measured = ", ".join(f"{v.name} {rates[v]:,.0f}" for v in CANDIDATES)
    return chosen, f"{placement.reason}; measured img/s {measured}: {chosen.name}"
