"""Training throughput, side by side: the project's path, a course-style loop, the floor.

    python -m benchmarks.bench --models baseline improved resnet --repeats 5 --resnet-size 64 \\
        --json benchmarks/cpu.json
    python -m benchmarks.bench --eval-epoch baseline --json benchmarks/cpu_eval_epoch_baseline.json

For each model (its stage's section of params.yaml: model, optimizer, batch size,
augmentation), on one device and in one process:

  project    `src.training.loop.fit` itself on a random subset of the prepared training
             split, for a fixed number of steps, validating as configured (on
             `--eval-images` images), checkpointing as a stage does and, when mlflow
             is importable, logging every validation to a real MLflow run in a
             temporary store (`store.use_store`: the project's store is
             untouched). images/s is FitResult's: training steps only (data,
             augmentation, step, loop), evaluation excluded. ResNet goes through
             `src.training.feature_cache.prepare_resnet_training`, so with feature caching on (the
             stage's default) the project trains the head on cached features.
  reference  the course's loop: a Dataset turning each uint8 image into a PIL image
             for torchvision transforms (RandomCrop(32, padding) and
             RandomHorizontalFlip when the stage augments, Resize for ResNet,
             ToTensor, Normalize), a DataLoader with 2 workers, the course's
             per-step `loss.item()`; same model, optimizer, batch size and step.
  floor      the project's training step on one resident, prepared batch: forward,
             backward, optimizer step, no data work.

A warm-up round of every path is run and discarded; then `--repeats` rounds run the
three interleaved, in a rotating order. Figures are medians over repeats; ratios are
medians of the per-round ratios, so a change of machine load between rounds
cancels. CUDA runs synchronise around every timing and use bf16 autocast and
channels_last, as the project does. Needs only torch, torchvision, numpy, pillow
and PyYAML (params.yaml); mlflow is used when importable.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

from src.cifar import IMAGE_SHAPE, IMAGE_SIZE, NUM_CLASSES
from src.cli import guarded
from src.config.layout import Layout, project_root
from src.config.load import PARAMS_FILE, load_params
from src.config.schema import Params, TrainConfig
from src.config.typed import config_hash, to_dict
from src.data.prepare import load_dataset
from src.tracking import runs as tracking
from src.tracking import store
from src.training.augment import input_pipeline
from src.training.device import Placement, resolve_device, synchronize
from src.training.feature_cache import prepare_resnet_training
from src.training.loop import (
    FitResult,
    Pipeline,
    TensorSplits,
    build_optimizer,
    fit,
    set_train_mode,
    train_step,
)
from src.training.models import build_cnn, build_resnet, count_parameters

MODELS = ("baseline", "improved", "resnet")
PATHS = ("floor", "project", "reference")
# Timed steps per measurement when --steps does not say. A shared 2-core CPU takes
# 0.1-0.6 s (baseline), 1.3-3 s (improved) and 0.2-1 s (ResNet head on cached 64 px
# features) per step, depending on its load. Even counts: two validations per fit.
DEFAULT_STEPS = {
    "cpu": {"baseline": 8, "improved": 4, "resnet": 8},
    "cuda": {"baseline": 600, "improved": 300, "resnet": 300},
}
DEFAULT_WARMUP = {"cpu": 1, "cuda": 20}
REFERENCE_WORKERS = 2  # the course's DataLoader


# --------------------------------------------------------------------------- setup


@dataclass
class Prepared:
    """What one measurement trains: the model (or the part `fit` trains), its data,
    config and input pipeline."""

    model: nn.Module
    data: TensorSplits
    cfg: TrainConfig
    pipeline: Pipeline
    info: dict = field(default_factory=dict)


@dataclass
class ModelBench:
    """One stage's model and config; every measurement trains a fresh copy of `model`."""

    name: str
    model: nn.Module  # the template, on the device
    cfg: TrainConfig
    pipeline: Pipeline
    reference_transform: Callable[[Image.Image], torch.Tensor]
    prepare: Callable[[nn.Module, TensorSplits, TrainConfig], Prepared]
    info: dict = field(default_factory=dict)

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.model)


@dataclass
class BenchData:
    images: np.ndarray  # uint8 (N, 32, 32, 3): the training split in host memory
    labels: np.ndarray  # int64 (N,)
    splits: TensorSplits  # on the device; val and test cut to --eval-images
    source: str


