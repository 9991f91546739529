"""Small, pure batch-tensor helpers: crop, flip, normalise, resize.

They work on whole batches on whatever device the batch lives on, so the hot
path has no per-image Python or PIL work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.config.schema import AugmentConfig, TrainConfig
from src.training.device import Placement, to_device_async

Pipeline = Callable[..., torch.Tensor]  # (x, train, generator) -> model input: InputPipeline


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop of the original size from a zero-padded batch, per image.

    x: (B, H, W, C) any dtype. Matches torchvision's RandomCrop(size, padding) with
    fill 0, applied independently to every image. The random numbers are drawn on
    the CPU generator, so every device draws the same.
    """
    if padding <= 0:
        return x
    b, h, w, _ = x.shape
    padded = F.pad(x, (0, 0, padding, padding, padding, padding))  # pads W and H, not C
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device="cpu")
    offsets = to_device_async(offsets, x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2. x: (B, H, W, C)."""
    flip = torch.rand(x.shape[0], generator=generator, device="cpu") < 0.5
    flip = to_device_async(flip, x.device)[:, None, None, None]
    return torch.where(flip, x.flip(2), x)


def to_float_nchw(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False
) -> torch.Tensor:
    """uint8 (B, H, W, C) → normalised float32 (B, C, H, W).

    (x / 255 - mean) / std, as one converting copy into the target layout and then
    in place: the same operations in the same order, without temporaries.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=memory_format, copy=True)
    return out.div_(255.0).sub_(mean).div_(std)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float (B, C, H, W) batch to size x size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@dataclass
class InputPipeline:
    """uint8 images → model input: augment (training only), normalise, resize."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: AugmentConfig
    image_size: int | None = None  # resize target; None keeps 32x32
    channels_last: bool = False

    def __post_init__(self) -> None:
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            shape = (1, 3, 1, 1)
            self._stats[device] = (
                torch.tensor(self.mean, device=device).view(shape),
                torch.tensor(self.std, device=device).view(shape),
            )
        return self._stats[device]

    def __call__(
        self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if train:
            x = random_crop(x, self.augment.crop_padding, generator)
            if self.augment.hflip:
                x = random_hflip(x, generator)
        mean, std = self._mean_std(x.device)
        out = to_float_nchw(x, mean, std, self.channels_last)
        if self.image_size:
            out = resize(out, self.image_size)
            if self.channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
        return out


def input_pipeline(
    cfg: TrainConfig, placement: Placement, image_size: int | None = None
) -> InputPipeline:
    """The training config's pipeline, in the memory format `placement` runs."""
    return InputPipeline(
        cfg.mean, cfg.std, cfg.augment, image_size, channels_last=placement.channels_last
    )
