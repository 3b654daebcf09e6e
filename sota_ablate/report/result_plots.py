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

from sota_ablate import schema
from sota_ablate.report import keys
from sota_ablate.report.canvas import pyplot
from sota_ablate.run_figures import confusion_matrix_figure

if TYPE_CHECKING:
    from sota_ablate.report.collect import GridData
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


def _curves(
    ax: Any,
    data: GridData,
    key: str,
    colours: Mapping[str, str],
    cells: Sequence[str],
    x_of: Any = None,
    labels: Mapping[str, str] | None = None,
) -> bool:
    """Mean curve of ``key`` per cell with its seeds' min-max band; ``x_of(cell, epochs)``: other x values (wall
    time); ``labels``: legend text per cell."""
    drew = False
    styles = sweep_line_styles(data, cells)
    for cell in cells:
        series = cell_histories(data, cell, key)
        if not series:
            continue
        frame = pd.concat(series, axis=1)
        mean = frame.mean(axis=1)
        x = mean.index + 1
        if x_of is not None:
            x = x_of(cell, mean.index)
        if len(series) > 1:  # the seeds' range as a band
            ax.fill_between(
                x, frame.min(axis=1).values, frame.max(axis=1).values, color=colours[cell], alpha=0.15, lw=0
            )
        ax.plot(x, mean.values, marker="o", ms=3, color=colours[cell], lw=1.8, linestyle=styles.get(cell, "-"),
                label=labels.get(cell, cell) if labels else cell)  # fmt: skip
        drew = True
    if x_of is None:
        _integer_epochs(ax)
    return drew


SWEEP_STYLES = ("-", "--", "-.", ":")  # the largest swept value solid, smaller ones lighter dashes


def sweep_line_styles(data: GridData, cells: Sequence[str]) -> dict[str, Any]:
    """A sweep grid's cells share their arm's colour; the line style tells the swept value (largest: solid)."""
    values: dict[str, str] = {}
    for cell in cells:
        value = data.first(cell, keys.tag(schema.SWEEP_VALUE))
        if value is not None and not (isinstance(value, float) and value != value):
            values[cell] = str(value)

    def order(v: str) -> tuple[int, float | str]:
        try:
            return (0, float(v))
        except ValueError:
            return (1, v)

    ranked = sorted(set(values.values()), key=order, reverse=True)
    return {cell: SWEEP_STYLES[ranked.index(v) % len(SWEEP_STYLES)] for cell, v in values.items()}


def elapsed_time(data: GridData, cell: str, epochs: Any) -> Any:
    """Cumulative training + validation time (mean over seeds) at the end of each epoch of ``cell``."""
    series = cell_histories(data, cell, keys.EPOCH_TIME)
    if not series:
        return epochs + 1
    mean = pd.concat(series, axis=1).mean(axis=1).cumsum()
    return mean.reindex(epochs).values


def plot_accuracy_by_epoch(
    data: GridData,
    colours: Mapping[str, str],
    cells: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Any:
    """Validation accuracy by epoch (left) and against elapsed time (right), every cell, seeds as bands."""
    plt = pyplot()
    fig, (ax, ax_time) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    shown = cells or data.cells
    drew = _curves(ax, data, keys.ACCURACY, colours, shown, labels=labels)
    _curves(ax_time, data, keys.ACCURACY, colours, shown, x_of=lambda c, e: elapsed_time(data, c, e), labels=labels)
    ax.set_xlabel("epoch")
    ax_time.set_xlabel("elapsed training + validation time (s, mean over seeds)")
    ax.set_ylabel("validation accuracy")
    fig.suptitle(f"{data.grid}: validation accuracy (lines: mean over seeds; bands: min-max over seeds)", fontsize=10)
    for a in (ax, ax_time):
        a.grid(alpha=0.3)
    if drew:
        ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.8)
    fig.tight_layout()
    return fig


