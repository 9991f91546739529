"""Where and how the numbers run: the device, bf16 autocast and channels_last.

`Placement.for_device` is the one place that decides: CUDA runs bf16 autocast and
channels_last, the CPU neither. Tests override both on the CPU
(`Placement(torch.device("cpu"), bf16=True, channels_last=True)`), so the code the
GPU runs (autocast, the memory format, bf16 cached features, non-blocking copies)
runs, and fails, on the CPU too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from src.config.schema import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    bf16: bool = False  # forward passes under bf16 autocast; weights and losses stay float32
    channels_last: bool = False  # 4-D activations in NHWC memory format

    @classmethod
    def for_device(
        cls, device: torch.device, *, bf16: bool | None = None, channels_last: bool | None = None
    ) -> Placement:
        cuda = device.type == "cuda"
        return cls(
            device,
            bf16=cuda if bf16 is None else bf16,
            channels_last=cuda if channels_last is None else channels_last,
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def place_model(self, model: nn.Module) -> nn.Module:
        """`model` on the device, in channels_last when that is on (weights stay float32)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D batch in the memory format the model expects."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def feature_dtype(self) -> torch.dtype:
        """What cached activations are stored in: what autocast computes them in."""
        return torch.bfloat16 if self.bf16 else torch.float32

    def synchronize(self) -> None:
        synchronize(self.device)


def prepare_device(cfg: TrainConfig) -> Placement:
    """The training config's device (and CPU threads), and how it runs."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return Placement.for_device(resolve_device(cfg.device))


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a host timer covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor onto `device` without stalling the host.

    A plain copy to CUDA would wait for all queued GPU work, a sync per step; from
    pinned memory it is queued instead. The CPU takes the same non-blocking copy
    (pinning needs CUDA).
    """
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
