"""Typed, validated configuration loaded from ``params.yaml``.

Every section of ``params.yaml`` maps onto a frozen dataclass below. Loading checks
every key: an unknown key, a wrong type or an impossible value raises
:class:`ConfigError` naming the dotted key and what was expected, before any work
starts. Pipelines turn that error into exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from src.config.typed import build, config_hash, flatten, to_dict  # noqa: F401 (callers' names)
from src.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = "params.yaml"
# Overrides `data.source` so an offline user can point the pipeline at a local copy.
SOURCE_ENV_VAR = "CIFAR10_SOURCE"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


# The largest seed every RNG the project seeds accepts (numpy's legacy RandomState, under
# Optuna's samplers, takes no more); a larger one would end in a traceback mid-run.
SEED_MAX = 2**32 - 1


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class CommonConfig:
    seed: int = 0
    # One MLflow experiment for every stage, so the UI compares them side by side.
    experiment: str = "cifar10"

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", "must be >= 0")
        _require(self.seed <= SEED_MAX, "seed", f"{self.seed} is out of range [0, {SEED_MAX}]")
        _require(bool(self.experiment.strip()), "experiment", "must not be empty")


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
    image_size: int = 32

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
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # the course's normalisation
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    # Evaluation chunk: the stages' training batch. On CPU, evaluation then reuses the
    # memory the training steps freed; 1000-image chunks page-fault their activations
    # in afresh every batch (baseline evaluation 1.6x slower, BENCHMARKS.md).
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
class ResNetConfig:
    # "imagenet" (torchvision's IMAGENET1K_V1, from its cache or the network), a path
    # to a state-dict file, or "none" (random init: offline smoke runs only).
    weights: str = "imagenet"
    trainable: tuple[str, ...] = ("layer4", "fc")  # blocks that train; the rest is frozen
    image_size: int = 224  # images are resized on the batch tensor
    cache_features: bool = True  # run the frozen prefix once when nothing augments
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            optimizer="adam",
            lr=5e-4,
            batch_size=32,
            epochs=5,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            eval_batch_size=256,
        )
    )

    def __post_init__(self) -> None:
        blocks = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")
        _require(bool(self.weights), "weights", "must be 'imagenet', 'none' or a file path")
        bad = [b for b in self.trainable if b not in blocks]
        _require(not bad, "trainable", f"unknown blocks {bad}; choose from {list(blocks)}")
        _require("fc" in self.trainable, "trainable", "must include 'fc' (the new 10-way head)")
        _require(32 <= self.image_size <= 512, "image_size", "must be in [32, 512]")


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml. Sections not listed here are rejected."""

    common: CommonConfig = field(default_factory=CommonConfig)
    data: DataConfig = field(default_factory=DataConfig)
    baseline: CNNStageConfig = field(default_factory=CNNStageConfig)
    improved: CNNStageConfig = field(default_factory=CNNStageConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
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
        "baseline.model.image_size",
        "improved.model.image_size",
        *(f"{s}.train.{k}" for s in ("baseline", "improved", "resnet") for k in _TRAIN_OPTIONAL),
        "baseline.train.momentum",
        "baseline.train.weight_decay",
        "baseline.train.scheduler",
        "baseline.train.eval_batch_size",
        "improved.train.eval_batch_size",
        "resnet.train.momentum",
        "resnet.train.scheduler",
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


# --------------------------------------------------------------------------- loading


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(dotted, "override names a key that is not a section")
        node = child
    node[parts[-1]] = value


def profile_overrides(raw: dict, name: str) -> dict[str, Any]:
    """`profiles.<name>` of the raw params: dotted key -> value ({} for "full")."""
    profiles = raw.get("profiles") or {}
    if name == "full" and "full" not in profiles:
        return {}
    if name not in profiles:
        raise ConfigError("profiles", f"unknown profile {name!r}; defined: {sorted(profiles)}")
    overrides = profiles[name] or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"profiles.{name}", "expected a mapping of dotted keys to values")
    return dict(overrides)


def apply_profile(raw: dict, name: str) -> dict:
    """A copy of the raw params with profile `name`'s dotted overrides put in."""
    merged = json.loads(json.dumps(raw))
    for dotted, value in profile_overrides(raw, name).items():
        _set_dotted(merged, dotted, value)
    return merged


