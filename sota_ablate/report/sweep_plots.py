"""Figures of a sweep grid (matplotlib, Agg): accuracy and the difference from the reference against the swept
value, and (budget grids) accuracy against training FLOPs and wall time. Each arm in its colour (``colours``: arm
-> colour, the colour of the arm's cells from ``palette.cell_colours``); each ``plot_*`` returns a Figure.

A budget sweep's value axis is logarithmic (budgets double), any other linear; values that are not numbers are
placed in grid order. Arms are nudged sideways by a few per cent so their interval bars do not overlap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sota_ablate.report.canvas import pyplot
from sota_ablate.report.sweep import ABOVE, BELOW, Point, Sweep, format_value

OTHER = "#888888"


def _position(sweep: Sweep, value: float | str) -> float:
    return float(value) if sweep.numeric else float(sweep.values.index(value))


def _log_axis(sweep: Sweep) -> bool:
    return sweep.numeric and sweep.is_budget and all(float(v) > 0 for v in sweep.values) and len(sweep.values) > 1


def _nudge(sweep: Sweep, x: float, index: int, count: int) -> float:
    """``x`` moved sideways for the ``index``-th of ``count`` arms (multiplicatively on a log axis)."""
    offset = (index - (count - 1) / 2) * 0.04
    if _log_axis(sweep):
        return x * math.exp(offset)
    span = (max(_position(sweep, v) for v in sweep.values) - min(_position(sweep, v) for v in sweep.values)) or 1.0
    return x + offset * span / 2


def _value_axis(ax: Any, sweep: Sweep, label: str) -> None:
    positions = [_position(sweep, v) for v in sweep.values]
    if _log_axis(sweep):
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(positions)
    ax.set_xticklabels([format_value(v) for v in sweep.values])
    ax.set_xlabel(label)


def _axis_label(sweep: Sweep) -> str:
    if sweep.is_budget:
        return "budget (reference's FLOPs at N epochs)" if sweep.unit == "flops" else "epochs"
    return sweep.key


def _tight(ax: Any, lows: list[float], highs: list[float], zero: bool = False) -> None:
    values = [v for v in lows + highs if not math.isnan(v)] + ([0.0] if zero else [])
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or 0.01
    ax.set_ylim(lo - pad, hi + pad)


def _legend_below(ax: Any) -> None:
    """The legend under the axes, where it hides no point."""
    n = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2 if n > 3 else n, frameon=False)


def _range(p: Point) -> tuple[float, float]:
    seeds = list(p.seeds.values())
    return (min(seeds), max(seeds)) if seeds else (math.nan, math.nan)


def plot_sweep(sweep: Sweep, colours: Mapping[str, str]) -> Any:
    """Left: accuracy against the swept value per arm (mean, seeds' range as a band). Right: each arm's difference
    from the reference with its 95% interval, zero dashed, crossovers dotted."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    lows, highs = [], []
    for arm in sweep.arms:
        points = [p for p in arm.points if p.accuracy.n]
        if not points:
            continue
        colour = colours.get(arm.name, OTHER)
        x = [_position(sweep, p.value) for p in points]
        band = [_range(p) for p in points]
        left.fill_between(x, [b[0] for b in band], [b[1] for b in band], color=colour, alpha=0.15, linewidth=0)
        left.plot(x, [p.accuracy.mean for p in points], "o-", color=colour, label=arm.name, markersize=4)
        lows += [b[0] for b in band]
        highs += [b[1] for b in band]
    _tight(left, lows, highs)
    _value_axis(left, sweep, _axis_label(sweep))
    left.set_ylabel("final accuracy")
    left.set_title(f"accuracy against {_axis_label(sweep)}", fontsize=10)
    handles, names = left.get_legend_handles_labels()
    left.grid(alpha=0.3)
    compared = sweep.compared
    lows, highs = [], []
    for index, arm in enumerate(compared):
        colour = colours.get(arm.name, OTHER)
        points = [p for p in arm.points if p.diff is not None and not math.isnan(p.diff.delta)]
        if not points:
            continue
        x = [_nudge(sweep, _position(sweep, p.value), index, len(compared)) for p in points]
        y = [100 * p.diff.delta for p in points]
        low = [100 * (p.diff.delta - p.diff.ci_low) if p.diff.has_ci else 0.0 for p in points]
        high = [100 * (p.diff.ci_high - p.diff.delta) if p.diff.has_ci else 0.0 for p in points]
        right.errorbar(x, y, yerr=[low, high], fmt="o-", color=colour, capsize=3, markersize=4)
        lows += [yy - lo for yy, lo in zip(y, low, strict=True)]
        highs += [yy + hi for yy, hi in zip(y, high, strict=True)]
        found = arm.crossover
        if found is not None and found.kind in (ABOVE, BELOW):
            right.axvline(_position(sweep, found.value), color=colour, linestyle=":", linewidth=1.2)
    right.axhline(0, color="#444444", linestyle="--", linewidth=0.8)
    _tight(right, lows, highs, zero=True)
    _value_axis(right, sweep, _axis_label(sweep))
    right.set_ylabel(f"Δ vs {sweep.reference} (points, 95% CI)")
    right.set_title(f"difference from {sweep.reference} at the same value", fontsize=10)
    right.grid(alpha=0.3)
    # one legend for both panels, under them (the arms' colours; a dotted line is the arm's crossover)
    columns = min(4, len(names)) or 1
    rows = math.ceil(len(names) / columns)
    if names:
        fig.legend(handles, names, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, min(0.4, 0.055 * rows + 0.01), 1, 1))
    return fig


def plot_compute(sweep: Sweep, colours: Mapping[str, str]) -> Any:
    """Accuracy against training FLOPs (left, log axis) and wall time (right) per (arm, budget): mean over seeds,
    bars: the seeds' range, a line through each arm's budgets."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), sharey=True)
    lows, highs = [], []
    for ax, attribute, label in ((axes[0], "flops", "training FLOPs"), (axes[1], "wall_time", "wall time (s)")):
        drew = False
        for arm in sweep.arms:
            points = [p for p in arm.points if p.accuracy.n and not math.isnan(getattr(p, attribute))]
            if not points:
                continue
            colour = colours.get(arm.name, OTHER)
            x = [getattr(p, attribute) for p in points]
            y = [p.accuracy.mean for p in points]
            band = [_range(p) for p in points]
            yerr = [[m - b[0] for m, b in zip(y, band, strict=True)], [b[1] - m for m, b in zip(y, band, strict=True)]]
            ax.errorbar(x, y, yerr=yerr, fmt="o-", color=colour, capsize=3, markersize=4, label=arm.name)
            lows += [b[0] for b in band]
            highs += [b[1] for b in band]
            drew = True
        xs = [getattr(p, attribute) for arm in sweep.arms for p in arm.points if p.accuracy.n]
        xs = [x for x in xs if not math.isnan(x) and x > 0]
        if attribute == "flops" and drew and xs and max(xs) >= 10 * min(xs):
            ax.set_xscale("log")  # budgets that double: a decade or more
            from matplotlib.ticker import NullFormatter

            ax.xaxis.set_minor_formatter(NullFormatter())
        elif attribute == "flops" and drew:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if drew:
            _legend_below(ax)
        else:
            ax.text(0.5, 0.5, f"no {label} logged", transform=ax.transAxes, ha="center", va="center")
    _tight(axes[0], lows, highs)
    axes[0].set_ylabel("final accuracy")
    axes[0].set_title("accuracy against training compute", fontsize=10)
    axes[1].set_title("accuracy against wall time", fontsize=10)
    fig.tight_layout()
    return fig