def plot_losses(
    data: GridData,
    colours: Mapping[str, str],
    scale_note: str = "",
    cells: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Any:
    """Training and validation loss by epoch, one panel each; ``scale_note`` (which techniques change the loss's
    scale) goes into the title."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    drew = False
    for ax, key in zip(axes, (keys.TRAIN_LOSS, keys.VALID_LOSS), strict=True):
        drew = _curves(ax, data, key, colours, cells or data.cells, labels=labels) or drew
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    if drew:
        axes[1].legend(fontsize=7, loc="upper right", ncol=2, framealpha=0.8)
    fig.suptitle(f"{data.grid}: losses" + (f" ({scale_note})" if scale_note else ""), fontsize=10)
    fig.tight_layout()
    return fig


def plot_final_accuracy(
    data: GridData, summaries: Sequence[CellSummary], baseline: str | None, colours: Mapping[str, str]
) -> Any:
    """Final accuracy per cell as a dot plot on a tight axis: the mean with its 95% t interval, seeds as small
    dots, the reference's mean as a dashed line."""
    plt = pyplot()
    shown = [s for s in summaries if s.accuracy.n > 0]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.6))
    values: list[float] = []
    for i, s in enumerate(reversed(shown)):
        seeds = list(data.values(s.cell, keys.FINAL_ACCURACY).values())
        values += seeds
        colour = colours[s.cell]
        if s.accuracy.n > 1 and not pd.isna(s.accuracy.ci_low):
            ax.plot([s.accuracy.ci_low, s.accuracy.ci_high], [i, i], color=colour, lw=2.5, solid_capstyle="round")
            values += [s.accuracy.ci_low, s.accuracy.ci_high]
        ax.scatter(seeds, [i] * len(seeds), color=colour, s=14, alpha=0.6, zorder=3, edgecolor="none")
        ax.plot(s.accuracy.mean, i, "o", color=colour, ms=8, mec="black", mew=0.7, zorder=4)
        ax.annotate(f"{s.accuracy.mean:.3f}", (s.accuracy.mean, i), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=7)  # fmt: skip
    if baseline:
        base = next((s for s in shown if s.cell == baseline), None)
        if base is not None:
            ax.axvline(base.accuracy.mean, color="black", ls="--", lw=1, label=f"{baseline} {base.accuracy.mean:.3f}")
            ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(range(len(shown)), [s.cell for s in reversed(shown)])
    if values:
        low, high = min(values), max(values)
        pad = max(0.01, 0.08 * (high - low))
        ax.set_xlim(max(0.0, low - pad), min(1.0, high + pad))  # accuracy lives in [0, 1]
    ax.set_ylim(-0.7, len(shown) - 0.3)
    ax.set_xlabel("final validation accuracy")
    ax.set_title(f"{data.grid}: final accuracy per cell (big dot: mean; bar: 95% CI; small dots: seeds)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
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
    shown: list[float] = []
    for i, c in enumerate(cells):
        for offset, values, dot_colour, label in (
            (-width / 2, c.plain, PLAIN, "plain"),
            (width / 2, c.judged, colour, technique),
        ):
            if values:
                mean = sum(values) / len(values)
                shown += list(values)
                ax_acc.scatter([i + offset] * len(values), values, color=dot_colour, s=14, alpha=0.6, edgecolor="none")
                ax_acc.plot(i + offset, mean, "o", color=dot_colour, ms=9, mec="black", mew=0.7,
                            label=label if i == 0 else None)  # fmt: skip
                ax_acc.annotate(f"{mean:.3f}", (i + offset, mean), textcoords="offset points", xytext=(10, -3),
                                fontsize=8)  # fmt: skip
        if c.plain and c.judged and len(c.plain) == len(c.judged):
            for p, j in zip(c.plain, c.judged, strict=True):  # the same model: a line per seed
                ax_acc.plot([i - width / 2, i + width / 2], [p, j], color="grey", lw=0.8, alpha=0.6)
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
        ax.legend(fontsize=8, loc="best" if ax is ax_acc else "upper left")
    ax_acc.set_ylabel("final validation accuracy")
    if shown:
        pad = max(0.01, 0.1 * (max(shown) - min(shown)))
        ax_acc.set_ylim(min(shown) - pad, max(shown) + pad)
    ax_acc.set_title(f"plain vs {technique} accuracy (same models; lines: seeds)")
    ax_time.set_ylabel("seconds")
    ax_time.set_ylim(0, ax_time.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax_time.set_title("inference time over the validation set")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class EffectPoint:
    """One row of a forest or cost-effect plot: label, effect and interval (fractions; NaN: none), its colour,
    the wall-time ratio, whether it is confounded, and the book's effect (NaN: none)."""

    label: str
    delta: float
    low: float
    high: float
    colour: str
    time_ratio: float = float("nan")
    confounded: bool = False
    book: float = float("nan")


def plot_effects(points: Sequence[EffectPoint], title: str, band: float = 0.01) -> Any:
    """Forest plot: each effect with its 95% interval, in its technique's colour, the practical-equivalence band
    shaded, the book's effect as a black cross; diamonds: confounded (epochs differ)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 0.5 * len(points) + 1.9))
    ax.axvspan(-100 * band, 100 * band, color="#dddddd", alpha=0.6, lw=0, label=f"±{100 * band:g} point band")
    booked = False
    for i, p in enumerate(reversed(points)):
        if not pd.isna(p.low):
            ax.plot([100 * p.low, 100 * p.high], [i, i], color=p.colour, lw=2.5, solid_capstyle="round")
        ax.plot(100 * p.delta, i, "D" if p.confounded else "o", color=p.colour, ms=7, mec="black", mew=0.6)
        ax.annotate(f"{100 * p.delta:+.1f}", (100 * p.delta, i), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7)  # fmt: skip
        if not pd.isna(p.book):
            ax.plot(100 * p.book, i, "x", color="black", ms=8, mew=1.8, label=None if booked else "book's effect")
            booked = True
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(range(len(points)), [p.label for p in reversed(points)], fontsize=8)
    ax.set_ylim(-0.7, len(points) - 0.3)
    ax.set_xlabel("effect of switching it on (accuracy points)\nbar: 95% CI over seeds; ◆: epochs differ")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_cost_effect(points: Sequence[EffectPoint], title: str) -> Any:
    """Each effect with its interval against the wall-time ratio with / without: up and left is better."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for k, p in enumerate(points):
        if pd.isna(p.time_ratio):
            continue
        if not pd.isna(p.low):
            ax.plot([p.time_ratio] * 2, [100 * p.low, 100 * p.high], color=p.colour, lw=2.2, alpha=0.8)
        ax.plot(p.time_ratio, 100 * p.delta, "D" if p.confounded else "o", color=p.colour, ms=8, mec="black", mew=0.6)
        ax.annotate(
            p.label.split(" (")[0],
            (p.time_ratio, 100 * p.delta),
            textcoords="offset points",
            xytext=(6, 4 + 10 * (k % 3)),
            fontsize=7,
            color=p.colour,
        )  # staggered labels: no overlap
    ax.axhline(0, color="black", lw=1)
    ax.axvline(1, color="grey", lw=1, ls="--")
    ax.set_xlabel("wall time with / without (1 = same cost)")
    ax.set_ylabel("effect (accuracy points), 95% CI")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_reliability(curves: Sequence[tuple[str, Any, str]], title: str) -> Any:
    """Reliability diagram: per confidence bin, accuracy against mean confidence, one curve per (label,
    ``predictions.Reliability``, colour); the diagonal is perfect calibration; bottom: images per bin."""
    plt = pyplot()
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(6, 6.2), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    width = 1.0 / max(1, len(curves[0][1].counts)) if curves else 0.05
    styles = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."))  # curves that coincide stay visible
    for k, (label, r, colour) in enumerate(curves):
        filled = r.counts > 0
        marker, line = styles[k % len(styles)]
        ax.plot(r.confidence[filled], r.accuracy[filled], marker=marker, ls=line, color=colour, ms=4 + 2 * k,
                mfc="none" if k else colour, lw=1.5, label=label)  # fmt: skip
        centres = (r.edges[:-1] + r.edges[1:]) / 2
        ax_n.bar(centres + (k - (len(curves) - 1) / 2) * width / len(curves), r.counts, width / len(curves),
                 color=colour, alpha=0.8)  # fmt: skip
    ax.set_ylabel("accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax_n.set_xlabel("confidence (top predicted probability), 15 equal-width bins")
    ax_n.set_ylabel("images")
    ax_n.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Any:
    """The confusion matrix (counts, row-normalised colours), as each run's own artifact draws it."""
    return confusion_matrix_figure(matrix, classes, title)