def course_transform(cfg: TrainConfig, image_size: int | None) -> Callable:
    """The course's per-image torchvision transforms for this stage's config."""
    steps: list = []
    if cfg.augment.crop_padding:
        steps.append(transforms.RandomCrop(IMAGE_SIZE, padding=cfg.augment.crop_padding))
    if cfg.augment.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    if image_size and image_size != IMAGE_SIZE:
        steps.append(transforms.Resize((image_size, image_size)))
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    return transforms.Compose(steps)


def cnn_bench(params: Params, name: str, device: torch.device) -> ModelBench:
    section = getattr(params, name)
    torch.manual_seed(params.common.seed)
    placement = Placement.for_device(device)  # as the stages decide
    model = placement.place_model(build_cnn(section.model))
    pipeline = input_pipeline(section.train, placement)

    def prepare(model: nn.Module, data: TensorSplits, cfg: TrainConfig) -> Prepared:
        return Prepared(model, data, cfg, pipeline)

    return ModelBench(
        name,
        model,
        section.train,
        pipeline,
        course_transform(section.train, None),
        prepare,
        {"image_size": IMAGE_SIZE},
    )


def resnet_bench(
    params: Params, device: torch.device, image_size: int, cache: bool | None
) -> ModelBench:
    """ResNet18 as the stage builds it, at `image_size`, with random weights (the
    speed of pretrained weights is the same; no download)."""
    section = dataclasses.replace(params.resnet, weights="none", image_size=image_size)
    if cache is not None:
        section = dataclasses.replace(section, cache_features=cache)
    torch.manual_seed(params.common.seed)
    placement = Placement.for_device(device)  # as the stages decide
    model = placement.place_model(build_resnet(section))
    pipeline = input_pipeline(section.train, placement, image_size)

    def prepare(model: nn.Module, data: TensorSplits, cfg: TrainConfig) -> Prepared:
        stage_cfg = dataclasses.replace(section, train=cfg)
        training = prepare_resnet_training(model, stage_cfg, data, pipeline, params.common.seed)
        n_cached = sum(len(training.data.split(s)[1]) for s in ("train", "val", "test"))
        info = {"features_cached": training.cached, "note": training.note}
        if training.cached:
            info["cache_time_s"] = training.cache_time_s
            info["cache_images_per_s"] = n_cached / max(training.cache_time_s, 1e-9)
        return Prepared(
            training.fit_model, training.data, training.train_cfg, training.pipeline, info
        )

    info = {
        "image_size": image_size,
        "weights": "none (random init; same speed as pretrained)",
        "trainable": list(section.trainable),
        "cache_features": section.cache_features,
    }
    return ModelBench(
        "resnet",
        model,
        section.train,
        pipeline,
        course_transform(section.train, image_size),
        prepare,
        info,
    )


def load_bench_data(
    data_dir: Path | None, device: torch.device, eval_images: int, synthetic: int = 0
) -> BenchData:
    """The prepared data set (or `synthetic` random images), on `device`."""
    if synthetic:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(synthetic, *IMAGE_SHAPE), dtype=np.uint8)
        labels = rng.integers(0, NUM_CLASSES, size=synthetic).astype(np.int64)
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        splits = TensorSplits(
            x, y, x[:eval_images], y[:eval_images], x[:eval_images], y[:eval_images]
        )
        return BenchData(images, labels, splits.to(device), f"synthetic ({synthetic} images)")
    dataset = load_dataset(data_dir)
    splits = TensorSplits.from_dataset(dataset).to(device)
    cut = TensorSplits(
        splits.train_x,
        splits.train_y,
        splits.val_x[:eval_images],
        splits.val_y[:eval_images],
        splits.test_x[:eval_images],
        splits.test_y[:eval_images],
    )
    return BenchData(dataset.train.images, dataset.train.labels, cut, str(data_dir))


# --------------------------------------------------------------------------- the three paths


def _train_step(model, optimizer, loss_fn, x, y, device) -> torch.Tensor:
    """The step `fit` takes, without the data work."""
    return train_step(model, optimizer, loss_fn, x, y)[1]


def time_floor(bench: ModelBench, data: BenchData, steps: int, warmup: int) -> dict:
    """Forward, backward and step on one resident, prepared batch."""
    device = data.splits.train_x.device
    bs = bench.cfg.batch_size
    cfg = dataclasses.replace(bench.cfg, subset=bs, epochs=1)
    prepared = bench.prepare(bench.fresh(), data.splits, cfg)
    with torch.no_grad():
        x = prepared.pipeline(prepared.data.train_x[:bs], train=False)
    y = prepared.data.train_y[:bs]
    model = prepared.model
    optimizer = build_optimizer(model.parameters(), prepared.cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=prepared.cfg.label_smoothing)
    set_train_mode(model)
    for _ in range(warmup):
        _train_step(model, optimizer, loss_fn, x, y, device)
    synchronize(device)
    tic = time.perf_counter()
    for _ in range(steps):
        _train_step(model, optimizer, loss_fn, x, y, device)
    synchronize(device)
    elapsed = time.perf_counter() - tic
    return {"images_per_s": steps * len(y) / elapsed, "time_s": elapsed, "steps": steps}


