"""One batch at a time: the training step, evaluation in eval mode, and the train mode
that keeps frozen BatchNorm layers frozen. `fit` is built from these; the benchmark's
floor times `train_step` alone."""

from __future__ import annotations

import torch
from torch import nn

from src.training.augment import Pipeline
from src.training.device import Placement

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def set_train_mode(model: nn.Module) -> None:
    """model.train(), but frozen parts stay in eval mode: BatchNorm layers without
    trainable parameters keep their running statistics, and a module whose parameters
    are all frozen (a frozen block) computes what it computes in eval mode, so no
    stochastic layer (EfficientNet's drop-connect) changes what a frozen prefix outputs."""
    model.train()
    for module in model.modules():
        trains = [p.requires_grad for p in module.parameters()]
        if isinstance(module, _BATCH_NORMS) and not any(trains):
            module.eval()
        elif trains and not any(trains):
            module.eval()


@torch.inference_mode()  # nothing it returns feeds autograd (a feature cache does: no_grad)
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pipeline: Pipeline,
    batch_size: int,
    keep_predictions: bool = False,
    placement: Placement | None = None,
) -> dict:
    """Per-image mean loss and accuracy in eval mode; optionally the predictions."""
    was_training = model.training
    model.eval()
    device = x.device
    placement = placement or Placement.for_device(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    predictions = []
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with placement.autocast():
            logits = model(pipeline(xb, train=False))
        logits = logits.float()  # loss and argmax in float32, whatever autocast ran in
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum")
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


def train_step(
    model: nn.Module,
    optimizer,
    loss_fn,
    x: torch.Tensor,
    y: torch.Tensor,
    placement: Placement | None = None,
):
    """One optimisation step on a prepared batch; (logits, loss), neither synced.
    The loss is computed in float32 whatever autocast ran the forward pass in."""
    placement = placement or Placement.for_device(x.device)
    with placement.autocast():
        logits = model(x)
        loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, loss
