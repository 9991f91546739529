"""The one training loop: every stage and every tuning trial trains through `fit`.

Course semantics, minus the course code's bugs (see shared DESIGN.md):
validation every 1/`validations_per_epoch` epoch; stop when the oldest of the
last `early_stop_count` validation losses is the lowest; the best checkpoint is
restored and evaluated in eval mode; losses and accuracies are per-image means;
augmentation touches the training split only.

An epoch is `n_train // batch_size` full batches: the last partial batch is
dropped, as the course's loader does (one plain-SGD step on a handful of images
throws the model off); evaluation sees every image.

The loop checkpoints at every validation and resumes from a checkpoint written
with the same config, so a killed stage carries on where it stopped and (on CPU)
ends with the same numbers as an uninterrupted run. The checkpoint carries the
early-stopping decision too: a run killed during its final evaluation does not
train on when resumed. Checkpoints hold only tensors and plain containers and are
read with `weights_only=True`; a file that needs unpickling is refused.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from src.artifacts import load_torch, save_torch
from src.config import TrainConfig
from src.errors import CheckpointError, ConfigError, NonFiniteLossError, WeightsError

DRY_RUN_TRAIN_BATCHES = 4
DRY_RUN_EVAL_IMAGES = 256
CHECKPOINT_VERSION = 2  # 2: full batches only, early-stop decision, weights_only

Pipeline = Callable[..., torch.Tensor]  # (x, train, generator) -> model input


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


@dataclass
class FitResult:
    history: list[dict]  # one row per validation
    final: dict[str, float]  # final_{train,val}_* and test_* of the best checkpoint
    best_step: int
    early_stop_step: int | None  # global step at which early stopping fired
    steps: int
    epochs_run: float
    train_time_s: float  # time in training steps (excludes evaluation)
    eval_time_s: float  # validations and the final evaluation
    images_per_s: float  # training images per second
    test_predictions: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    resumed_from_step: int = 0
    final_eval_time_s: float = 0.0  # the part of eval_time_s spent on the final figures


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


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


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    opt = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A per-step scheduler, or None."""
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            opt, step_size=cfg.step_epochs * steps_per_epoch, gamma=cfg.step_gamma
        )
    return None


def should_early_stop(val_losses: list[float], count: int) -> bool:
    """The course's rule: the oldest of the last `count` losses is the lowest of them."""
    if count <= 0 or len(val_losses) < count:
        return False
    window = val_losses[-count:]
    return window[0] == min(window)


