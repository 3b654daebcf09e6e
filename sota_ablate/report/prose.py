"""The report's sentences: the chapter's fixed prose, and sentence builders that are pure functions of numbers
(so their wording is unit-tested).

Techniques' report sections (``ReportSection.build``) use these too, so this module imports no report module that
knows about techniques (``CellSummary`` is a type hint only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sota_ablate.report import stats, verdicts
from sota_ablate.report.formatting import format_accuracy, format_band, format_duration, format_points, format_ratio

if TYPE_CHECKING:
    from sota_ablate.report.tables import CellSummary

BASELINE_TITLE = "{dataset} baseline"  # .format(dataset=...): the grid's dataset (report/dataset.py)
BASELINE_INTRO = (
    "The chapter trains an xresnet from scratch on Imagenette with `fit_one_cycle(5, 3e-3)` and no input "
    "normalisation. Every other cell is compared with this one."
)
COMBINED_TITLE = "All techniques combined"
OTHERS_TITLE = "Other cells"
OTHERS_INTRO = "Cells of this grid that are not one of the chapter's steps."
ABSENT_TITLE = "Chapter steps not in this grid"


def listing(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def combined_intro(techniques: Sequence[str], recipe: str) -> str:
    """The intro of all techniques combined, from the cell's techniques and recipe."""
    listed = listing([f"`{t}`" for t in techniques])
    return (
        f"Every technique of this grid at once: {listed}; trained {recipe}. The chapter describes each technique but "
        "never trains them all together, so the book has no number for this recipe (a published one is a "
        "replication's)."
    )


def absent_intro(titles: Sequence[str], in_chapter_grid: Sequence[str]) -> str:
    """The note on the chapter's steps (``titles``) this grid has no cell for; ``in_chapter_grid``: those of them
    the chapter's grid file has a cell for."""
    text = f"This grid has no cell with exactly the techniques of these steps of the chapter: {', '.join(titles)}."
    if in_chapter_grid and len(in_chapter_grid) == len(titles):
        return text + " `ablations/chapter.toml` has them all."
    if in_chapter_grid:
        return text + f" `ablations/chapter.toml` has {listing(in_chapter_grid)}."
    return text


def final_sentence(cell: str, accuracy: stats.Summary) -> str:
    if accuracy.n == 0:
        return f"`{cell}` has no finished run yet."
    return f"Final accuracy of `{cell}`: {format_accuracy(accuracy)}."


def _method(diff: stats.Difference) -> str:
    if diff.method == "paired":
        return f"paired by seed, n = {diff.n}"
    if diff.method == "welch":
        return f"Welch, different seeds, df = {diff.df:.1f}"
    return ""


def effect_sentence(
    cell: str,
    reference: str,
    cell_mean: float,
    reference_mean: float,
    diff: stats.Difference | None,
    metric: str = "accuracy",
    band: float = verdicts.DEFAULT_BAND,
    longer: bool | None = None,
    reason: str = "",
) -> str:
    """``mixup`` reached 0.8630 vs 0.8252 for ``baseline``: +3.78 points, 95% CI [+1.2, +6.4] (paired by seed,
    n = 3): ... (``metric``: what both numbers are; ``longer``: None for equal epochs, else whether ``cell``
    trained the longer schedule)."""
    if reason:
        return f"No comparison of `{cell}` with `{reference}`: {reason}."
    if diff is None or math.isnan(diff.delta):
        return f"No comparison of `{cell}` with `{reference}`: one of them has no finished run."
    on = "" if metric == "accuracy" else f" ({metric})"
    head = (
        f"`{cell}` reached {cell_mean:.4f} vs {reference_mean:.4f} for `{reference}`{on}: "
        f"**{format_points(diff.delta)} points**"
    )
    if not diff.has_ci and not verdicts.is_degenerate(diff):
        return (
            f"{head} (a single seed on at least one side: no confidence interval, so this difference cannot be "
            "told apart from seed-to-seed noise)."
        )
    ci = f"95% CI [{format_points(diff.ci_low)}, {format_points(diff.ci_high)}] ({_method(diff)})"
    v = verdicts.verdict(diff, band, longer)
    words = {
        verdicts.CONFOUNDED: f"{v.text}: the difference is not the technique's alone",
        verdicts.IDENTICAL: "the same on every seed: no spread, so this says nothing either way",
        verdicts.HELPS: "the interval excludes zero: a gain that seed-to-seed noise alone is unlikely to explain",
        verdicts.HURTS: "the interval excludes zero: a loss that seed-to-seed noise alone is unlikely to explain",
        verdicts.EQUIVALENT: f"the interval lies inside ±{format_band(band)}: no difference larger than that",
        verdicts.INCONCLUSIVE: f"the interval includes zero and reaches beyond ±{format_band(band)}: inconclusive "
        "at this number of seeds",
    }
    return f"{head}, {ci}; {words.get(v.kind, v.text)}."


