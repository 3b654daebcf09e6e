"""The report's result plots (matplotlib, Agg): one colour per technique in every figure.

Each ``plot_*`` function builds and returns a Figure; ``save`` writes it as PNG and closes it (the MLflow
docs' advice: build in a function, close after use), so a long report never accumulates open figures.
Curves are means over the complete seeds of a cell, with each seed drawn faintly behind when there are several.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sota_ablate.report.collect import GridData
from sota_ablate.report.effects import TechniqueEffect
from sota_ablate.report.tables import CellSummary

# One colour per technique (a single-technique cell takes its technique's colour), fixed across figures.
TECHNIQUE_COLOURS = {
    "none": "#222222",
    "fp16": "#7f7f7f",
    "normalize": "#1f77b4",
    "progressive": "#ff7f0e",
    "tta": "#2ca02c",
    "mixup": "#d62728",
    "label_smoothing": "#9467bd",
    "all": "#8c564b",
}
EXTRA_COLOURS = ("#e377c2", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5")
ALL_TECHNIQUES = frozenset(k for k in TECHNIQUE_COLOURS if k not in ("none", "all"))


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def cell_colours(data: GridData) -> dict[str, str]:
    """cell -> colour: its technique's colour for single-technique cells, black for the baseline, brown for
    all techniques, then a fixed palette for other combinations (in grid order)."""
    out: dict[str, str] = {}
    extra = iter(EXTRA_COLOURS * 4)
    for cell in data.cells:
        techniques = data.technique_set(cell)
        if not techniques:
            out[cell] = TECHNIQUE_COLOURS["none"]
        elif techniques >= ALL_TECHNIQUES:
            out[cell] = TECHNIQUE_COLOURS["all"]
        elif len(techniques) == 1 and next(iter(techniques)) in TECHNIQUE_COLOURS:
            out[cell] = TECHNIQUE_COLOURS[next(iter(techniques))]
        else:
            out[cell] = next(extra)
    return out


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG (no timestamp metadata, so reruns give the same bytes) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    pyplot().close(fig)
    return path


def cell_histories(data: GridData, cell: str, key: str) -> list[pd.Series]:
    """The per-epoch series of ``key`` for every complete run of ``cell``."""
    out = []
    for run_id in data.cell_rows(cell)["run_id"]:
        hist = data.history(run_id)
        if hist is not None and key in hist.columns:
            out.append(hist[key].dropna())
    return out


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _seconds(value: float) -> str:
    return f"{value:.2g} s" if value < 1 else f"{value:.1f} s"


def _curves(ax: Any, data: GridData, key: str, colours: Mapping[str, str], cells: Sequence[str]) -> bool:
    drew = False
    for cell in cells:
        series = cell_histories(data, cell, key)
        if not series:
            continue
        frame = pd.concat(series, axis=1)
        if len(series) > 1:
            for s in series:
                ax.plot(s.index + 1, s.values, color=colours[cell], alpha=0.25, lw=1)
        mean = frame.mean(axis=1)
        ax.plot(mean.index + 1, mean.values, "o-", ms=3, color=colours[cell], lw=1.8, label=cell)
        drew = True
    _integer_epochs(ax)
    return drew


def plot_accuracy_by_epoch(data: GridData, cells: Sequence[str] | None = None) -> Any:
    """Validation accuracy by epoch for every cell in one figure."""
    plt = pyplot()
    colours = cell_colours(data)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drew = _curves(ax, data, "accuracy", colours, cells or data.cells)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{data.grid}: validation accuracy by epoch (mean over seeds)")
    ax.grid(alpha=0.3)
    if drew:
        ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig


def plot_losses(data: GridData, cells: Sequence[str] | None = None) -> Any:
    """Training and validation loss by epoch, one panel each."""
    plt = pyplot()
    colours = cell_colours(data)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    drew = False
    for ax, key in zip(axes, ("train_loss", "valid_loss"), strict=True):
        drew = _curves(ax, data, key, colours, cells or data.cells) or drew
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    if drew:
        axes[1].legend(fontsize=8, loc="upper right", ncol=2)
    fig.suptitle(f"{data.grid}: losses (label smoothing and mixup change the loss's scale)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_final_accuracy(data: GridData, summaries: Sequence[CellSummary], baseline: str | None) -> Any:
    """Final accuracy per cell: mean with std error bars (seeds as dots), the baseline's mean as a line."""
    plt = pyplot()
    colours = cell_colours(data)
    shown = [s for s in summaries if s.accuracy.n > 0]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(summaries) + 2), 4.5))
    for i, s in enumerate(summaries):
        if s.accuracy.n == 0:
            ax.text(i, 0.02, s.status, rotation=90, ha="center", va="bottom", fontsize=8, color="grey")
            continue
        err = s.accuracy.std if s.accuracy.n > 1 else 0
        ax.bar(i, s.accuracy.mean, yerr=err, color=colours[s.cell], alpha=0.85, capsize=4)
        seeds = list(data.values(s.cell, "metrics.final_accuracy").values())
        ax.scatter([i] * len(seeds), seeds, color="black", s=10, zorder=3)
        ax.text(i, s.accuracy.mean + err + 0.01, f"{s.accuracy.mean:.3f}", ha="center", fontsize=8)
    if baseline:
        base = next((s for s in shown if s.cell == baseline), None)
        if base is not None:
            ax.axhline(base.accuracy.mean, color="black", ls="--", lw=1, label=f"{baseline} {base.accuracy.mean:.3f}")
            ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(range(len(summaries)), [s.cell for s in summaries], rotation=30, ha="right")
    ax.set_ylabel("final validation accuracy")
    top = max([s.accuracy.mean + (s.accuracy.std if s.accuracy.n > 1 else 0) for s in shown] or [1.0])
    ax.set_ylim(0, min(1.05, top + 0.08))
    ax.set_title(f"{data.grid}: final accuracy per cell (bars: mean ± std over seeds; dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_time(data: GridData, summaries: Sequence[CellSummary]) -> Any:
    """Final accuracy against total wall time per cell (each seed a faint dot, the mean a labelled marker)."""
    plt = pyplot()
    colours = cell_colours(data)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summaries:
        if s.accuracy.n == 0:
            continue
        acc = data.values(s.cell, "metrics.final_accuracy")
        wall = data.values(s.cell, "metrics.wall_time_s")
        seeds = sorted(set(acc) & set(wall))
        if len(seeds) > 1:
            ax.scatter([wall[k] for k in seeds], [acc[k] for k in seeds], color=colours[s.cell], alpha=0.3, s=15)
        ax.scatter([s.wall_time_s], [s.accuracy.mean], color=colours[s.cell], s=60, edgecolor="black", zorder=3)
        ax.annotate(s.cell, (s.wall_time_s, s.accuracy.mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("wall time per run (s): training, evaluation, TTA")
    ax.set_ylabel("final validation accuracy")
    ax.set_title(f"{data.grid}: accuracy vs wall time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_progressive(data: GridData, cell: str, baseline: str | None) -> Any:
    """Accuracy by epoch of the progressive cell across its size switch (the baseline for reference)."""
    plt = pyplot()
    colours = cell_colours(data)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cells = [c for c in (baseline, cell) if c]
    _curves(ax, data, "accuracy", colours, cells)
    sizes = cell_histories(data, cell, "image_size")
    if sizes:
        size = sizes[0]
        for epoch in range(1, len(size)):
            if size.iloc[epoch] != size.iloc[epoch - 1]:
                x = size.index[epoch] + 0.5
                ax.axvline(x, color="grey", ls="--", lw=1)
                ax.text(
                    x + 0.05,
                    0.9,
                    f"{int(size.iloc[epoch - 1])} px -> {int(size.iloc[epoch])} px",
                    transform=ax.get_xaxis_transform(),
                    fontsize=8,
                    color="grey",
                )
        for epoch, value in size.items():
            ax.annotate(f"{int(value)}", (epoch + 1, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -10),
                        textcoords="offset points", ha="center", fontsize=7, color=colours[cell])  # fmt: skip
    ax.set_xlabel("epoch (numbers at the top: training image size in px)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"progressive resizing: accuracy by epoch across the size switch ({cell})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_tta(data: GridData, cells: Sequence[str]) -> Any:
    """Per TTA cell: plain vs TTA accuracy (left) and plain validation vs TTA inference time (right)."""
    plt = pyplot()
    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(10, 4.2))
    width = 0.38
    for i, cell in enumerate(cells):
        plain = list(data.values(cell, "metrics.final_accuracy").values())
        tta = list(data.values(cell, "metrics.tta_accuracy").values())
        tta_time = list(data.values(cell, "metrics.tta_time_s").values())
        valid_time = []
        for run_id in data.cell_rows(cell)["run_id"]:
            hist = data.history(run_id)
            if hist is not None and {"epoch_time_s", "train_time_s"} <= set(hist.columns) and len(hist):
                last = hist.iloc[-1]
                valid_time.append(float(last["epoch_time_s"] - last["train_time_s"]))
        for offset, values, colour, label in (
            (-width / 2, plain, "#888888", "plain"),
            (width / 2, tta, "#2ca02c", "TTA"),
        ):
            if values:
                mean = sum(values) / len(values)
                ax_acc.bar(i + offset, mean, width, color=colour, label=label if i == 0 else None)
                ax_acc.text(i + offset, mean + 0.01, f"{mean:.3f}", ha="center", fontsize=8)
        for offset, values, colour, label in (
            (-width / 2, valid_time, "#888888", "plain validation pass"),
            (width / 2, tta_time, "#2ca02c", "TTA (all passes)"),
        ):
            if values:
                mean = sum(values) / len(values)
                ax_time.bar(i + offset, mean, width, color=colour, label=label if i == 0 else None)
                ax_time.text(i + offset, mean, _seconds(mean), ha="center", va="bottom", fontsize=8)
    for ax in (ax_acc, ax_time):
        ax.set_xticks(range(len(cells)), cells)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_acc else "upper left")
    ax_acc.set_ylabel("final validation accuracy")
    ax_acc.set_ylim(0, 1.05)
    ax_acc.set_title("plain vs TTA accuracy (same model)")
    ax_time.set_ylabel("seconds")
    ax_time.set_title("inference time over the validation set")
    fig.tight_layout()
    return fig


def plot_effects(effects: Sequence[TechniqueEffect], grid: str) -> Any:
    """Forest plot: each technique's accuracy effect with its 95% interval (a dot alone: one seed, no interval)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(effects) + 1.8))
    for i, e in enumerate(reversed(effects)):
        d = e.accuracy
        colour = "#888888"
        if d.significant:
            colour = "#2ca02c" if d.delta > 0 else "#d62728"
        if d.has_ci:
            ax.plot([100 * d.ci_low, 100 * d.ci_high], [i, i], color=colour, lw=2.5, solid_capstyle="round")
        marker = "o" if e.equal_budget else "D"
        ax.plot(100 * d.delta, i, marker, color=colour, ms=7, mec="black", mew=0.6)
        ax.text(100 * d.delta, i + 0.22, f"{100 * d.delta:+.1f}", ha="center", fontsize=8)
    ax.axvline(0, color="black", lw=1)
    labels = [e.technique + ("" if e.equal_budget else " (epochs differ)") for e in reversed(effects)]
    ax.set_yticks(range(len(effects)), labels)
    ax.set_ylim(-0.7, len(effects) - 0.3)
    ax.set_xlabel("accuracy effect of switching it on (points); bar: 95% CI over seeds")
    ax.set_title(f"{grid}: what each technique is worth\ngreen: helps, red: hurts, grey: not clear", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Any:
    """The confusion matrix (counts, row-normalised colours), as each run's own artifact draws it."""
    from sota_ablate.plots import confusion_matrix_figure

    return confusion_matrix_figure(matrix, classes, title)
