"""Figures of a grid's results (matplotlib, Agg): curves by epoch, final accuracy, accuracy against time, the
effects forest plot, the confusion matrix, and the figures of technique sections (progressive resizing's size
switch, evaluation-only techniques' accuracy and time).

Each ``plot_*`` function builds and returns a Figure, coloured by the ``colours`` it is given (cell -> colour,
``palette.cell_colours``); ``canvas.save`` writes and closes it. Curves are means over the complete seeds of a
cell, with each seed drawn faintly behind when there are several. The grid arrives as ``report.collect.GridData``
(only its methods are used: this module imports no other report module that knows about techniques, so a
technique's report section can import it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from sota_ablate.report import keys
from sota_ablate.report.canvas import pyplot
from sota_ablate.run_figures import confusion_matrix_figure

if TYPE_CHECKING:
    from sota_ablate.report.collect import GridData
    from sota_ablate.report.effects import TechniqueEffect
    from sota_ablate.report.tables import CellSummary

PLAIN = "#888888"  # the plain (no technique) bar next to a technique's


def cell_histories(data: GridData, cell: str, key: str) -> list[pd.Series]:
    """The per-epoch series of ``key`` for every complete run of ``cell``."""
    out = []
    for run_id in data.cell_rows(cell)["run_id"]:
        hist = data.history(run_id)
        if hist is not None and key in hist.columns:
            out.append(hist[key].dropna())
    return out


def validation_pass_times(data: GridData, cell: str) -> list[float]:
    """Seconds of the last plain validation pass of each complete run of ``cell`` (epoch time - train time)."""
    out = []
    for run_id in data.cell_rows(cell)["run_id"]:
        hist = data.history(run_id)
        if hist is not None and {keys.EPOCH_TIME, keys.TRAIN_TIME} <= set(hist.columns) and len(hist):
            last = hist.iloc[-1]
            out.append(float(last[keys.EPOCH_TIME] - last[keys.TRAIN_TIME]))
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


def plot_accuracy_by_epoch(data: GridData, colours: Mapping[str, str], cells: Sequence[str] | None = None) -> Any:
    """Validation accuracy by epoch for every cell in one figure."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drew = _curves(ax, data, keys.ACCURACY, colours, cells or data.cells)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{data.grid}: validation accuracy by epoch (mean over seeds)")
    ax.grid(alpha=0.3)
    if drew:
        ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig


def plot_losses(
    data: GridData, colours: Mapping[str, str], scale_note: str = "", cells: Sequence[str] | None = None
) -> Any:
    """Training and validation loss by epoch, one panel each; ``scale_note`` (which techniques change the loss's
    scale) goes into the title."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    drew = False
    for ax, key in zip(axes, (keys.TRAIN_LOSS, keys.VALID_LOSS), strict=True):
        drew = _curves(ax, data, key, colours, cells or data.cells) or drew
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    if drew:
        axes[1].legend(fontsize=8, loc="upper right", ncol=2)
    fig.suptitle(f"{data.grid}: losses" + (f" ({scale_note})" if scale_note else ""), fontsize=10)
    fig.tight_layout()
    return fig


def plot_final_accuracy(
    data: GridData, summaries: Sequence[CellSummary], baseline: str | None, colours: Mapping[str, str]
) -> Any:
    """Final accuracy per cell: mean with std error bars (seeds as dots), the baseline's mean as a line."""
    plt = pyplot()
    shown = [s for s in summaries if s.accuracy.n > 0]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(summaries) + 2), 4.5))
    for i, s in enumerate(summaries):
        if s.accuracy.n == 0:
            ax.text(i, 0.02, s.status, rotation=90, ha="center", va="bottom", fontsize=8, color="grey")
            continue
        err = s.accuracy.std if s.accuracy.n > 1 else 0
        ax.bar(i, s.accuracy.mean, yerr=err, color=colours[s.cell], alpha=0.85, capsize=4)
        seeds = list(data.values(s.cell, keys.FINAL_ACCURACY).values())
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


def plot_accuracy_vs_time(data: GridData, summaries: Sequence[CellSummary], colours: Mapping[str, str]) -> Any:
    """Final accuracy against total wall time per cell (each seed a faint dot, the mean a labelled marker)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summaries:
        if s.accuracy.n == 0:
            continue
        acc = data.values(s.cell, keys.FINAL_ACCURACY)
        wall = data.values(s.cell, keys.WALL_TIME)
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


def plot_progressive(data: GridData, cell: str, baseline: str | None, colours: Mapping[str, str]) -> Any:
    """Accuracy by epoch of the progressive cell across its size switch (the baseline for reference)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cells = [c for c in (baseline, cell) if c]
    _curves(ax, data, keys.ACCURACY, colours, cells)
    sizes = cell_histories(data, cell, keys.IMAGE_SIZE)
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


@dataclass(frozen=True)
class EvaluationBars:
    """One cell's numbers for ``plot_evaluation``: seeds' plain and technique accuracy, and the seconds of one
    plain validation pass and of the technique's evaluation."""

    cell: str
    plain: Sequence[float]
    judged: Sequence[float]
    valid_time: Sequence[float]
    technique_time: Sequence[float]


def plot_evaluation(cells: Sequence[EvaluationBars], technique: str, colour: str) -> Any:
    """For a technique that changes evaluation only (TTA), per cell: plain vs its accuracy (left) and one plain
    validation pass vs its inference time (right), the same models on both sides."""
    plt = pyplot()
    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(10, 4.2))
    width = 0.38
    for i, c in enumerate(cells):
        for offset, values, bar_colour, label in (
            (-width / 2, c.plain, PLAIN, "plain"),
            (width / 2, c.judged, colour, technique),
        ):
            if values:
                mean = sum(values) / len(values)
                ax_acc.bar(i + offset, mean, width, color=bar_colour, label=label if i == 0 else None)
                ax_acc.text(i + offset, mean + 0.01, f"{mean:.3f}", ha="center", fontsize=8)
        for offset, values, bar_colour, label in (
            (-width / 2, c.valid_time, PLAIN, "plain validation pass"),
            (width / 2, c.technique_time, colour, f"{technique} (all passes)"),
        ):
            if values:
                mean = sum(values) / len(values)
                ax_time.bar(i + offset, mean, width, color=bar_colour, label=label if i == 0 else None)
                ax_time.text(i + offset, mean, _seconds(mean), ha="center", va="bottom", fontsize=8)
    for ax in (ax_acc, ax_time):
        ax.set_xticks(range(len(cells)), [c.cell for c in cells])
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_acc else "upper left")
    ax_acc.set_ylabel("final validation accuracy")
    ax_acc.set_ylim(0, 1.05)
    ax_acc.set_title(f"plain vs {technique} accuracy (same model)")
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
    return confusion_matrix_figure(matrix, classes, title)
