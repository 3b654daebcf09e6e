"""How the report writes numbers and tables: GitHub pipe tables, durations, accuracy points, intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from sota_ablate.progress import format_time
from sota_ablate.report import stats


def pipe_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one of ``l``/``r``/``c`` per column (default: all left)."""
    align = align or "l" * len(header)
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        cells = [str(v).replace("|", "\\|").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_duration(seconds: float | None) -> str:
    """Seconds with a decimal below a minute (fast CPU cells), else fastai's mm:ss; ``-`` when unknown."""
    if seconds is None or math.isnan(seconds):
        return "-"
    return f"{seconds:.1f} s" if seconds < 60 else format_time(seconds)


def format_points(delta: float) -> str:
    """An accuracy difference in percentage points with its sign (0.0123 -> ``+1.23``)."""
    text = f"{100 * delta:+.2f}"
    return "+0.00" if text == "-0.00" else text


def format_difference(diff: stats.Difference | None) -> str:
    """``+1.23 pts [-0.50, +2.96]`` (paired/Welch), ``+1.23 pts (no CI)`` or ``-``."""
    if diff is None or math.isnan(diff.delta):
        return "-"
    if not diff.has_ci:
        return f"{format_points(diff.delta)} pts (no CI)"
    if diff.ci_low == diff.ci_high:  # no spread: a zero-width interval is no evidence, so none is shown
        return f"{format_points(diff.delta)} pts (identical on every seed)"
    return f"{format_points(diff.delta)} pts [{format_points(diff.ci_low)}, {format_points(diff.ci_high)}]"


def format_accuracy(s: stats.Summary) -> str:
    """``0.8252 +- 0.0031 (n=3)``; ``0.8252 (n=1)``; ``-``."""
    if s.n == 0:
        return "-"
    if s.n == 1:
        return f"{s.mean:.4f} (n=1)"
    return f"{s.mean:.4f} ± {s.std:.4f} (n={s.n})"


def format_ratio(ratio: float | None) -> str:
    """The one way the report writes a ratio (wall time with / without): ``1.53x``; ``-`` when unknown."""
    if ratio is None or math.isnan(ratio):
        return "-"
    return f"{ratio:.2f}x"


def format_band(band: float) -> str:
    """The practical-equivalence band in points: ``1 point``, ``0.5 points``."""
    points = 100 * band
    return f"{points:g} point" + ("" if points == 1 else "s")


def format_count(n: float | None) -> str:
    """``12,800``; ``-`` when unknown."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    return f"{int(n):,}"
