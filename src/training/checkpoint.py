"""Resumable training state: `TrainState`, and its file (one writer, one reader).

A checkpoint is written at every validation and read back only when it was written
for the same config (`config_key`) and checkpoint version. It holds only tensors and
plain containers and is read with `weights_only=True`: a file that needs unpickling
is refused (CheckpointError), a torn or foreign one ignored, loudly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from src.artifacts import load_torch, save_torch
from src.runtime.errors import CheckpointError, WeightsError

CHECKPOINT_VERSION = 2  # 2: full batches only, early-stop decision, weights_only


def state_to_cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


@dataclass
class TrainState:
    """Everything a checkpoint holds: what learns and where the loop stands.

    The field names are the checkpoint's keys; `save` and `restore` are the one
    writer and reader of that file.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator  # shuffling and augmentation
    history: list[dict] = field(default_factory=list)  # one row per validation
    best: dict = field(default_factory=lambda: {"loss": math.inf, "state": None, "step": 0})
    step: int = 0  # global training step
    epoch: int = 0  # where to resume: this epoch, at this batch, in this order
    batch: int = 0
    perm: torch.Tensor | None = None
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    images_done: int = 0
    early_stop_step: int | None = None  # decided: only the final figures remain

    _OBJECTS = ("model", "optimizer", "scheduler", "generator")

    def _progress_fields(self) -> list[str]:
        return [f.name for f in fields(self) if f.name not in self._OBJECTS]

    def save(self, path: Path, config_key: str, extra: dict) -> None:
        progress = {name: getattr(self, name) for name in self._progress_fields()}
        progress["perm"] = self.perm.cpu() if self.perm is not None else None
        save_torch(
            {
                "version": CHECKPOINT_VERSION,
                "config_key": config_key,
                "model": state_to_cpu(self.model.state_dict()),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                **progress,
                "extra": extra,
            },
            Path(path),
        )

    def restore(self, ckpt: dict, device: torch.device) -> None:
        """Continue from `ckpt` (a `load_checkpoint` result); the RNGs included."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        for name in self._progress_fields():
            setattr(self, name, ckpt[name])
        if self.perm is not None:
            self.perm = self.perm.to(device)


def load_checkpoint(path: Path | None, config_key: str) -> dict | None:
    """The checkpoint at `path` if it was written for the same config, else None.

    Read with `weights_only=True`: a file that needs unpickling raises
    CheckpointError naming it (nothing in it runs); a torn one is ignored, loudly.
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        ckpt = load_torch(Path(path), refused=CheckpointError)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. Delete the file to start the stage over.") from None
    except WeightsError as exc:  # a torn or foreign file: start over, loudly
        print(f"[train] ignoring unreadable checkpoint {path}: {exc}")
        return None
    if not isinstance(ckpt, dict):
        print(f"[train] ignoring checkpoint {path}: not a checkpoint of this project")
        return None
    if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("config_key") != config_key:
        print(f"[train] ignoring checkpoint {path}: written for another config")
        return None
    return ckpt
