"""Task-4a feature caching: what `fit` trains on, and on which inputs.

With augmentation off, the frozen prefix of the network (everything before the
first trainable block of its backbone: conv1 … layer3 by default for ResNet18, stem …
block14 for EfficientNet-Lite0 training block15, head and fc) maps each image to the
same features in every epoch. `prepare_transfer_training` then runs that prefix once
over train/val/test (eval mode, no grad, batched, on the data's device) and hands
`fit` a head (the remaining blocks → global pool → flatten → fc) that shares its
modules with the full model, so training the head trains the model that is saved
and logged. Otherwise `fit` trains the full model on uint8 images through the
InputPipeline, which resizes on the batch tensor.

Memory: cached features take N x C x H x W elements (layer3 at 224 px: 256x14x14
per image, 6 GB for CIFAR-10's 60,000 images in bf16 under bf16 autocast, 12 GB in
float32 otherwise). They are written batch by batch into one preallocated tensor; when they
would need more than half the free memory the stage trains uncached instead.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from src.config.schema import TrainConfig, TransferConfig
from src.runtime.progress import Progress
from src.training.augment import Pipeline
from src.training.device import Placement
from src.training.models import BackbonePart, split_backbone, weights_file
from src.training.splits import TensorSplits, draw_budget

MAX_CACHE_SHARE = 0.5  # of the free device (or host) memory the cached features may take


@dataclass
class TransferTraining:
    """Everything `run_training_stage` needs besides the full model."""

    fit_model: nn.Module  # the head on cached features, or the full model
    data: TensorSplits  # features, or uint8 images (already cut to the training budget)
    pipeline: Pipeline
    train_cfg: TrainConfig  # `subset` already applied, so 0 here
    cached: bool
    note: str  # what is cached, or why not
    cache_time_s: float = 0.0

    def metrics(self) -> dict:
        return {"features_cached": int(self.cached), "feature_cache_time_s": self.cache_time_s}


class FeatureInput:
    """The pipeline for cached features: nothing to augment or normalise; 4-D features
    go into the memory format the placement runs, as the InputPipeline's images do, and
    to float32 when the head trains without autocast (features are cached in bf16 when
    the prefix ran in it)."""

    def __init__(self, placement: Placement):
        self.placement = placement

    def __call__(
        self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = self.placement.memory_format(x)
        return x if self.placement.bf16 else x.float()


def describe_weights(weights: str, backbone: str = "resnet18") -> dict[str, str]:
    """MLflow tags: `backbone`, `weights` (imagenet | none | the path) and `pretrained`,
    so a random-init smoke run is never mistaken for a pretrained result."""
    tags = {"backbone": backbone, "weights": weights, "pretrained": str(weights != "none").lower()}
    path = weights_file(backbone, weights)
    if path is not None:
        tags["weights_file"] = str(path)
    return tags


def select_budget(
    data: TensorSplits, cfg: TrainConfig, seed: int
) -> tuple[TensorSplits, TrainConfig]:
    """Apply `subset` and the dry run's cuts up front, picking the training images
    `fit` itself would pick (`draw_budget` with a generator seeded as `fit` seeds its
    own), so only those go through the frozen prefix.

    Returns the cut data and `cfg` with `subset` 0 (`fit` must not cut again).
    """
    data = draw_budget(data, cfg, torch.Generator().manual_seed(seed))
    return data, dataclasses.replace(cfg, subset=0)


def _free_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@torch.no_grad()
def feature_shape(prefix: nn.Module, image_size: int) -> tuple[int, ...]:
    """The prefix's output shape for one image, e.g. (256, 4, 4) after layer3 at 64 px.

    Leaves the (frozen) prefix in eval mode, where it stays."""
    prefix.eval()
    param = next(prefix.parameters())
    probe = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    return tuple(prefix(probe).shape[1:])


def cache_plan(
    model: nn.Module, cfg: TransferConfig, n_images: int, placement: Placement
) -> tuple[nn.Module | None, str]:
    """The frozen prefix to cache, or None and the reason caching is off."""
    prefix_names, rest = split_backbone(cfg.backbone, cfg.trainable)
    if not cfg.cache_features:
        return None, "resnet.cache_features is false"
    if cfg.train.augment.enabled:
        return None, "augmentation is on: the frozen blocks must see every augmented image"
    prefix = BackbonePart(model, cfg.backbone, prefix_names)
    if not any(True for _ in prefix.parameters()):
        return None, f"nothing frozen before the first trainable block ({rest[0]})"
    if any(p.requires_grad for p in prefix.parameters()):
        return None, "the blocks before the first trainable one are not all frozen"
    shape = feature_shape(prefix, cfg.image_size)
    device = placement.device
    needed = n_images * torch.Size(shape).numel() * placement.feature_dtype.itemsize
    free = _free_memory_bytes(device)
    if free is not None and needed > MAX_CACHE_SHARE * free:
        return None, (
            f"features {shape} for {n_images:,} images need {needed / 1e9:.1f} GB, "
            f"over {MAX_CACHE_SHARE:.0%} of the {free / 1e9:.1f} GB free on {device.type}"
        )
    return prefix, (
        f"features after {prefix_names[-1]}: {shape} per image, {n_images:,} images, "
        f"{needed / 1e9:.2f} GB"
    )


@torch.no_grad()
def compute_features(
    prefix: nn.Module,
    x: torch.Tensor,
    pipeline: Pipeline,
    batch_size: int,
    placement: Placement,
    bar: Progress | None = None,
) -> torch.Tensor:
    """The prefix's outputs for uint8 images `x` (N, H, W, C), in eval mode, batched,
    into one preallocated tensor on x's device, in `placement.feature_dtype` (bf16
    under bf16 autocast, else float32).

    Leaves the (frozen) prefix in eval mode, where it stays."""
    prefix.eval()
    dtype, device = placement.feature_dtype, x.device
    out: torch.Tensor | None = None
    for start in range(0, len(x), batch_size):
        with placement.autocast():
            features = prefix(pipeline(x[start : start + batch_size], train=False))
        if out is None:
            out = torch.empty((len(x), *features.shape[1:]), dtype=dtype, device=device)
        out[start : start + len(features)].copy_(features)
        if bar is not None:
            bar.update(len(features))
    if out is None:  # an empty split
        out = torch.empty((0,), dtype=dtype, device=device)
    return out


def cache_features(
    prefix: nn.Module,
    data: TensorSplits,
    pipeline: Pipeline,
    batch_size: int,
    placement: Placement,
    bar: Progress | None = None,
) -> TensorSplits:
    """train/val/test images → prefix features; labels are shared, not copied. `bar`
    counts the images done."""
    parts = []
    for split in ("train", "val", "test"):
        x, y = data.split(split)
        parts += [compute_features(prefix, x, pipeline, batch_size, placement, bar), y]
    return TensorSplits(*parts)


def prepare_transfer_training(
    model: nn.Module,
    cfg: TransferConfig,
    data: TensorSplits,
    pipeline: Pipeline,
    seed: int,
    placement: Placement | None = None,
    *,
    label: str = "transfer",
    progress: bool = False,
) -> TransferTraining:
    """Cut `data` to the training budget and, when the plan allows, cache the frozen
    prefix's features (a progress bar when `progress`; lines start `[label]`); `model`
    and `data` must be on the same device. `placement` defaults to what
    `Placement.for_device` decides for that device."""
    data, train_cfg = select_budget(data, cfg.train, seed)
    placement = placement or Placement.for_device(data.train_x.device)
    n_images = sum(len(data.split(s)[1]) for s in ("train", "val", "test"))
    prefix, note = cache_plan(model, cfg, n_images, placement)
    if prefix is None:
        return TransferTraining(model, data, pipeline, train_cfg, cached=False, note=note)
    print(f"[{label}] caching {note} ...", flush=True)  # minutes on a CPU
    tic = time.perf_counter()
    bar = Progress(n_images, f"[{label}] features", progress, unit="img")
    try:
        features = cache_features(prefix, data, pipeline, train_cfg.eval_batch_size, placement, bar)
    finally:
        bar.close()
    placement.synchronize()
    elapsed = time.perf_counter() - tic
    _, rest = split_backbone(cfg.backbone, cfg.trainable)
    return TransferTraining(
        BackbonePart(model, cfg.backbone, rest),
        features,
        FeatureInput(placement),
        train_cfg,
        cached=True,
        note=f"{note}, computed in {elapsed:.1f} s",
        cache_time_s=round(elapsed, 2),
    )
