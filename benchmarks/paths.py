"""The benchmark's set-up and its three timed paths (`benchmarks.bench`): floor,
project, reference.

Each measurement trains a fresh copy of the stage's network as its recipe
(`src.training.recipe`) builds it, for a fixed number of steps, on data the project's
loader (`src.training.splits.load_splits`) put on the device.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from src.config.schema import Params, TrainConfig
from src.config.stages import get_stage
from src.tracking import store
from src.tracking.runs import Run, ValidationLogger, stage_run
from src.training.device import Placement, synchronize
from src.training.loop import FitResult, build_optimizer
from src.training.numerics_probe import Variant
from src.training.recipe import StageNetwork, StageRecipe, build_stage, fit_recipe, prepare_fit
from src.training.splits import TensorSplits, load_splits
from src.training.steps import set_train_mode, train_step


@dataclass
class ModelBench:
    """One stage's network and config; every measurement trains a fresh copy of it."""

    net: StageNetwork  # the template, on the device
    reference_transform: Callable[[Image.Image], torch.Tensor]
    seed: int
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.net.stage.name

    @property
    def cfg(self) -> TrainConfig:
        return self.net.section.train

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.net.model)

    def prepare(self, data: TensorSplits, cfg: TrainConfig) -> tuple[StageRecipe, dict]:
        """`fit`'s inputs for a fresh copy, as the stage prepares them (a ResNet's feature
        cache included), and what the preparation reports (the cache's time)."""
        net = dataclasses.replace(self.net, model=self.fresh())
        recipe = prepare_fit(net, data, seed=self.seed, train_cfg=cfg)
        if not recipe.metrics:  # nothing prepared beyond the network
            return recipe, {}
        info = {"features_cached": bool(recipe.metrics["features_cached"])}
        info["note"] = recipe.tags["feature_cache"]
        if info["features_cached"]:
            n_cached = sum(len(recipe.data.split(s)[1]) for s in ("train", "val", "test"))
            info["cache_time_s"] = seconds = recipe.metrics["feature_cache_time_s"]
            info["cache_images_per_s"] = n_cached / max(seconds, 1e-9)
        return recipe, info


@dataclass
class BenchData:
    images: np.ndarray  # uint8 (N, 32, 32, 3): the training split in host memory
    labels: np.ndarray  # int64 (N,)
    splits: TensorSplits  # on the device; val and test cut to --eval-images
    source: str


def course_transform(cfg: TrainConfig, image_size: int) -> Callable:
    """The course's per-image torchvision transforms for this stage's config."""
    steps: list = []
    if cfg.augment.crop_padding:
        steps.append(transforms.RandomCrop(32, padding=cfg.augment.crop_padding))
    if cfg.augment.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    if image_size != 32:
        steps.append(transforms.Resize((image_size, image_size)))
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    return transforms.Compose(steps)


def make_bench(
    params: Params,
    name: str,
    device: torch.device,
    resnet_size: int,
    cache: bool | None,
    placement: Placement | None = None,
) -> ModelBench:
    """The stage's network as its recipe builds it, placed as the stages decide
    (`common.precision`) unless `placement` says otherwise. The ResNet at `resnet_size`
    px with random weights (the speed of pretrained weights is the same; no download),
    its feature caching as params.yaml says or `cache` forces."""
    stage, section, info = get_stage(name), getattr(params, name), {}
    if stage.kind == "transfer":
        section = dataclasses.replace(section, weights="none", image_size=resnet_size)
        if cache is not None:
            section = dataclasses.replace(section, cache_features=cache)
        info = {
            "backbone": section.backbone,
            "weights": "none (random init; same speed as pretrained)",
            "trainable": list(section.trainable),
            "cache_features": section.cache_features,
        }
    seed = params.common.seed
    placement = placement or Placement.for_device(device, precision=params.common.precision)
    net = build_stage(stage, section, placement, seed)
    size = net.pipeline.image_size
    transform = course_transform(section.train, size)
    return ModelBench(net, transform, seed, {"image_size": size, **info})


def load_bench_data(
    data_dir: Path, device: torch.device, eval_images: int | None, synthetic: int = 0
) -> BenchData:
    """The prepared data set (or `synthetic` random images) on `device`, validation and
    test cut to `eval_images` (None: all)."""
    if synthetic:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(synthetic, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=synthetic).astype(np.int64)
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        splits = TensorSplits(x, y, x, y, x, y).cut_eval(eval_images).to(device)
        return BenchData(images, labels, splits, f"synthetic ({synthetic} images)")
    dataset, splits = load_splits(device, data_dir=data_dir, user="the benchmark")
    train = dataset.train
    return BenchData(train.images, train.labels, splits.cut_eval(eval_images), str(data_dir))


def variant_name(placement: Placement) -> str:
    """The numerics a placement runs, as the benchmark names them ("bf16+cl", ...)."""
    return Variant(placement.bf16, placement.channels_last).name