class CourseDataset(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: uint8 array → PIL → transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def time_reference(
    bench: ModelBench, data: BenchData, steps: int, warmup: int, workers: int, seed: int
) -> dict:
    """The course's loop: per-image PIL transforms in DataLoader workers, the batch
    copied to the device, the step, and the course's per-step `loss.item()`."""
    device = data.splits.train_x.device
    bs = bench.cfg.batch_size
    need = (warmup + steps) * bs
    if len(data.labels) < need:
        raise ValueError(f"reference loop needs {need} training images, have {len(data.labels)}")
    loader = torch.utils.data.DataLoader(
        CourseDataset(data.images, data.labels, bench.reference_transform),
        batch_size=bs,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    model = bench.fresh()
    optimizer = build_optimizer(model.parameters(), bench.cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=bench.cfg.label_smoothing)
    set_train_mode(model)
    placement = Placement.for_device(device)  # as the project runs
    batches = iter(loader)  # workers start here; their start-up falls in the warm-up
    tic = None
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            tic = time.perf_counter()
        x, y = next(batches)
        x = placement.memory_format(x.to(device))
        y = y.to(device)
        _train_step(model, optimizer, loss_fn, x, y, device).item()
    synchronize(device)
    elapsed = time.perf_counter() - tic
    del batches  # stops the workers
    return {"images_per_s": steps * bs / elapsed, "time_s": elapsed, "steps": steps}


@contextlib.contextmanager
def _bench_run(name: str, cfg: TrainConfig, work_dir: Path, track: bool) -> Iterator[tracking.Run]:
    """A real MLflow run in a temporary SQLite store under `work_dir` (or, without
    `track`, the stand-in that logs nothing); the project's own store is never touched."""
    if not track:
        yield tracking.Run(None)
        return
    db = work_dir / "mlflow.db"  # artifacts beside it in work_dir/mlruns/ (src.tracking.store)
    db.parent.mkdir(parents=True, exist_ok=True)
    with (
        store.use_store(f"sqlite:///{db}"),
        tracking.stage_run(f"bench-{name}", {"train": cfg}, experiment="bench") as run,
    ):
        yield run


def time_project(
    bench: ModelBench,
    data: BenchData,
    steps: int,
    seed: int,
    work_dir: Path,
    track: bool,
    checkpoint: bool = True,
    cfg: TrainConfig | None = None,
) -> dict:
    """`fit` as a stage calls it: `steps` steps on a random subset of that many
    batches (one epoch of it, so validations every half of it as configured), a
    checkpoint at each validation and, with `track`, a real MLflow run that logs
    every validation."""
    device = data.splits.train_x.device
    cfg = cfg or dataclasses.replace(bench.cfg, subset=steps * bench.cfg.batch_size, epochs=1)
    tic = time.perf_counter()
    prepared = bench.prepare(bench.fresh(), data.splits, cfg)
    synchronize(device)
    prepare_s = time.perf_counter() - tic
    ckpt = work_dir / f"checkpoint-{bench.name}-{time.monotonic_ns()}.pt" if checkpoint else None
    tic = time.perf_counter()
    with _bench_run(bench.name, prepared.cfg, work_dir, track) as run:
        opened = time.perf_counter()
        log_validation = tracking.ValidationLogger(run)
        result: FitResult = fit(
            prepared.model,
            prepared.data,
            prepared.cfg,
            prepared.pipeline,
            seed=seed,
            on_validation=log_validation,
            checkpoint_path=ckpt,
            config_key=f"bench-{ckpt}",
            progress=False,
            name=f"bench-{bench.name}",
        )
        fitted = time.perf_counter()
    closed = time.perf_counter()
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    wall = fitted - opened
    tracking_s = log_validation.seconds
    other = wall - result.train_time_s - result.eval_time_s - tracking_s
    validations = len(result.history)
    images = result.images_per_s * result.train_time_s
    return {
        "images_per_s": result.images_per_s,
        "images_per_s_excluding_eval": images / max(wall - result.eval_time_s, 1e-9),
        "steps": result.steps,
        "validations": validations,
        "fit_wall_s": wall,
        "train_s": result.train_time_s,
        "eval_s": result.eval_time_s,
        "final_eval_s": result.final_eval_time_s,
        "tracking_s": tracking_s,
        "other_s": other,  # checkpoints, best-state copies, loop set-up
        "tracking_run_open_close_s": (opened - tic) + (closed - fitted),
        "tracking_share": tracking_s / wall,
        "eval_share": result.eval_time_s / wall,
        "other_share": other / wall,
        "tracking_per_validation_s": tracking_s / validations if validations else 0.0,
        "other_per_validation_s": other / validations if validations else 0.0,
        "prepare_s": prepare_s,
        "tracked": run.active,
        **prepared.info,
        "final": result.final,
    }


# --------------------------------------------------------------------------- the benchmark


def _median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    values = [v for v in values if math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def _best(rows: list[dict]) -> float:
    """The fastest round: other jobs on a shared machine only ever slow a path down."""
    values = [r["images_per_s"] for r in rows if math.isfinite(r["images_per_s"])]
    return max(values) if values else math.nan


def bench_model(
    bench: ModelBench,
    data: BenchData,
    *,
    steps: int,
    warmup: int,
    repeats: int,
    seed: int,
    work_dir: Path,
    track: bool,
    workers: int = REFERENCE_WORKERS,
    log: Callable[[str], None] = print,
) -> dict:
    """Warm-up round (discarded), then `repeats` interleaved rounds of the three paths."""

    def measure(path: str, n: int) -> dict:
        try:
            if path == "floor":
                return time_floor(bench, data, n, warmup)
            if path == "project":
                return time_project(bench, data, n, seed, work_dir, track)
            return time_reference(bench, data, n, warmup, workers, seed)
        except Exception as exc:  # one broken path must not lose the others' figures
            log(f"[bench] {bench.name} {path} failed: {type(exc).__name__}: {exc}")
            return {"images_per_s": math.nan, "error": f"{type(exc).__name__}: {exc}"}

    for path in PATHS:
        measure(path, max(2, warmup))
    rounds: list[dict[str, dict]] = []
    for r in range(repeats):
        order = PATHS[r % 3 :] + PATHS[: r % 3]
        row = {"loadavg": list(os.getloadavg())}
        for path in order:
            row[path] = measure(path, steps)
        rounds.append(row)
        log(
            f"[bench] {bench.name} round {r + 1}/{repeats}: "
            + ", ".join(f"{p} {row[p]['images_per_s']:,.1f}" for p in PATHS)
            + " img/s"
        )

    def ratio(a: str, b: str) -> float:
        values = [
            row[a]["images_per_s"] / row[b]["images_per_s"]
            for row in rounds
            if row[b]["images_per_s"] > 0
        ]
        values = [v for v in values if math.isfinite(v)]
        return statistics.median(values) if values else math.nan

    best = {path: _best([row[path] for row in rounds]) for path in PATHS}

    project_runs = [row["project"] for row in rounds]
    project = {
        key: _median(project_runs, key)
        for key in (
            "images_per_s",
            "images_per_s_excluding_eval",
            "tracking_share",
            "eval_share",
            "other_share",
            "tracking_per_validation_s",
            "other_per_validation_s",
            "tracking_run_open_close_s",
            "cache_images_per_s",
        )
        if any(key in run for run in project_runs)
    }
    project["best_images_per_s"] = best["project"]
    project["tracked"] = any(run.get("tracked") for run in project_runs)
    # The stage validates every `val_every` steps of the full epoch; per-validation
    # costs measured here, at that cadence, against the measured training rate.
    full_epoch = len(data.labels)
    per_epoch_s = full_epoch / project["images_per_s"] if project["images_per_s"] > 0 else math.nan
    validations_per_epoch = bench.cfg.validations_per_epoch
    project["tracking_share_at_stage_cadence"] = (
        validations_per_epoch * project["tracking_per_validation_s"] / per_epoch_s
        if "tracking_per_validation_s" in project
        else math.nan
    )
    model = bench.model
    return {
        "batch_size": bench.cfg.batch_size,
        "optimizer": bench.cfg.optimizer,
        "augment": to_dict(bench.cfg.augment),
        "n_parameters": count_parameters(model),
        "n_trainable_parameters": count_parameters(model, trainable_only=True),
        "steps": steps,
        "warmup_steps": warmup,
        "repeats": repeats,
        **bench.info,
        "floor": {
            "images_per_s": _median([r["floor"] for r in rounds], "images_per_s"),
            "best_images_per_s": best["floor"],
        },
        "reference": {
            "images_per_s": _median([r["reference"] for r in rounds], "images_per_s"),
            "best_images_per_s": best["reference"],
            "workers": workers,
        },
        "project": project,
        # medians of the per-round ratios, and the ratios of the fastest rounds
        "ratios": {
            "project_over_floor": ratio("project", "floor"),
            "project_over_reference": ratio("project", "reference"),
            "reference_over_floor": ratio("reference", "floor"),
            "best_project_over_floor": best["project"] / best["floor"],
            "best_project_over_reference": best["project"] / best["reference"],
        },
        "rounds": rounds,
    }


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "hostname": platform.node(),
    }
    return info


def measure_eval_epoch(bench: ModelBench, data: BenchData, seed: int, work_dir: Path) -> dict:
    """One full epoch of the stage on all of `data` (load it uncut), validating as
    configured, then the final figures; tracking off, checkpoints on (as in a
    stage). The evaluation share of that epoch and the parts it is made of."""
    cfg = dataclasses.replace(bench.cfg, epochs=1, subset=0)
    run = time_project(bench, data, 0, seed, work_dir, track=False, cfg=cfg)
    validation_s = run["eval_s"] - run["final_eval_s"]
    total = run["fit_wall_s"]
    epochs = bench.cfg.epochs
    # A stage of `epochs` epochs repeats the per-epoch part and evaluates once at the end.
    stage_total = epochs * (total - run["final_eval_s"]) + run["final_eval_s"]
    return {
        "model": bench.name,
        "steps": run["steps"],
        "validations": run["validations"],
        "images_per_s": run["images_per_s"],
        "train_s": run["train_s"],
        "validation_s": validation_s,
        "final_eval_s": run["final_eval_s"],
        "other_s": run["other_s"],
        "fit_wall_s": total,
        "eval_share_one_epoch": run["eval_s"] / total,
        "validation_share": validation_s / (total - run["final_eval_s"]),
        f"eval_share_{epochs}_epochs": (epochs * validation_s + run["final_eval_s"]) / stage_total,
        "final": run["final"],
    }


# --------------------------------------------------------------------------- CLI


def parse_steps(tokens: list[str] | None, device_type: str) -> dict[str, int]:
    """`--steps 8` (every model) or `--steps baseline=8 improved=3`."""
    steps = dict(DEFAULT_STEPS["cuda" if device_type == "cuda" else "cpu"])
    for token in tokens or []:
        name, _, value = token.rpartition("=")
        if name and name not in MODELS:
            raise SystemExit(f"--steps: unknown model {name!r}; choose from {list(MODELS)}")
        try:
            n = int(value)
        except ValueError:
            raise SystemExit(f"--steps: expected N or MODEL=N, got {token!r}") from None
        if n < 2:
            raise SystemExit("--steps: at least 2 (fit validates twice per run)")
        if name:
            steps[name] = n
        else:
            steps = dict.fromkeys(steps, n)
    return steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Training images/s: the project's path, a course-style DataLoader loop "
        "and the compute floor, per model, interleaved; medians of several rounds.",
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--steps",
        nargs="+",
        metavar="[MODEL=]N",
        help="timed steps per measurement, for all models or per model "
        f"(default cpu {DEFAULT_STEPS['cpu']}, cuda {DEFAULT_STEPS['cuda']})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps before each floor/reference timing"
    )
    parser.add_argument("--resnet-size", type=int, default=64, help="ResNet input size (px)")
    parser.add_argument(
        "--resnet-cache",
        choices=("params", "on", "off"),
        default="params",
        help="ResNet feature caching: as params.yaml says, or forced",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--tracking",
        choices=("auto", "on", "off"),
        default="auto",
        help="MLflow logging in the project path (auto: when mlflow is importable)",
    )
    parser.add_argument("--workers", type=int, default=REFERENCE_WORKERS, help="reference loop")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--eval-images", type=int, default=128, help="val/test images per fit")
    parser.add_argument(
        "--eval-epoch",
        choices=MODELS,
        help="instead: one full epoch of this stage on the whole data set; the evaluation share",
    )
    parser.add_argument("--data", type=Path, help="prepared data set (default: params' path)")
    parser.add_argument("--synthetic", type=int, default=0, help="N random images instead")
    parser.add_argument("--params", type=Path, help="params file (default: params.yaml)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


@guarded
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    load_start = list(os.getloadavg())
    started = datetime.now(UTC)
    params = load_params(args.params)
    device = resolve_device(args.device)
    steps = parse_steps(args.steps, device.type)
    warmup = args.warmup if args.warmup is not None else DEFAULT_WARMUP[device.type]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tracking == "auto":
        track = store.tracking_enabled()
    else:
        track = args.tracking == "on"
        if track and not store.tracking_enabled():
            raise SystemExit(
                "--tracking on: mlflow is not importable (or CIFAR_MLOPS_TRACKING=off)"
            )
    data_dir = args.data or Layout().data
    eval_images = None if args.eval_epoch else args.eval_images
    data = load_bench_data(
        None if args.synthetic else data_dir, device, eval_images or 10**9, args.synthetic
    )
    cache = {"on": True, "off": False}.get(args.resnet_cache)

    def make(name: str) -> ModelBench:
        if name == "resnet":
            return resnet_bench(params, device, args.resnet_size, cache)
        return cnn_bench(params, name, device)

    result: dict = {
        "command": "python -m benchmarks.bench "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "data": data.source,
        # what was benchmarked: params.yaml may be edited (a `dvc exp run -S`) meanwhile
        "params": {
            "file": str(args.params or project_root() / PARAMS_FILE),
            "profile": params.profile,
            "hashes": {name: config_hash(getattr(params, name)) for name in MODELS},
        },
        "loadavg_start": load_start,
    }
    if params.profile != "full":
        print(f"[bench] note: params profile {params.profile!r}, not the full-size models")
    with tempfile.TemporaryDirectory(prefix="cifar-bench-") as tmp:
        if args.eval_epoch:
            bench = make(args.eval_epoch)
            print(f"[bench] one full epoch of {args.eval_epoch} on {device} ...", flush=True)
            result["eval_epoch"] = measure_eval_epoch(bench, data, params.common.seed, Path(tmp))
        else:
            result["tracking"] = track
            result["models"] = {}
            for name in args.models:
                bench = make(name)
                result["models"][name] = bench_model(
                    bench,
                    data,
                    steps=steps[name],
                    warmup=warmup,
                    repeats=args.repeats,
                    seed=params.common.seed,
                    work_dir=Path(tmp),
                    track=track,
                    workers=args.workers,
                )
    result["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = (datetime.now(UTC) - started).total_seconds()
    print(format_summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"[bench] wrote {args.json}")
    return result


def _loads(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def format_summary(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
        + (f", {m['gpu']}" if m["gpu"] else "")
        + f"; torch {m['torch']}; params profile {result['params']['profile']}"
        + f"; load {_loads(result['loadavg_start'])} -> {_loads(result['loadavg_end'])}"
    ]
    if "eval_epoch" in result:
        e = result["eval_epoch"]
        lines.append(
            f"{e['model']}: one epoch, {e['steps']} steps at {e['images_per_s']:,.1f} img/s; "
            f"train {e['train_s']:.1f} s, {e['validations']} validations "
            f"{e['validation_s']:.1f} s, "
            f"final evaluation {e['final_eval_s']:.1f} s, other {e['other_s']:.1f} s; "
            f"eval share {e['eval_share_one_epoch']:.1%} of the epoch"
        )
        return "\n".join(lines)
    header = (
        f"{'model':<9}{'batch':>6}{'floor':>11}{'project':>11}{'reference':>11}"
        f"{'proj/floor':>11}{'proj/ref':>9}{'tracking':>10}"
    )
    lines += [header + "   (images/s, medians; [fastest rounds])", "-" * len(header)]
    for name, r in result["models"].items():
        p = r["project"]
        lines.append(
            f"{name:<9}{r['batch_size']:>6}{r['floor']['images_per_s']:>11,.1f}"
            f"{p['images_per_s']:>11,.1f}{r['reference']['images_per_s']:>11,.1f}"
            f"{r['ratios']['project_over_floor']:>11.3f}"
            f"{r['ratios']['project_over_reference']:>9.3f}"
            f"{p.get('tracking_share', math.nan):>10.2%}"
        )
        lines.append(
            f"{'':<15}{r['floor']['best_images_per_s']:>11,.1f}{p['best_images_per_s']:>11,.1f}"
            f"{r['reference']['best_images_per_s']:>11,.1f}"
            f"{r['ratios']['best_project_over_floor']:>11.3f}"
            f"{r['ratios']['best_project_over_reference']:>9.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