def load_raw(path: str | Path | None = None) -> dict:
    """params.yaml as plain data. Bytes that are not UTF-8, YAML errors, a duplicate key
    (at any depth: YAML's last-one-wins would hide a value from its reader) and tabs are
    ConfigErrors naming the line."""
    import yaml  # optional at import time: the GPU machine may lack it

    path = Path(path) if path else project_root() / PARAMS_FILE
    if not path.is_file():
        raise ConfigError("", f"{path} not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            "",
            f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"offset {exc.start}); save the file as UTF-8",
        ) from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_unique_keys(node, path)
            raw = (loader.construct_document(node) if node is not None else None) or {}
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        hint = "; indent with spaces, not tabs" if "\\t" in problem else ""
        raise ConfigError("", f"{where}: invalid YAML: {problem}{hint}") from None
    except yaml.reader.ReaderError as exc:  # a control character, say: one line, not YAML's
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            "", f"{path}:{line}: invalid YAML: {exc.reason} (#x{exc.character:04x})"
        ) from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("", f"{path}: invalid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping at top level")
    return raw


def _check_unique_keys(node: Any, path: Path, prefix: str = "") -> None:
    """ConfigError naming a key a mapping holds twice (both lines), at any depth."""
    import yaml

    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, path, f"{prefix}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges defaults on purpose
            continue
        name = str(key_node.value)
        key = f"{prefix}.{name}" if prefix else name
        line = key_node.start_mark.line + 1
        if name in seen:
            raise ConfigError(
                key,
                f"set twice in {path} (lines {seen[name]} and {line}); YAML would keep "
                "only the last one: remove one",
            )
        seen[name] = line
        _check_unique_keys(value_node, path, key)


def load_params(
    path: str | Path | None = None, overrides: dict | None = None, profile: str = "full"
) -> Params:
    """Load and validate params.yaml, with profile `profile` (`profiles.<name>`) and then
    `overrides` (dotted keys; a "profile" entry there selects the profile) put in.

    Every required key must be in the file (:data:`OPTIONAL_KEYS` lists the others), and a
    local `data.source` must lie outside the folder the data stage replaces
    (:func:`check_source`). No stage passes a profile: what a stage trains with is what
    params.yaml (and so DVC) says.
    """
    raw = load_raw(path)
    check_retired(raw)
    check_required(raw)
    if "profile" in raw:
        raise ConfigError(
            "profile",
            "no longer selects a profile (stages read only their own keys, so DVC records "
            "what ran); remove it. Quick run: `python -m src.quick`",
        )
    overrides = dict(overrides or {})
    profile = overrides.pop("profile", profile)
    raw = apply_profile(raw, profile)
    raw["profile"] = profile
    for dotted, value in overrides.items():
        _set_dotted(raw, dotted, value)
    params = build(Params, raw)
    source = os.environ.get(SOURCE_ENV_VAR)
    if source:
        params = dataclasses.replace(params, data=dataclasses.replace(params.data, source=source))
    check_source(params)
    return params


def check_retired(raw: dict) -> None:
    """ConfigError for keys params.yaml no longer has, saying what replaced them."""
    common = raw.get("common")
    if isinstance(common, dict) and "paths" in common:
        fixed = ", ".join(f"{p}/" for p in Layout(Path()).folders())
        raise ConfigError(
            "common.paths",
            f"is no longer a param: the project layout is fixed ({fixed}), because DVC "
            "deletes a stage's outputs before running it and a path param could aim that "
            "deletion anywhere; remove it (data on another disk: README, Design notes)",
        )


# --------------------------------------------------------------------------- paths


def temp_dir_pattern(name: str) -> re.Pattern:
    """Temporary siblings of a prepared data folder `name` (src.data.prepare):
    `.<name>.tmp-XXXXXXXX` while writing, `.<name>.old-XXXXXXXX` while swapping,
    `.<name>.XXXXXXXX` from before they had a tag; XXXXXXXX is tempfile.mkdtemp's suffix."""
    return re.compile(rf"\.{re.escape(name)}\.(?:tmp-|old-)?[a-z0-9_]{{8}}")


