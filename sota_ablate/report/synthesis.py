"""The verdict first: one row per technique with what the grid(s) measured (alone, inside the full recipe, at equal
budget), the book's effect, the time cost and a one-line recommendation computed from the verdicts.

A per-grid report opens with its own grid's table; ``reports/README.md`` (``generate.generate_synthesis``) puts
every grid of the store side by side. Which column an effect goes into is read from the grid: how its pairs were
formed (``TechniqueEffect.kind``) and whether their epochs were equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sota_ablate.report import verdicts
from sota_ablate.report.effects import ALONE, FULL_RECIPE, MAIN_EFFECT, TechniqueEffect
from sota_ablate.report.formatting import format_band, format_difference, format_points, format_ratio, pipe_table
from sota_ablate.report.prose import listing
from sota_ablate.report.published import published_effect
from sota_ablate.techniques import ordered

FAST, SLOW = 0.9, 1.1  # a wall-time ratio below FAST saves time, above SLOW costs it


def measure(effect: TechniqueEffect) -> str:
    """What the effect measures, in words: ``alone``, ``alone, equal budget``, ``in the full recipe``, ..."""
    if effect.kind == ALONE:
        return "alone, equal epochs" if effect.equal_budget else "alone, the chapter's budget"
    if effect.kind == FULL_RECIPE:
        return "in the full recipe"
    if effect.kind == MAIN_EFFECT:
        return "main effect"
    return "one pair"


def grid_measure(found: Sequence[TechniqueEffect]) -> str:
    """What a grid's effects measure, for its column's header: ``alone, equal epochs``, ``in the full recipe``..."""
    kinds = {e.kind for e in found}
    if kinds == {ALONE}:
        unequal = [f"`{e.technique}`" for e in found if not e.equal_budget]
        return "alone, equal epochs" if not unequal else f"alone (epochs differ for {listing(unequal)})"
    return listing(sorted({measure(e) for e in found}))


@dataclass(frozen=True)
class GridEffects:
    """One grid's effects for the verdict table: its name, where its report is (relative link; empty: this
    report) and its ``TechniqueEffect``s."""

    grid: str
    link: str
    effects: tuple[TechniqueEffect, ...]
    book: bool = True  # the grid ran on Imagenette, which the book's effects are about


def recommendation(found: Sequence[tuple[str, TechniqueEffect]], band: float) -> str:
    """One line from the verdicts of a technique over the grids (grid name, effect): what to do with it."""
    judged = [(g, e, e.verdict(band)) for g, e in found]
    fair = [(g, e, v) for g, e, v in judged if v.kind != verdicts.CONFOUNDED]
    ratios = [e.time_ratio for _, e, _ in fair if not math.isnan(e.time_ratio)]
    ratio = ratios[0] if ratios else math.nan

    def where(kind: str) -> str:
        return listing([f"`{g}` ({measure(e)})" for g, e, v in fair if v.kind == kind])

    cost = ""
    if not math.isnan(ratio) and (ratio < FAST or ratio > SLOW):
        cost = f", at {format_ratio(ratio)} the wall time"
    if any(v.kind == verdicts.HURTS for _, _, v in fair):
        return f"avoid at this scale: it hurts in {where(verdicts.HURTS)}{cost}"
    if any(v.kind == verdicts.HELPS for _, _, v in fair):
        return f"use it: it helps in {where(verdicts.HELPS)}{cost}"
    if fair and all(v.kind == verdicts.EQUIVALENT for _, _, v in fair):
        if not math.isnan(ratio) and ratio < FAST:
            return f"use it for speed: no accuracy effect larger than ±{format_band(band)}{cost}"
        if not math.isnan(ratio) and ratio > SLOW:
            return f"skip it: no accuracy effect larger than ±{format_band(band)}{cost}"
        return f"optional: no accuracy effect larger than ±{format_band(band)}"
    if any(v.kind == verdicts.EQUIVALENT for _, _, v in fair):
        return f"probably neutral: no effect larger than ±{format_band(band)} in {where(verdicts.EQUIVALENT)}"
    if fair and any(v.kind == verdicts.INCONCLUSIVE for _, _, v in fair):
        return "undecided: inconclusive at this number of seeds; run more seeds"
    if judged and not fair:
        return f"undecided: measured only with a different schedule; run the `{verdicts.EQUAL_BUDGET_GRID}` grid"
    return "undecided: nothing conclusive measured"


def _techniques(grids: Sequence[GridEffects]) -> list[str]:
    return ordered({e.technique for g in grids for e in g.effects})


def _cell(effect: TechniqueEffect | None, band: float) -> str:
    if effect is None:
        return "-"
    on = "" if effect.metric == "accuracy" else f" on {effect.metric}"
    v = effect.verdict(band)
    if v.kind == verdicts.IDENTICAL:
        return f"{format_points(effect.accuracy.delta)} pts{on}: {v.text}"
    if v.kind == verdicts.UNKNOWN and effect.reason:
        return f"not compared: {effect.reason}"
    return f"{format_difference(effect.accuracy)}{on}: {v.text}"


def verdict_markdown(grids: Sequence[GridEffects], band: float = verdicts.DEFAULT_BAND) -> str:
    """The verdict table: per technique, each grid's effect and verdict, the book's effect, time, recommendation."""
    header = ["technique"]
    for g in grids:
        what = grid_measure(g.effects)
        name = f"[`{g.grid}`]({g.link})" if g.link else f"`{g.grid}`"
        header.append(f"{name}: {what}")
    book_column = any(g.book for g in grids)
    header += [*(["book's effect"] if book_column else []), "wall time", "recommendation"]
    rows = []
    for technique in _techniques(grids):
        found = [(g.grid, e) for g in grids for e in g.effects if e.technique == technique]
        by_grid = {g.grid: next((e for e in g.effects if e.technique == technique), None) for g in grids}
        book = published_effect(technique)
        ratios = [e.time_ratio for _, e in found if e.equal_budget and not math.isnan(e.time_ratio)]
        ratios = ratios or [e.time_ratio for _, e in found if not math.isnan(e.time_ratio)]
        rows.append(
            [
                f"`{technique}`",
                *[_cell(by_grid[g.grid], band) for g in grids],
                *([book.text if book else "-"] if book_column else []),
                format_ratio(ratios[0]) if ratios else "-",
                recommendation(found, band),
            ]
        )
    return pipe_table(header, rows)


def verdict_notes(band: float = verdicts.DEFAULT_BAND, book: bool = True) -> list[str]:
    """The footnotes of the verdict table (``book``: it has the book's effect column)."""
    notes = [
        "Effects are in accuracy points (1 point = 0.01 accuracy) with their 95% interval over seeds, paired by seed; "
        f"verdicts: **helps** / **hurts** (the interval excludes zero), *no effect larger than ±{format_band(band)}* "
        "(the interval lies inside that band), *inconclusive* (it crosses zero and the band), *confounded* (the "
        "cells compared trained different numbers of epochs).",
        "book's effect: the chapter's printed accuracy with the technique minus without it (one run each, no "
        "interval; xresnet50, full-size Imagenette, a random split that leaks); - where the book has no such pair.",
        "wall time: with / without (at equal epochs where measured). recommendation: computed from the verdicts "
        "that are not confounded; the time ratio is mentioned when it is below "
        f"{format_ratio(FAST)} or above {format_ratio(SLOW)}.",
    ]
    return notes if book else [n for n in notes if not n.startswith("book's effect")]
