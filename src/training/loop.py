"""The one training loop: every stage and every tuning trial trains through `fit`.

Course semantics, minus the course code's bugs:
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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from src.config.schema import TrainConfig
from src.runtime.errors import NonFiniteLossError
from src.runtime.progress import Progress
from src.training.augment import Pipeline
from src.training.checkpoint import TrainState, load_checkpoint, state_to_cpu
from src.training.device import Placement, synchronize
from src.training.splits import TensorSplits, check_train_size, draw_budget
from src.training.steps import evaluate, set_train_mode, train_step


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
    started_at: float = 0.0  # time.time() when the first training step began


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


class _Interval:
    """Running sums of the training steps since the last validation (on the device:
    no host sync per step). An epoch-end remainder carries over, as in the course
    code: validation is every `val_every` global steps."""

    def __init__(self, device: torch.device):
        self.losses: list[torch.Tensor] = []
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.seen = 0
        self.tic = time.perf_counter()

    def add(self, logits: torch.Tensor, loss: torch.Tensor, y: torch.Tensor) -> None:
        self.losses.append(loss.detach())
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)


@dataclass
class _Loop:
    """One `fit` call: what stays fixed while it trains."""

    data: TensorSplits  # cut to the budget
    cfg: TrainConfig
    pipeline: Pipeline
    placement: Placement
    loss_fn: nn.Module
    steps_per_epoch: int
    val_every: int
    on_validation: Callable[[dict, list[tuple[int, float]]], None] | None
    checkpoint_path: Path | None
    checkpoint_extra: dict
    config_key: str
    progress: bool
    name: str

    def train_one_epoch(self, state: TrainState, interval: _Interval) -> _Interval:
        """Train from `state.batch` to the end of `state.epoch` (or the early stop),
        validating every `val_every` steps; returns the sums since the last validation."""
        epoch, cfg = state.epoch, self.cfg
        if state.perm is None or state.batch == 0:
            state.perm = torch.randperm(len(self.data.train_y), generator=state.generator)
            state.perm = state.perm.to(self.placement.device)
        bar = Progress(
            self.steps_per_epoch, f"{self.name} epoch {epoch}", self.progress, leave=False
        )
        bar.update(state.batch)
        for batch in range(state.batch, self.steps_per_epoch):
            idx = state.perm[batch * cfg.batch_size : (batch + 1) * cfg.batch_size]
            xb = self.pipeline(self.data.train_x[idx], train=True, generator=state.generator)
            yb = self.data.train_y[idx]
            logits, loss = train_step(
                state.model, state.optimizer, self.loss_fn, xb, yb, self.placement
            )
            if state.scheduler is not None:
                state.scheduler.step()
            state.step += 1
            interval.add(logits, loss, yb)
            if bar.active and (batch + 1) % 25 == 0:  # a host sync every 25 steps, if shown
                rate = interval.seen / max(time.perf_counter() - interval.tic, 1e-9)
                bar.update(batch + 1 - bar.bar.n, loss=f"{loss.item():.3f}", img_s=f"{rate:,.0f}")
            if state.step % self.val_every:
                continue
            end_of_epoch = batch == self.steps_per_epoch - 1
            # where a resumed run carries on
            state.epoch, state.batch = (epoch + 1, 0) if end_of_epoch else (epoch, batch + 1)
            self.validate(state, interval, epoch, bar)
            if end_of_epoch:
                state.perm = None
            self.save_checkpoint(state)
            interval = _Interval(self.placement.device)
            if state.early_stop_step is not None:
                bar.write(
                    f"[{self.name}] early stop at step {state.step}; best step {state.best['step']}"
                )
                break
        if bar.active and state.early_stop_step is None:
            bar.update(self.steps_per_epoch - bar.bar.n)
        bar.close()
        state.epoch, state.batch, state.perm = epoch + 1, 0, None
        return interval

    def validate(self, state: TrainState, interval: _Interval, epoch: int, bar: Progress) -> None:
        """The validation row of the interval: history, best state, early stop, callback."""
        losses = torch.stack(interval.losses).float().cpu()  # waits for the queued steps
        interval_time = time.perf_counter() - interval.tic
        state.train_time_s += interval_time
        state.images_done += interval.seen
        if not torch.isfinite(losses).all():
            first_bad = state.step - len(losses) + 1 + int((~torch.isfinite(losses)).nonzero()[0])
            where = (
                f"last good checkpoint: {self.checkpoint_path} (step {state.history[-1]['step']})"
                if self.checkpoint_path and state.history
                else "no checkpoint was written"
            )
            raise NonFiniteLossError(
                f"[{self.name}] non-finite training loss at step {first_bad}; {where}"
            )
        t_eval = time.perf_counter()
        val = evaluate(
            state.model,
            self.data.val_x,
            self.data.val_y,
            self.pipeline,
            self.cfg.eval_batch_size,
            placement=self.placement,
        )
        state.eval_time_s += time.perf_counter() - t_eval
        if not math.isfinite(val["loss"]):
            raise NonFiniteLossError(
                f"[{self.name}] non-finite validation loss at step {state.step}"
            )
        row = {
            "step": state.step,
            "epoch": state.step / self.steps_per_epoch,
            "train_loss": losses.mean().item(),
            "train_loss_std": losses.std().item() if len(losses) > 1 else 0.0,
            "train_accuracy": interval.correct.item() / max(interval.seen, 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": state.optimizer.param_groups[0]["lr"],
            "images_per_s": interval.seen / max(interval_time, 1e-9),
        }
        state.history.append(row)
        first = state.step - len(losses) + 1
        pairs = [(first + i, v) for i, v in enumerate(losses.tolist())]
        bar.write(
            f"Epoch: {epoch}, Batches per seconds: {len(losses) / max(interval_time, 1e-9):.2f}, "
            f"Global step: {state.step}, Validation Loss: {val['loss']:.2f}, "
            f"Validation Accuracy: {val['accuracy']:.3f}"
        )
        if val["loss"] < state.best["loss"]:
            state.best = {
                "loss": val["loss"],
                "state": state_to_cpu(state.model.state_dict()),
                "step": state.step,
            }
        if should_early_stop([r["val_loss"] for r in state.history], self.cfg.early_stop_count):
            state.early_stop_step = state.step
        if self.on_validation is not None:  # before the checkpoint: a kill between the two
            self.on_validation(row, pairs)  # repeats these points rather than losing them

    def save_checkpoint(self, state: TrainState) -> None:
        if self.checkpoint_path is not None:
            state.save(self.checkpoint_path, self.config_key, self.checkpoint_extra)

    def final_figures(self, model: nn.Module) -> tuple[dict[str, float], torch.Tensor]:
        """Loss and accuracy of every split in eval mode; the test predictions."""
        final, predictions = {}, torch.empty(0)
        for split in ("train", "val", "test"):
            x, y = self.data.split(split)
            result = evaluate(
                model,
                x,
                y,
                self.pipeline,
                self.cfg.eval_batch_size,
                keep_predictions=split == "test",
                placement=self.placement,
            )
            # "final_" keeps these apart from the per-validation series of the same split
            prefix = "test" if split == "test" else f"final_{split}"
            final[f"{prefix}_loss"] = result["loss"]
            final[f"{prefix}_accuracy"] = result["accuracy"]
            if split == "test":
                predictions = result["predictions"]
        return final, predictions


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
    placement: Placement | None = None,
) -> FitResult:
    """Train `model` on `data` (already on its device) and evaluate the best checkpoint.

    `on_validation(row, step_losses)` is called after each validation with the
    history row and the (step, loss) pairs since the last one; it may raise (an
    Optuna pruner does) to stop training. `checkpoint_extra` is stored in each
    checkpoint (a tracking run id, say); `load_checkpoint` hands it back.
    `params_key` is where `cfg` sits in params.yaml (`baseline.train`), for errors.
    `placement` defaults to what `Placement.for_device` decides for the data's device.
    """
    device = data.train_x.device
    placement = placement or Placement.for_device(device)
    generator = torch.Generator().manual_seed(seed)  # shuffling and augmentation
    torch.manual_seed(seed)  # dropout
    check_train_size(len(data.train_y), cfg, params_key)
    data = draw_budget(data, cfg, generator)
    steps_per_epoch = len(data.train_y) // cfg.batch_size  # full batches only
    optimizer = build_optimizer(model.parameters(), cfg)
    loop = _Loop(
        data,
        cfg,
        pipeline,
        placement,
        nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        steps_per_epoch,
        max(1, steps_per_epoch // cfg.validations_per_epoch),
        on_validation,
        checkpoint_path,
        checkpoint_extra or {},
        config_key,
        progress,
        name,
    )
    state = TrainState(
        model, optimizer, build_scheduler(optimizer, cfg, steps_per_epoch), generator
    )
    ckpt = load_checkpoint(checkpoint_path, config_key)
    if ckpt is not None:
        state.restore(ckpt, device)
        print(f"[{name}] resuming from checkpoint at step {state.step} ({checkpoint_path})")
    resumed_from = state.step

    set_train_mode(model)
    started_at = time.time()
    interval = _Interval(device)
    epochs = 1 if cfg.dry_run else cfg.epochs
    while state.epoch < epochs and state.early_stop_step is None:
        interval = loop.train_one_epoch(state, interval)
    if interval.losses:  # steps after the last validation
        synchronize(device)
        state.train_time_s += time.perf_counter() - interval.tic
        state.images_done += interval.seen

    if state.best["state"] is None:  # fewer steps than one validation interval
        state.best = {
            "loss": math.inf,
            "state": state_to_cpu(model.state_dict()),
            "step": state.step,
        }
    model.load_state_dict(state.best["state"])
    t_eval = time.perf_counter()
    final, test_predictions = loop.final_figures(model)
    final_eval_time = time.perf_counter() - t_eval
    return FitResult(
        history=state.history,
        final=final,
        best_step=state.best["step"],
        early_stop_step=state.early_stop_step,
        steps=state.step,
        epochs_run=state.step / steps_per_epoch,
        train_time_s=state.train_time_s,
        eval_time_s=state.eval_time_s + final_eval_time,
        images_per_s=state.images_done / max(state.train_time_s, 1e-9),
        test_predictions=test_predictions,
        resumed_from_step=resumed_from,
        final_eval_time_s=final_eval_time,
        started_at=started_at,
    )