def check_source(params: Params) -> None:
    """A local `data.source` must not lie inside the prepared data folder, which the data
    stage replaces, nor inside its temporary copies (symlinks resolved)."""
    source = params.data.source
    if source == "official":
        return
    data = Layout().data.resolve()
    where = f" (from ${SOURCE_ENV_VAR})" if os.environ.get(SOURCE_ENV_VAR) else ""
    path = Path(source).expanduser().resolve()  # as src.data.sources reads it
    temp = temp_dir_pattern(data.name)
    if path.is_relative_to(data) or (
        path.is_relative_to(data.parent)
        and path != data.parent
        and temp.fullmatch(path.relative_to(data.parent).parts[0])
    ):
        raise ConfigError(
            "data.source",
            f"{source!r}{where} lies inside {data} or its temporary copies, which the data "
            "stage replaces; keep the source elsewhere",
        )


def check_device(cfg: TrainConfig, key: str) -> None:
    """`device: cuda` without CUDA is a config error naming `key`.device, not a traceback."""
    if cfg.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key}.device", "is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'"
        )


def resolve_path(path: str | Path) -> Path:
    """Project-relative paths resolve against the project (or DVC) root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def project_root() -> Path:
    """Where params.yaml is read and outputs are written: `DVC_ROOT` when DVC runs the
    stage, the checkout this code is in otherwise. DVC runs `--temp` and queued
    experiments in a temporary copy (<repo>/.dvc/tmp/exps/.../tmpXXXX) but sets `DVC_ROOT`
    to the original repository there: the copy, where the stage runs, is the project."""
    dvc_root = os.environ.get("DVC_ROOT")
    if not dvc_root:
        return PROJECT_ROOT
    temp = Path(dvc_root).resolve().joinpath(*DVC_TEMP_EXPS)
    cwd = Path.cwd().resolve()
    if cwd.is_relative_to(temp):
        for folder in (cwd, *cwd.parents):
            if folder == temp:
                break
            if (folder / ".dvc").is_dir():
                return folder
    return Path(dvc_root)


# Where DVC runs `--temp` and queued experiments: <repo>/.dvc/tmp/exps/standalone/tmpXXXX
# (dvc/repo/experiments/executor/local.py: TempDirExecutor under repo.tmp_dir / "exps").
DVC_TEMP_EXPS = (".dvc", "tmp", "exps")


def repo_root() -> Path:
    """The repository a stage belongs to: `project_root()`, except in DVC's temporary copy
    for an experiment (<repo>/.dvc/tmp/exps/.../tmpXXXX), which is thrown away afterwards;
    then the repository that copy was made from. MLflow runs land in its store."""
    root = project_root().resolve()
    parts = root.parts
    for i in range(len(parts) - len(DVC_TEMP_EXPS), 0, -1):
        if parts[i : i + len(DVC_TEMP_EXPS)] == DVC_TEMP_EXPS:
            return Path(*parts[:i])
    return root


@dataclass(frozen=True)
class Layout:
    """Where the stages read and write: fixed folders under `root` (the project root by
    default). Not params: DVC deletes a stage's declared outs *before* it runs the
    stage's command, so a params value that moved an out could aim that deletion at any
    folder before the stage's own checks ran. dvc.yaml spells these same paths
    literally; tests/test_dvc_deps.py checks the two agree."""

    root: Path = field(default_factory=lambda: project_root())

    @property
    def data(self) -> Path:
        """Prepared arrays + manifest.json: the `download` stage's out."""
        return self.root / "data" / "cifar10"

    @property
    def raw(self) -> Path:
        """Downloaded archives: not an out, so kept across reruns."""
        return self.root / "data" / "raw"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def checkpoints(self) -> Path:
        """Resumable training state and the stages' lock files: never an out."""
        return self.root / "checkpoints"

    def folders(self) -> list[Path]:
        return [self.data, self.raw, self.models, self.reports, self.checkpoints]


def set_param_args(overrides: dict[str, Any]) -> list[str]:
    """Dotted overrides as `dvc exp run` arguments: ["-S", "key=value", ...]."""
    args = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={hydra_value(value)}"]
    return args


def hydra_value(value: Any) -> str:
    """A value in the override syntax of `dvc exp run -S` (Hydra's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][\w.-]*", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value) if isinstance(value, float) else str(value)
