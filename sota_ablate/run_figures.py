"""Per-run figures logged as MLflow artifacts: learning curves and the confusion matrix."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from sota_ablate.train.record import EpochRecord


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def learning_curve(records: Sequence[EpochRecord], title: str) -> Any:
    """Losses (left axis) and accuracy (right axis) by epoch, stage switches marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    epochs = [r.epoch + 1 for r in records]
    ax.plot(epochs, [r.train_loss for r in records], "o-", color="tab:blue", label="train_loss")
    ax.plot(epochs, [r.valid_loss for r in records], "o-", color="tab:orange", label="valid_loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r.accuracy for r in records], "s-", color="tab:green", label="accuracy")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    for prev, cur in itertools.pairwise(records):
        if cur.stage != prev.stage:
            ax.axvline(cur.epoch + 0.5, color="grey", ls="--", lw=1)
            ax.text(
                cur.epoch + 0.55,
                ax.get_ylim()[1] * 0.95,
                f"{cur.stage} {cur.size}px",
                fontsize=8,
                color="grey",
                va="top",
            )
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="center right", fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Any:
    """Counts with row-normalised colours; rows are the true class."""
    import numpy as np

    plt = _pyplot()
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                int(m[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def close(fig: Any) -> None:
    _pyplot().close(fig)


def lr_find_figure(
    lrs: Sequence[float],
    losses: Sequence[float],
    suggestions: Mapping[str, tuple[float, tuple[float, float]]],
    title: str,
    skip_end: int = 5,
) -> Any:
    """fastai's ``plot_lr_find``: the smoothed loss against the lr (log axis) without the last ``skip_end``
    points, each suggestion marked at its point and named with its lr in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    end = len(lrs) - skip_end if skip_end else len(lrs)
    ax.plot(lrs[:end], losses[:end], color="tab:blue")
    colors = ("tab:orange", "tab:green", "tab:red", "tab:purple")
    for (name, (lr, (x, y))), color in zip(suggestions.items(), colors, strict=False):
        ax.plot(x, y, "o", color=color, label=f"{name}: {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    if suggestions:
        ax.legend(loc="best", fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
