"""The params schema: one frozen dataclass per params.yaml section, and the keys it must hold.

Building a section checks every key: an unknown key, a wrong type or an impossible value
raises :class:`ConfigError` naming the dotted key and what was expected, before any work
starts (src.config.typed builds them; src.config.load reads the file). Pipelines turn
that error into exit code 2.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from src.config.backbones import BACKBONES, normalisation_matches
from src.config.cifar import COURSE_MEAN, COURSE_STD, IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD
from src.config.stages import CNN_STAGES, TRAINING_STAGES, TRANSFER_STAGES
from src.runtime.errors import ConfigError

# Overrides `data.source` so an offline user can point the pipeline at a local copy.
SOURCE_ENV_VAR = "CIFAR10_SOURCE"

# The largest seed every RNG the project seeds accepts (numpy's legacy RandomState, under
# Optuna's samplers, takes no more); a larger one would end in a traceback mid-run.
SEED_MAX = 2**32 - 1

# `common.experiment` names the MLflow experiments (`<name>`, `<name>-tune`) and the
# registered models (`<name>-<stage>`): MLflow refuses '/' and ':' in a model name, a quote
# breaks its search filters, and the name becomes a path in artifact stores. Letters,
# digits, '_', '.' and '-', starting and ending with a letter or digit, fit all of them.
NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


# --------------------------------------------------------------------------- sections


# auto: bf16 autocast + channels_last where the processor computes bf16 natively (CUDA,
# CPUs with AVX512_BF16 or AMX), float32 elsewhere; fp32 | bf16 force one
# (src.training.device).
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class CommonConfig:
    seed: int = 0
    # One MLflow experiment for every stage, so the UI compares them side by side.
    experiment: str = "cifar10"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", "must be >= 0")
        _require(self.seed <= SEED_MAX, "seed", f"{self.seed} is out of range [0, {SEED_MAX}]")
        _require(bool(self.experiment.strip()), "experiment", "must not be empty")
        _require(
            bool(NAME_PATTERN.fullmatch(self.experiment)),
            "experiment",
            f"{self.experiment!r} is not a name MLflow and the file system both accept: use "
            "1-64 letters, digits, '_', '.' or '-', starting and ending with a letter or digit",
        )


@dataclass(frozen=True)
class DataConfig:
    # "official" (download), a cifar-10-python.tar.gz path, or an image folder
    # (directory, .tar, .tar.gz, .tgz or .zip). $CIFAR10_SOURCE overrides it.
    source: str = "official"
    url: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    # The trust anchor for the official archive, downloaded or local: its batches are
    # pickles and are unpickled only after this md5 matches (and then by an unpickler
    # that builds nothing but dicts, lists, bytes and numpy arrays).
    md5: str = "c58f30108f718f92721af3b95e74349a"
    val_fraction: float = 0.1  # of the 50,000 training images: 5,000 as in the course
    split_seed: int = 0
    timeout_s: float = 60.0  # per network read
    retries: int = 3

    def __post_init__(self) -> None:
        _require(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")
        _require(0 < self.timeout_s < math.inf, "timeout_s", "must be a number > 0")
        _require(self.retries >= 0, "retries", "must be >= 0")
        _require(self.split_seed >= 0, "split_seed", "must be >= 0")
        _require(
            self.split_seed <= SEED_MAX,
            "split_seed",
            f"{self.split_seed} is out of range [0, {SEED_MAX}]",
        )
        _require(bool(self.source.strip()), "source", "must not be empty")
        _require(
            len(self.md5) == 32 and all(c in "0123456789abcdef" for c in self.md5),
            "md5",
            "must be 32 lowercase hex digits",
        )


Activation = Literal["relu", "leaky_relu", "gelu", "elu"]


@dataclass(frozen=True)
class ModelConfig:
    """A CNN of conv blocks then fully connected layers (task 2 and task 3)."""

    filters: tuple[int, ...] = (32, 64, 128)  # one conv block per entry
    kernel_size: int = 5
    padding: Literal["same", "valid"] = "same"
    activation: Activation = "relu"
    batch_norm: bool = False
    dropout: float = 0.0  # Dropout2d after each conv block, Dropout after each hidden FC
    fc: tuple[int, ...] = (64,)  # hidden FC widths; the 10-way output layer is added
    image_size: int = IMAGE_SIZE

    def __post_init__(self) -> None:
        _require(len(self.filters) >= 1, "filters", "needs at least one conv block")
        _require(all(f >= 1 for f in self.filters), "filters", "every entry must be >= 1")
        _require(all(f >= 1 for f in self.fc), "fc", "every entry must be >= 1")
        _require(self.kernel_size >= 1, "kernel_size", "must be >= 1")
        if self.padding == "same":
            _require(
                self.kernel_size % 2 == 1,
                "kernel_size",
                f"must be odd with padding 'same' (got {self.kernel_size})",
            )
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        _require(
            self.output_size() >= 1,
            "filters",
            f"{len(self.filters)} blocks of kernel {self.kernel_size} and 2x2 pooling "
            f"shrink a {self.image_size}px image to nothing",
        )

    def output_size(self) -> int:
        """Spatial size after the last conv block (each block: conv, then 2x2 max pool)."""
        size = self.image_size
        for _ in self.filters:
            if self.padding == "valid":
                size -= self.kernel_size - 1
            size //= 2
        return size


@dataclass(frozen=True)
class AugmentConfig:
    """Training-split augmentation, applied on whole batches."""

    crop_padding: int = 0  # random crop of the original size from a zero-padded image
    hflip: bool = False

    def __post_init__(self) -> None:
        _require(0 <= self.crop_padding <= 16, "crop_padding", "must be in [0, 16]")

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 5e-2
    momentum: float = 0.0  # SGD only
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 10
    scheduler: Literal["none", "cosine", "onecycle", "step"] = "none"
    step_gamma: float = 0.1  # "step": lr *= gamma every step_epochs epochs
    step_epochs: int = 5
    label_smoothing: float = 0.0
    validations_per_epoch: int = 2
    # Course rule: stop when the oldest of the last `early_stop_count` validation
    # losses is the lowest of them. 0 disables early stopping.
    early_stop_count: int = 4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mean: tuple[float, float, float] = COURSE_MEAN
    std: tuple[float, float, float] = COURSE_STD
    # Evaluation chunk: the stages' training batch. On CPU, evaluation then reuses the
    # memory the training steps freed; large chunks page-fault their activations in
    # afresh every batch.
    eval_batch_size: int = 64
    subset: int = 0  # train on the first N images of the (shuffled) training split; 0 = all
    dry_run: bool = False  # a few batches of a tiny subset: the real code path in seconds
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        _require(self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive number")
        _require(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        _require(not self.nesterov or self.momentum > 0, "nesterov", "needs momentum > 0")
        _require(0 <= self.weight_decay < math.inf, "weight_decay", "must be a number >= 0")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        _require(self.epochs >= 1, "epochs", "must be >= 1")
        _require(0 < self.step_gamma <= 1, "step_gamma", "must be in (0, 1]")
        _require(self.step_epochs >= 1, "step_epochs", "must be >= 1")
        _require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        _require(self.validations_per_epoch >= 1, "validations_per_epoch", "must be >= 1")
        _require(self.early_stop_count >= 0, "early_stop_count", "must be >= 0")
        # .inf or .nan would zero or poison a channel of every image, silently
        _require(
            all(math.isfinite(m) for m in self.mean),
            "mean",
            f"every entry must be a finite number, got {list(self.mean)}",
        )
        _require(
            all(math.isfinite(s) and s > 0 for s in self.std),
            "std",
            f"every entry must be a finite number > 0, got {list(self.std)}",
        )
        _require(self.subset >= 0, "subset", "must be >= 0 (0 = all images)")
        _require(self.num_threads >= 0, "num_threads", "must be >= 0")


@dataclass(frozen=True)
class CNNStageConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class TransferConfig:
    """Task 4a: a pretrained backbone (src.config.backbones), partly frozen, a new head."""

    # resnet18 (the course's: torchvision's ImageNet weights) or efficientnet_lite0
    # (ImageNet weights from a pip package: works offline wherever pip does).
    backbone: Literal["resnet18", "efficientnet_lite0"] = "resnet18"
    # "imagenet" (the backbone's own pretrained source), a path to a state-dict file, or
    # "none" (random init: offline smoke runs only).
    weights: str = "imagenet"
    trainable: tuple[str, ...] = ("layer4", "fc")  # the backbone's blocks that train
    image_size: int = 224  # images are resized on the batch tensor
    cache_features: bool = True  # run the frozen prefix once when nothing augments
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            optimizer="adam",
            lr=5e-4,
            batch_size=32,
            epochs=5,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            eval_batch_size=256,
        )
    )

    def __post_init__(self) -> None:
        backbone = BACKBONES[self.backbone]
        blocks = backbone.trainable_blocks
        _require(bool(self.weights), "weights", "must be 'imagenet', 'none' or a file path")
        bad = [b for b in self.trainable if b not in blocks]
        _require(
            not bad,
            "trainable",
            f"unknown blocks {bad} for backbone {self.backbone}; choose from {list(blocks)}",
        )
        _require("fc" in self.trainable, "trainable", "must include 'fc' (the new 10-way head)")
        _require(32 <= self.image_size <= 512, "image_size", "must be in [32, 512]")
        # The pretrained weights only mean something on inputs scaled as in their training:
        # the backbone dictates mean/std (EfficientNet-Lite's probe: 0.77 with its own,
        # 0.67-0.69 with ImageNet's).
        mean, std = self.train.mean, self.train.std
        if not normalisation_matches(backbone, mean, std):
            mean_ok = normalisation_matches(backbone, mean, backbone.std)
            raise ConfigError(
                "train.std" if mean_ok else "train.mean",
                f"mean {list(mean)}, std {list(std)} are not the input scaling "
                f"{backbone.title}'s weights were trained with: backbone {self.backbone} "
                f"needs mean {[round(m, 3) for m in backbone.mean]} and "
                f"std {[round(s, 3) for s in backbone.std]}",
            )


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml. Sections not listed here are rejected."""

    common: CommonConfig = field(default_factory=CommonConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # One section per training stage of the catalog (src.config.stages.TRAINING_STAGES), in its
    # order: typed loading needs the fields spelled out; tests/config/test_stages_catalog.py
    # checks they agree.
    baseline: CNNStageConfig = field(default_factory=CNNStageConfig)
    improved: CNNStageConfig = field(default_factory=CNNStageConfig)
    tuned: CNNStageConfig = field(default_factory=CNNStageConfig)  # derived: src.config.design
    resnet: TransferConfig = field(default_factory=TransferConfig)
    lite: TransferConfig = field(default_factory=TransferConfig)
    # A section owned by another module, validated there (src.tune).
    tune: dict = field(default_factory=dict)
    # Named sets of dotted overrides, read by no stage: `python -m src.quick` runs the
    # pipeline with `profiles.quick` as `dvc exp run -S` params; `python -m src.tune
    # --profile quick` applies it to its base config.
    profiles: dict = field(default_factory=dict)
    # The profile `load_params(profile=...)` applied; never a params.yaml key.
    profile: str = "full"


# --------------------------------------------------------------------------- required keys

# params.yaml must spell out every section and every key of the dataclass sections above,
# except these: a missing key is a ConfigError, never a silent default (a missing
# `improved:` would otherwise train the baseline's network under the improved name).
# What may be left out: run-time switches, recipe extras that default to "off", and the
# knobs the course's task-2 recipe (and the ResNet's) does without.
_TRAIN_OPTIONAL = (
    "nesterov",
    "step_gamma",
    "step_epochs",
    "label_smoothing",
    "dry_run",
    "device",
    "num_threads",
)
OPTIONAL_KEYS = frozenset(
    {
        "profile",  # set by load_params(profile=...), refused in the file
        "tuned",  # derived by load_params (src.config.design), refused in the file
        *(f"{s}.model.image_size" for s in CNN_STAGES),
        *(f"{s}.train.eval_batch_size" for s in CNN_STAGES),
        *(f"{s.name}.train.{k}" for s in TRAINING_STAGES for k in _TRAIN_OPTIONAL),
        # what the course's task-2 recipe and the transfer stages' do without
        "baseline.train.momentum",
        "baseline.train.weight_decay",
        "baseline.train.scheduler",
        *(f"{s}.train.{k}" for s in TRANSFER_STAGES for k in ("momentum", "scheduler")),
    }
)


def required_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key params.yaml must hold (sections and leaves), in file order."""
    keys = []
    for f in dataclasses.fields(cls or Params):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if key in OPTIONAL_KEYS:
            continue
        keys.append(key)
        tp = typing.get_type_hints(cls or Params)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += required_keys(tp, key)
    return keys


def check_required(raw: dict) -> None:
    """ConfigError naming the first required key `raw` (params.yaml as read) lacks."""
    for key in required_keys():
        node: Any = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last not in node:
            raise ConfigError(
                key, "missing from params.yaml; every section and key must be set (no defaults)"
            )
