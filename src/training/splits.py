"""What a run trains and evaluates on: the prepared data set as tensors on the device,
and the training budget (`subset`, the dry run's cuts) applied to it.

`load_splits` is the one way data reaches the device: the training stages, tuning
trials and the benchmark all call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from src.config.layout import Layout, project_root
from src.config.schema import TrainConfig
from src.data.prepare import MANIFEST, Dataset, load_dataset
from src.runtime.errors import ConfigError, DataError

DRY_RUN_TRAIN_BATCHES = 4
DRY_RUN_EVAL_IMAGES = 256


@dataclass
class TensorSplits:
    """Inputs (uint8 images or cached features) and int64 labels, per split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device) -> TensorSplits:
        return TensorSplits(*(t.to(device) for t in self.__dict__.values()))

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def cut_eval(self, n: int | None) -> TensorSplits:
        """The first `n` validation and test images (all with None), training kept."""
        val, test = (self.val_x[:n], self.val_y[:n]), (self.test_x[:n], self.test_y[:n])
        return TensorSplits(self.train_x, self.train_y, *val, *test)

    @classmethod
    def from_dataset(cls, dataset: Dataset, test: bool = True) -> TensorSplits:
        """The prepared data set as uint8 tensors on the CPU (184 MB for CIFAR-10);
        `test=False` leaves the test split empty."""
        parts = []
        for split in (dataset.train, dataset.val, dataset.test):
            cut = None if test or split is not dataset.test else 0
            parts += [torch.from_numpy(split.images[:cut]), torch.from_numpy(split.labels[:cut])]
        return cls(*parts)


def load_splits(
    device: torch.device,
    *,
    data_dir: Path | None = None,
    test: bool = True,
    user: str = "training",
) -> tuple[Dataset, TensorSplits]:
    """The prepared data set (default: the `download` stage's out) and all of it as
    uint8 tensors on `device`. `test=False` leaves the test split empty: an empty one
    keeps `fit`'s final evaluation away from it (tuning never sees the test images).
    A missing data set is a DataError that says how to prepare it; `user` names who
    needed it ("tuning", "the benchmark")."""
    data_dir = Path(data_dir or Layout().data)
    if not (data_dir / MANIFEST).is_file():
        # after `python -m src.quick` too: it prepares the data in a temporary copy only
        raise DataError(
            f"{user} trains on the prepared data set, and {_shown(data_dir)} holds none: "
            "prepare it first with `dvc repro download` (a local copy of CIFAR-10: "
            "`CIFAR10_SOURCE=/path/to/cifar-10-python.tar.gz dvc repro download`; "
            "`python -m src.quick` prepares it only inside its temporary copy)"
        )
    dataset = load_dataset(data_dir)
    return dataset, TensorSplits.from_dataset(dataset, test=test).to(device)


def _shown(folder: Path) -> str:
    """`data/cifar10/` inside the project, the full path elsewhere."""
    try:
        return f"{folder.resolve().relative_to(project_root().resolve()).as_posix()}/"
    except ValueError:
        return str(folder)


def train_size(n_available: int, cfg: TrainConfig) -> int:
    """Training images per epoch: all, or `subset` of them (the dry run's few batches)."""
    subset = DRY_RUN_TRAIN_BATCHES * cfg.batch_size if cfg.dry_run else cfg.subset
    return min(subset, n_available) if subset else n_available


def check_train_size(n_available: int, cfg: TrainConfig, params_key: str = "train") -> None:
    """ConfigError naming `<params_key>.subset` or `.batch_size` when the training set
    is smaller than one batch: an epoch drops the last partial batch, so nothing
    would train."""
    n = train_size(n_available, cfg)
    if n >= cfg.batch_size:
        return
    if cfg.subset and not cfg.dry_run and cfg.subset < n_available:
        raise ConfigError(
            f"{params_key}.subset",
            f"{cfg.subset} training images are fewer than one batch "
            f"({params_key}.batch_size = {cfg.batch_size}); an epoch uses full batches only",
        )
    raise ConfigError(
        f"{params_key}.batch_size",
        f"{cfg.batch_size} is more than the {n} training images; an epoch uses full batches only",
    )


def draw_budget(data: TensorSplits, cfg: TrainConfig, generator: torch.Generator) -> TensorSplits:
    """What a run trains and evaluates on: `train_size` training images, drawn at random
    with `generator` when that is not all of them, and the dry run's first
    DRY_RUN_EVAL_IMAGES of val and test. `fit` draws with its own freshly seeded
    generator; `src.training.feature_cache` calls this with one seeded alike, so it picks the
    same images before caching their features."""
    train_x, train_y = data.train_x, data.train_y
    n_train = train_size(len(train_y), cfg)
    if n_train < len(train_y):
        keep = torch.randperm(len(train_y), generator=generator)[:n_train].to(train_y.device)
        train_x, train_y = train_x[keep], train_y[keep]
    budget = TensorSplits(train_x, train_y, data.val_x, data.val_y, data.test_x, data.test_y)
    return budget.cut_eval(DRY_RUN_EVAL_IMAGES if cfg.dry_run else None)
