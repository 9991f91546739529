"""Where and how the numbers run: the device, bf16 autocast and channels_last.

`Placement.for_device` is the one place that decides, from `common.precision`:
`auto` runs bf16 autocast with channels_last where the processor computes bf16
natively (CUDA; a CPU with AVX512_BF16 or AMX-BF16, `cpu_bf16_flags`) and float32 in
the default memory format elsewhere (emulated bf16 costs more than it saves); a stage
then times its own step with and without autocast and keeps the faster
(`src.training.numerics_probe`). `fp32` and `bf16` force one or the other. Weights,
optimizer state and losses stay float32 either way. The choice and its reason
(`Placement.precision`, `Placement.reason`) are logged with every run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from src.config.schema import Precision, TrainConfig

# /proc/cpuinfo flags of x86 CPUs that compute bf16 natively (oneDNN's bf16 kernels);
# without them PyTorch emulates bf16 in float32 and autocast only adds conversions.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags this CPU reports (`NATIVE_BF16_FLAGS`); () when it has none
    or does not say (no /proc/cpuinfo: not Linux)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)


def resolve_precision(precision: Precision, device: torch.device) -> tuple[bool, str]:
    """(bf16, why): what `precision` means on `device`."""
    if precision != "auto":
        return precision == "bf16", f"common.precision {precision}"
    if device.type == "cuda":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(
            including_emulation=False
        ):
            return False, "cuda without native bf16"
        return True, "cuda"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if flags:
            return True, "cpu " + " ".join(flags)
        return False, "cpu without native bf16"
    return False, f"{device.type}: float32"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    bf16: bool = False  # forward passes under bf16 autocast; weights and losses stay float32
    channels_last: bool = False  # 4-D activations in NHWC memory format
    reason: str = field(default="", compare=False)  # why this precision: logged with the run
    auto: bool = field(default=False, compare=False)  # chosen by `common.precision: auto`

    @classmethod
    def for_device(
        cls,
        device: torch.device,
        *,
        precision: Precision = "auto",
        bf16: bool | None = None,
        channels_last: bool | None = None,
    ) -> Placement:
        """What `precision` (`common.precision`) runs on `device`: bf16 autocast and
        channels_last together, or neither; `bf16`/`channels_last` override one."""
        fast, reason = resolve_precision(precision, device)
        return cls(
            device,
            bf16=fast if bf16 is None else bf16,
            channels_last=fast if channels_last is None else channels_last,
            reason=reason,
            auto=precision == "auto" and bf16 is None,
        )

    @property
    def precision(self) -> str:
        """What the forward passes compute in: "bf16" (autocast) or "fp32"."""
        return "bf16" if self.bf16 else "fp32"

    def describe(self) -> dict[str, str | bool]:
        """What `common.precision` resolved to, and why: the run's tags and metrics.json's
        (`numerics`: bf16 | fp32)."""
        return {
            "numerics": self.precision,
            "numerics_reason": self.reason,
            "channels_last": self.channels_last,
        }

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


def prepare_device(cfg: TrainConfig, precision: Precision = "auto") -> Placement:
    """The training config's device (and CPU threads), and how it runs there."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return Placement.for_device(resolve_device(cfg.device), precision=precision)


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