def _epochs(n: int | None) -> str:
    return "? epochs" if n is None else f"{n} epoch{'s' if n != 1 else ''}"


def budget_sentence(cell: CellSummary, reference: CellSummary) -> str:
    """Empty when the recipes match, else a warning naming both recipes."""
    if cell.recipe == reference.recipe or cell.recipe == "-" or reference.recipe == "-":
        return ""
    if cell.epochs is not None and cell.epochs == reference.epochs:
        counts = []
        if cell.steps is not None and reference.steps is not None and cell.steps != reference.steps:
            counts.append(f"{cell.steps:,} vs {reference.steps:,} optimizer steps")
        if cell.images is not None and reference.images is not None and cell.images != reference.images:
            counts.append(f"{cell.images:,} vs {reference.images:,} training images seen")
        detail = f" ({'; '.join(counts)})" if counts else ""
        return (
            f"Same number of epochs ({cell.epochs}), another schedule: `{cell.cell}` trained {cell.recipe} against "
            f"{reference.recipe} for `{reference.cell}`{detail}; the difference includes the schedule's."
        )
    return (
        f"Budgets differ: `{cell.cell}` trained {cell.recipe} ({_epochs(cell.epochs)}) against {reference.recipe} "
        f"({_epochs(reference.epochs)}) for `{reference.cell}`, so the difference is not the technique's alone."
    )


def time_sentence(cell: CellSummary, reference: CellSummary) -> str:
    if math.isnan(cell.wall_time_s) or math.isnan(reference.wall_time_s) or reference.wall_time_s <= 0:
        return ""
    ratio = cell.wall_time_s / reference.wall_time_s
    return (
        f"Wall time per run: {format_duration(cell.wall_time_s)} vs {format_duration(reference.wall_time_s)} "
        f"({format_ratio(ratio)}); mean epoch {format_duration(cell.epoch_time_s)} vs "
        f"{format_duration(reference.epoch_time_s)}."
    )


def evaluation_sentence(
    technique: str,
    cell: str,
    plain: dict[int, float],
    judged: dict[int, float],
    technique_time: float,
    valid_time: float,
) -> str:
    """An evaluation-only technique (TTA) vs the same models' plain accuracy (paired by construction: same runs),
    and the time it took: ``TTA on the same `tta` models: 0.8800 vs 0.8700 plain, +1.00 points ...``."""
    if not judged:
        return f"`{cell}` logged no {technique} accuracy."
    diff = stats.compare(judged, plain)
    mean_judged, mean_plain = stats.mean(list(judged.values())), stats.mean(list(plain.values()))
    text = (
        f"{technique} on the same `{cell}` models: {mean_judged:.4f} vs {mean_plain:.4f} plain, "
        f"**{format_points(diff.delta)} points**"
    )
    if diff.has_ci:
        text += f", 95% CI [{format_points(diff.ci_low)}, {format_points(diff.ci_high)}] ({_method(diff)})"
    else:
        text += " (one seed: no confidence interval)"
    if not math.isnan(technique_time):
        text += f"; it cost {format_duration(technique_time)} of inference"
        if not math.isnan(valid_time) and valid_time > 0:
            ratio = technique_time / valid_time
            text += f" vs {format_duration(valid_time)} for one plain validation pass ({format_ratio(ratio)})"
    return text + "."