def time_floor(
    bench: ModelBench, data: BenchData, steps: int, warmup: int, compiled: bool = False
) -> dict:
    """Forward, backward and step on one resident, prepared batch, in the bench's
    placement (`compiled`: the network through torch.compile)."""
    device = data.splits.train_x.device
    bs = bench.cfg.batch_size
    prepared, _ = bench.prepare(data.splits, dataclasses.replace(bench.cfg, subset=bs, epochs=1))
    with torch.no_grad():
        x = prepared.pipeline(prepared.data.train_x[:bs], train=False)
    y = prepared.data.train_y[:bs]
    model, placement = prepared.fit_model, prepared.placement
    optimizer = build_optimizer(model.parameters(), prepared.train_cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=prepared.train_cfg.label_smoothing)
    set_train_mode(model)
    step_model = torch.compile(model) if compiled else model
    for _ in range(warmup):
        train_step(step_model, optimizer, loss_fn, x, y, placement)
    synchronize(device)
    tic = time.perf_counter()
    for _ in range(steps):
        train_step(step_model, optimizer, loss_fn, x, y, placement)
    synchronize(device)
    elapsed = time.perf_counter() - tic
    return {
        "images_per_s": steps * len(y) / elapsed,
        "time_s": elapsed,
        "steps": steps,
        "variant": variant_name(placement),
    }


class CourseDataset(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: uint8 array → PIL → transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def time_reference(
    bench: ModelBench, data: BenchData, steps: int, warmup: int, workers: int
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
        generator=torch.Generator().manual_seed(bench.seed),
    )
    model = bench.fresh()
    optimizer = build_optimizer(model.parameters(), bench.cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=bench.cfg.label_smoothing)
    set_train_mode(model)
    placement = bench.net.placement  # as the project runs
    batches = iter(loader)  # workers start here; their start-up falls in the warm-up
    tic = None
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            tic = time.perf_counter()
        x, y = next(batches)
        x = placement.memory_format(x.to(device))
        train_step(model, optimizer, loss_fn, x, y.to(device), placement)[1].item()
    synchronize(device)
    elapsed = time.perf_counter() - tic
    del batches  # stops the workers
    return {"images_per_s": steps * bs / elapsed, "time_s": elapsed, "steps": steps}


@contextlib.contextmanager
def _bench_run(name: str, cfg: TrainConfig, work_dir: Path, track: bool) -> Iterator[Run]:
    """A real MLflow run in a temporary SQLite store under `work_dir` (or, without
    `track`, the stand-in that logs nothing); the project's own store is never touched."""
    if not track:
        yield Run(None)
        return
    db = work_dir / "mlflow.db"  # artifacts beside it in work_dir/mlruns/ (src.tracking.store)
    db.parent.mkdir(parents=True, exist_ok=True)
    with (
        store.use_store(f"sqlite:///{db}"),
        stage_run(f"bench-{name}", {"train": cfg}, experiment="bench") as run,
    ):
        yield run


def time_project(
    bench: ModelBench,
    data: BenchData,
    steps: int,
    work_dir: Path,
    track: bool,
    cfg: TrainConfig | None = None,
) -> dict:
    """`fit` as a stage calls it: `steps` steps on a random subset of that many
    batches (one epoch of it, so validations every half of it as configured), a
    checkpoint at each validation and, with `track`, a real MLflow run that logs
    every validation."""
    device = data.splits.train_x.device
    cfg = cfg or dataclasses.replace(bench.cfg, subset=steps * bench.cfg.batch_size, epochs=1)
    tic = time.perf_counter()
    prepared, info = bench.prepare(data.splits, cfg)
    synchronize(device)
    prepare_s = time.perf_counter() - tic
    ckpt = work_dir / f"checkpoint-{bench.name}-{time.monotonic_ns()}.pt"
    tic = time.perf_counter()
    with _bench_run(bench.name, prepared.train_cfg, work_dir, track) as run:
        opened = time.perf_counter()
        log_validation = ValidationLogger(run)
        result: FitResult = fit_recipe(
            prepared,
            seed=bench.seed,
            on_validation=log_validation,
            checkpoint_path=ckpt,
            config_key=f"bench-{ckpt}",
            progress=False,
            name=f"bench-{bench.name}",
        )
        fitted = time.perf_counter()
    closed = time.perf_counter()
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
        **info,
        "final": result.final,
    }


def measure_eval_epoch(bench: ModelBench, data: BenchData, work_dir: Path) -> dict:
    """One full epoch of the stage on all of `data` (load it uncut), validating as
    configured, then the final figures; tracking off, checkpoints on (as in a
    stage). The evaluation share of that epoch and the parts it is made of."""
    cfg = dataclasses.replace(bench.cfg, epochs=1, subset=0)
    run = time_project(bench, data, 0, work_dir, track=False, cfg=cfg)
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
