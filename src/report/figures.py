"""Figures people would rather look at than read. matplotlib is imported lazily."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from src.config.cifar import CIFAR10_CLASSES


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(
    history: Sequence[dict],
    title: str,
    reference: float | None = None,
    reference_label: str = "Reference test accuracy",
):
    """The course's plot: training loss (with its spread) and validation loss on the
    left, validation accuracy on the right, against the global step. `reference`
    draws an accuracy to compare with as a dotted line on the right."""
    plt = _plt()
    steps = np.array([r["step"] for r in history])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    if len(steps):
        mean = np.array([r["train_loss"] for r in history])
        std = np.array([r.get("train_loss_std", 0.0) for r in history])
        left.plot(steps, mean, label="Training loss (mean over interval)")
        left.fill_between(steps, mean - std, mean + std, alpha=0.25, label="± 1 std")
        left.plot(steps, [r["val_loss"] for r in history], label="Validation loss", marker=".")
        right.plot(
            steps, [r["val_accuracy"] for r in history], label="Validation accuracy", marker="."
        )
        if "train_accuracy" in history[0]:
            right.plot(
                steps,
                [r["train_accuracy"] for r in history],
                label="Training accuracy (running)",
                alpha=0.6,
            )
    if reference is not None:
        right.axhline(
            reference, color="k", linestyle=":", label=f"{reference_label} {reference:.3f}"
        )
    left.set(xlabel="Global training step", ylabel="Cross-entropy loss", title=f"{title}: loss")
    right.set(xlabel="Global training step", ylabel="Accuracy", title=f"{title}: accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def compare_losses(histories: dict[str, Sequence[dict]], title: str):
    """Training and validation loss of several stages in one graph (task 3d)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i}"
        steps = [r["step"] for r in history]
        ax.plot(steps, [r["train_loss"] for r in history], color=color, label=f"{name} train")
        ax.plot(
            steps,
            [r["val_loss"] for r in history],
            color=color,
            linestyle="--",
            label=f"{name} validation",
        )
    ax.set(xlabel="Global training step", ylabel="Cross-entropy loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def compare_validation(
    histories: dict[str, Sequence[dict]],
    title: str,
    x: str = "step",
    xlabel: str = "Global training step",
):
    """Validation loss (left) and accuracy (right) of several runs against the rows' `x`
    (the global step; "images" where runs of other batch sizes share the axis), one colour
    per run (`histories`: label -> history.csv rows)."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (label, history) in enumerate(histories.items()):
        xs = [r[x] for r in history]
        style = {"color": f"C{i}", "marker": ".", "label": label}
        left.plot(xs, [r["val_loss"] for r in history], **style)
        right.plot(xs, [r["val_accuracy"] for r in history], **style)
    left.set(xlabel=xlabel, ylabel="Cross-entropy loss", title=f"{title}: loss")
    right.set(xlabel=xlabel, ylabel="Accuracy", title=f"{title}: accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(title="Validation")
    fig.tight_layout()
    return fig


def compare_accuracy(
    accuracies: dict[str, dict[str, float]],
    reference: dict[str, float],
    title: str,
    reference_label: str = "Reference test accuracy",
):
    """Grouped bars of train/val/test accuracy per stage; `reference` test accuracies
    (by stage) are black markers beside the test bar."""
    plt = _plt()
    splits = {"train": "Training", "val": "Validation", "test": "Test"}
    names = list(accuracies)
    fig, ax = plt.subplots(figsize=(1.9 * max(len(names), 2) + 2, 4.5))
    width = 0.8 / len(splits)
    x = np.arange(len(names))
    for i, split in enumerate(splits):
        values = [accuracies[n].get(split, np.nan) for n in names]
        bars = ax.bar(x + (i - 1) * width, values, width, label=splits[split], color=f"C{i}")
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    refs = [(j, reference[n]) for j, n in enumerate(names) if n in reference]
    if refs:
        ax.scatter(
            [j + 1.5 * width for j, _ in refs],
            [v for _, v in refs],
            marker="D",
            color="k",
            zorder=3,
            label=reference_label,
        )
        for j, v in refs:
            ax.annotate(
                f"{v:.3f}",
                (j + 1.5 * width, v),
                xytext=(4, -3),
                fontsize=8,
                textcoords="offset points",
            )
    ax.set_xticks(x, names)
    ax.set(ylabel="Accuracy", ylim=(0, 1.08), title=title)
    ax.grid(axis="y", alpha=0.3)
    # below the axes: inside, it would cover bars whatever the accuracies are
    fig.legend(loc="lower center", ncol=len(splits) + 1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """(10, 10) counts; rows are true classes, columns predictions."""
    k = len(CIFAR10_CLASSES)
    return np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)


def confusion_figure(matrix: np.ndarray, title: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(CIFAR10_CLASSES))
    ax.set_xticks(ticks, CIFAR10_CLASSES, rotation=45, ha="right")
    ax.set_yticks(ticks, CIFAR10_CLASSES)
    for i in ticks:
        for j in ticks:
            ax.text(
                j,
                i,
                f"{matrix[i, j]}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="Share of the true class")
    fig.tight_layout()
    return fig


def sample_grid(images: np.ndarray, labels: np.ndarray, per_class: int = 8, seed: int = 0):
    """A row of random samples per class. images: uint8 (N, 32, 32, 3)."""
    plt = _plt()
    rng = np.random.default_rng(seed)
    k = len(CIFAR10_CLASSES)
    fig, axes = plt.subplots(k, per_class, figsize=(per_class * 0.9, k * 0.95))
    for row, cls in enumerate(CIFAR10_CLASSES):
        idx = np.flatnonzero(labels == row)
        picks = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(picks):
                ax.imshow(images[picks[col]], interpolation="nearest")
        axes[row, 0].text(-4, 16, cls, ha="right", va="center", fontsize=9)
    fig.suptitle("CIFAR-10 samples per class (training split)")
    fig.subplots_adjust(left=0.18, wspace=0.05, hspace=0.05)
    return fig