def set_train_mode(model: nn.Module) -> None:
    """model.train(), but BatchNorm layers without trainable parameters stay in eval
    mode, so frozen blocks keep their running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a host timer covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pipeline: Pipeline,
    batch_size: int,
    keep_predictions: bool = False,
) -> dict:
    """Per-image mean loss and accuracy in eval mode; optionally the predictions."""
    was_training = model.training
    model.eval()
    device = x.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    predictions = []
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with autocast(device):
            logits = model(pipeline(xb, train=False))
        loss_sum += nn.functional.cross_entropy(logits.float(), yb, reduction="sum")
        pred = logits.argmax(1)
        correct += (pred == yb).sum()
        if keep_predictions:
            predictions.append(pred.cpu())
    if was_training:
        set_train_mode(model)
    n = max(len(y), 1)
    out = {"loss": loss_sum.item() / n, "accuracy": correct.item() / n}
    if keep_predictions:
        out["predictions"] = torch.cat(predictions) if predictions else torch.empty(0)
    return out


def _state_to_cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


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


class Progress:
    """A tqdm bar when tqdm is installed and `enabled`; lines are printed either way."""

    def __init__(self, total: int, desc: str, enabled: bool, **tqdm_kwargs):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, **tqdm_kwargs)
            except ImportError:
                pass

    @property
    def active(self) -> bool:
        return self.bar is not None

    def update(self, n: int, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_step(model: nn.Module, optimizer, loss_fn, x: torch.Tensor, y: torch.Tensor):
    """One optimisation step on a prepared batch; (logits, loss), neither synced."""
    with autocast(x.device):
        logits = model(x)
        loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, loss


def fit(
    model: nn.Module,
    data: TensorSplits,
    cfg: TrainConfig,
    pipeline: Pipeline,
    *,
    seed: int = 0,
    on_validation: Callable[[dict, list[tuple[int, float]]], None] | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_extra: dict | None = None,
    config_key: str = "",
    progress: bool = True,
    name: str = "train",
    params_key: str = "train",
) -> FitResult:
    """Train `model` on `data` (already on its device) and evaluate the best checkpoint.

    `on_validation(row, step_losses)` is called after each validation with the
    history row and the (step, loss) pairs since the last one; it may raise (an
    Optuna pruner does) to stop training. `checkpoint_extra` is stored in each
    checkpoint (a tracking run id, say) and handed back in `checkpoint_extra` of
    the resumed state through `FitResult`-independent `load_checkpoint`.
    `params_key` is where `cfg` sits in params.yaml (`baseline.train`), for errors.
    """
    device = data.train_x.device
    generator = torch.Generator().manual_seed(seed)  # shuffling and augmentation
    torch.manual_seed(seed)  # dropout

    train_x, train_y = data.train_x, data.train_y
    val_x, val_y = data.val_x, data.val_y
    test_x, test_y = data.test_x, data.test_y
    check_train_size(len(train_y), cfg, params_key)
    n_train = train_size(len(train_y), cfg)
    if n_train < len(train_y):
        keep = torch.randperm(len(train_y), generator=generator)[:n_train].to(device)
        train_x, train_y = train_x[keep], train_y[keep]
    if cfg.dry_run:
        val_x, val_y = val_x[:DRY_RUN_EVAL_IMAGES], val_y[:DRY_RUN_EVAL_IMAGES]
        test_x, test_y = test_x[:DRY_RUN_EVAL_IMAGES], test_y[:DRY_RUN_EVAL_IMAGES]
    epochs = 1 if cfg.dry_run else cfg.epochs
    steps_per_epoch = n_train // cfg.batch_size  # full batches: the remainder is dropped
    val_every = max(1, steps_per_epoch // cfg.validations_per_epoch)

    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    history: list[dict] = []
    best = {"loss": math.inf, "state": None, "step": 0}
    global_step, start_epoch, start_batch = 0, 0, 0
    perm = None
    train_time = eval_time = 0.0
    images_done = 0
    early_stop_step = None
    ckpt = load_checkpoint(checkpoint_path, config_key)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        history, best = ckpt["history"], ckpt["best"]
        global_step, start_epoch, start_batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        perm = ckpt["perm"].to(device) if ckpt["perm"] is not None else None
        train_time, eval_time = ckpt["train_time_s"], ckpt["eval_time_s"]
        images_done = ckpt["images_done"]
        early_stop_step = ckpt["early_stop_step"]  # decided: only the final figures remain
        print(f"[{name}] resuming from checkpoint at step {global_step} ({checkpoint_path})")
    resumed_from = global_step

    def save_checkpoint(epoch: int, batch: int, epoch_perm: torch.Tensor | None) -> None:
        if checkpoint_path is None:
            return
        save_torch(
            {
                "version": CHECKPOINT_VERSION,
                "config_key": config_key,
                "model": _state_to_cpu(model.state_dict()),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "best": best,
                "step": global_step,
                "epoch": epoch,
                "batch": batch,
                "perm": epoch_perm.cpu() if epoch_perm is not None else None,
                "train_time_s": train_time,
                "eval_time_s": eval_time,
                "images_done": images_done,
                "early_stop_step": early_stop_step,
                "extra": checkpoint_extra or {},
            },
            Path(checkpoint_path),
        )

    stop = early_stop_step is not None
    # Running sums since the last validation; an epoch-end remainder carries over,
    # as in the course code (validation is every `val_every` global steps).
    step_losses: list[torch.Tensor] = []
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    set_train_mode(model)
    tic = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        if stop:  # resumed after the early stop was decided: only the final figures remain
            break
        if perm is None or start_batch == 0:
            perm = torch.randperm(n_train, generator=generator).to(device)
        bar = Progress(steps_per_epoch, f"{name} epoch {epoch}", progress, leave=False)
        bar.update(start_batch)
        for batch in range(start_batch, steps_per_epoch):
            idx = perm[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]
            xb = pipeline(train_x[idx], train=True, generator=generator)
            yb = train_y[idx]
            logits, loss = train_step(model, optimizer, loss_fn, xb, yb)
            if scheduler is not None:
                scheduler.step()
            global_step += 1
            step_losses.append(loss.detach())
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if bar.active and (batch + 1) % 25 == 0:  # a host sync every 25 steps, if shown
                rate = seen / max(time.perf_counter() - tic, 1e-9)
                bar.update(batch + 1 - bar.bar.n, loss=f"{loss.item():.3f}", img_s=f"{rate:,.0f}")
            if global_step % val_every:
                continue

            # .cpu() waits for the queued steps, so the interval's time includes them
            losses = torch.stack(step_losses).float().cpu()
            interval_time = time.perf_counter() - tic
            train_time += interval_time
            images_done += seen
            if not torch.isfinite(losses).all():
                first_bad = (
                    global_step - len(losses) + 1 + int((~torch.isfinite(losses)).nonzero()[0])
                )
                where = (
                    f"last good checkpoint: {checkpoint_path} (step {history[-1]['step']})"
                    if checkpoint_path and history
                    else "no checkpoint was written"
                )
                raise NonFiniteLossError(
                    f"[{name}] non-finite training loss at step {first_bad}; {where}"
                )
            t_eval = time.perf_counter()
            val = evaluate(model, val_x, val_y, pipeline, cfg.eval_batch_size)
            eval_time += time.perf_counter() - t_eval
            if not math.isfinite(val["loss"]):
                raise NonFiniteLossError(
                    f"[{name}] non-finite validation loss at step {global_step}"
                )
            row = {
                "step": global_step,
                "epoch": global_step / steps_per_epoch,
                "train_loss": losses.mean().item(),
                "train_loss_std": losses.std().item() if len(losses) > 1 else 0.0,
                "train_accuracy": correct.item() / max(seen, 1),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": seen / max(interval_time, 1e-9),
            }
            history.append(row)
            first = global_step - len(losses) + 1
            pairs = [(first + i, v) for i, v in enumerate(losses.tolist())]
            batches_per_s = len(losses) / max(interval_time, 1e-9)
            bar.write(
                f"Epoch: {epoch}, Batches per seconds: {batches_per_s:.2f}, "
                f"Global step: {global_step}, Validation Loss: {val['loss']:.2f}, "
                f"Validation Accuracy: {val['accuracy']:.3f}"
            )
            if val["loss"] < best["loss"]:
                best = {
                    "loss": val["loss"],
                    "state": _state_to_cpu(model.state_dict()),
                    "step": global_step,
                }
            if should_early_stop([r["val_loss"] for r in history], cfg.early_stop_count):
                early_stop_step = global_step
                stop = True
            if on_validation is not None:  # before the checkpoint: a kill between the two
                on_validation(row, pairs)  # repeats these points rather than losing them
            end_of_epoch = batch == steps_per_epoch - 1
            save_checkpoint(
                epoch + 1 if end_of_epoch else epoch,
                0 if end_of_epoch else batch + 1,
                None if end_of_epoch else perm,
            )
            step_losses, correct, seen = [], torch.zeros_like(correct), 0
            tic = time.perf_counter()
            if stop:
                bar.write(f"[{name}] early stop at step {global_step}; best step {best['step']}")
                break
        if bar.active and not stop:
            bar.update(steps_per_epoch - bar.bar.n)
        bar.close()
        start_batch = 0
        perm = None
        if stop:
            break
    if step_losses:  # steps after the last validation
        synchronize(device)
        train_time += time.perf_counter() - tic
        images_done += seen

    if best["state"] is None:  # fewer steps than one validation interval
        best = {"loss": math.inf, "state": _state_to_cpu(model.state_dict()), "step": global_step}
    model.load_state_dict(best["state"])
    t_eval = time.perf_counter()
    final = {}
    test_predictions = torch.empty(0)
    for split, (x, y) in (
        ("train", (train_x, train_y)),
        ("val", (val_x, val_y)),
        ("test", (test_x, test_y)),
    ):
        result = evaluate(
            model, x, y, pipeline, cfg.eval_batch_size, keep_predictions=split == "test"
        )
        # "final_" keeps these apart from the per-validation series of the same split
        prefix = "test" if split == "test" else f"final_{split}"
        final[f"{prefix}_loss"] = result["loss"]
        final[f"{prefix}_accuracy"] = result["accuracy"]
        if split == "test":
            test_predictions = result["predictions"]
    final_eval_time = time.perf_counter() - t_eval
    eval_time += final_eval_time
    return FitResult(
        history=history,
        final=final,
        best_step=best["step"],
        early_stop_step=early_stop_step,
        steps=global_step,
        epochs_run=global_step / steps_per_epoch,
        train_time_s=train_time,
        eval_time_s=eval_time,
        images_per_s=images_done / max(train_time, 1e-9),
        test_predictions=test_predictions,
        resumed_from_step=resumed_from,
        final_eval_time_s=final_eval_time,
    )
