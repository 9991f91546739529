"""`common.precision: auto`, measured: where auto chose bf16 autocast, the stage's own
training step is timed with and without it on a copy of what trains, and the faster
is kept.

bf16 is not the faster for every network on a processor that has it: on these CPUs
EfficientNet-Lite0's head (depthwise convolutions, on cached features) trains about
1.8x faster in float32, and on an H200 these small CNNs train faster in float32
(BENCHMARKS.md). channels_last stays as auto chose it; only autocast is measured.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import torch
from torch import nn

from src.training.augment import Pipeline
from src.training.device import Placement
from src.training.splits import TensorSplits
from src.training.steps import set_train_mode, train_step

STEPS = 3  # timed steps per candidate and round, after one untimed
ROUNDS = 2  # alternating order; the faster round of each counts
MARGIN = 0.05  # float32 replaces bf16 only when this much faster: noise does not flip it


def step_rates(
    model: nn.Module,
    pipeline: Pipeline,
    data: TensorSplits,
    batch_size: int,
    placement: Placement,
    *,
    steps: int = STEPS,
    rounds: int = ROUNDS,
) -> dict[bool, float]:
    """Training images/s of one batch of `data`, autocast on (True) and off (False), each
    on a fresh copy of `model` (the model, its buffers and every RNG are left as they
    were)."""
    n = min(batch_size, len(data.train_y))
    y = data.train_y[:n]
    best: dict[bool, float] = {}
    devices = [placement.device] if placement.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        x = pipeline(data.train_x[:n], train=True, generator=torch.Generator().manual_seed(0))
    for r in range(rounds):
        for bf16 in (True, False) if r % 2 == 0 else (False, True):
            candidate = dataclasses.replace(placement, bf16=bf16)
            batch = x if bf16 else x.float()  # cached features are stored in bf16
            with torch.random.fork_rng(devices=devices):
                net = copy.deepcopy(model)
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
            best[bf16] = max(best.get(bf16, 0.0), rate)
    return best


def measured_placement(
    model: nn.Module,
    pipeline: Pipeline,
    data: TensorSplits,
    batch_size: int,
    placement: Placement,
) -> Placement:
    """`placement`, or the same without bf16 autocast when `common.precision: auto` chose
    bf16 and float32 trains this model more than `MARGIN` faster here. The reason says
    what was measured (it is logged with the run and in metrics.json)."""
    if not (placement.auto and placement.bf16):
        return placement
    rates = step_rates(model, pipeline, data, batch_size, placement)
    fp32 = rates[False] > rates[True] * (1 + MARGIN)
    measured = f"measured {rates[True]:,.0f} img/s bf16, {rates[False]:,.0f} fp32"
    reason = f"{placement.reason}; {measured}: {'fp32' if fp32 else 'bf16'}"
    return dataclasses.replace(placement, bf16=not fp32, reason=reason)
