"""Which cells a grid compares, and on which metric: the one definition the report and the grid runner share.

A *pair* for technique ``T`` is two cells whose technique sets are ``A`` and ``A + T`` (``matched_pairs``); when
several cells share a technique set, the set is represented by its first cell in grid order. A technique's
effect is measured (``metric_keys``) on its ``judged_by`` metric when both sides have it; a technique that does
not train (TTA) on its ``judged_by`` metric of the cell with it against the plain accuracy of the identically
trained cell without it (or not at all); every other technique on the plain accuracy. The report
(``report/comparison.py``, ``report/effects.py``) applies it to finished runs, the precision planner
(``precision.py``) to the pilot seeds of a grid run.

A *sweep* grid (``generate = "sweep"`` / ``"budget"``) compares value by value instead (``sweep_pairs``): each arm's
cell at a value against the reference arm's cell at the same value, on the judged metric of the one technique
that tells them apart (the plain accuracy when it is not one technique).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sota_ablate import schema
from sota_ablate.techniques import TECHNIQUES

PLAIN = schema.FINAL_ACCURACY


def judged_by(technique: str) -> str | None:
    """The metric that measures ``technique`` (its ``judged_by``; None: the plain accuracy or not registered)."""
    return TECHNIQUES.get(technique).judged_by if technique in TECHNIQUES else None


def trains(technique: str) -> bool:
    """False for a technique that changes evaluation only (a cell with it trains like the cell without it)."""
    return TECHNIQUES.get(technique).trains if technique in TECHNIQUES else True


def matched_pairs(cells: Sequence[tuple[str, frozenset[str]]], technique: str) -> list[tuple[str, str]]:
    """(without, with) for every pair of ``cells`` (name, technique set; in grid order) whose sets differ by
    exactly ``technique``, sorted by the grid order of the cell with it, then of the cell without it."""
    by_set: dict[frozenset[str], str] = {}
    for cell, techniques in cells:
        by_set.setdefault(frozenset(techniques), cell)
    pairs = []
    for techniques, with_cell in by_set.items():
        if technique in techniques:
            without = by_set.get(techniques - {technique})
            if without is not None:
                pairs.append((without, with_cell))
    order = {c: i for i, (c, _) in enumerate(cells)}
    return sorted(pairs, key=lambda p: (order[p[1]], order[p[0]]))


def sweep_pairs(
    cells: Sequence[tuple[str, frozenset[str]]], points: Mapping[str, tuple[str, str, str]]
) -> list[tuple[str, str, tuple[str, str]]]:
    """(cell, technique, (reference cell, cell)) for every non-reference cell of a sweep, in grid order.

    Args:
        cells: (name, technique set) in grid order.
        points: cell -> (arm, value, reference arm), as the grid (``grid.SweepPoint``) or the cell runs' tags say.

    ``technique`` is the one technique the cell has and its reference has not (its ``judged_by`` metric then
    measures the pair, as in ``matched_pairs``), or ``""`` when they differ otherwise (the plain accuracy)."""
    techniques = dict(cells)
    at: dict[tuple[str, str], str] = {}
    for cell, _ in cells:
        if cell in points:
            arm, value, _reference = points[cell]
            at.setdefault((arm, value), cell)
    out = []
    for cell, _ in cells:
        if cell not in points:
            continue
        arm, value, reference = points[cell]
        against = at.get((reference, value))
        if arm == reference or against is None:
            continue
        added, removed = techniques[cell] - techniques[against], techniques[against] - techniques[cell]
        out.append((cell, next(iter(added)) if len(added) == 1 and not removed else "", (against, cell)))
    return out


def techniques_used(cells: Iterable[tuple[str, frozenset[str]]]) -> frozenset[str]:
    return frozenset().union(*(t for _, t in cells))


def metric_keys(technique: str, judged_with: bool, judged_without: bool) -> tuple[str | None, str | None]:
    """(metric of the cell with ``technique``, metric of the cell without it), given whether each side logged the
    technique's ``judged_by`` metric; (None, None) when the pair cannot be compared."""
    judged = judged_by(technique)
    if judged and judged_with and judged_without:
        return judged, judged
    if not trains(technique):
        return (judged, PLAIN) if judged and judged_with else (None, None)
    return PLAIN, PLAIN


def per_seed_effect(sides: Sequence[tuple[Mapping[int, float], Mapping[int, float]]]) -> dict[int, float]:
    """seed -> the mean over pairs of (with - without), for the seeds every side of every pair has (a technique's
    effect per seed, as the report's effects table computes it)."""
    if not sides:
        return {}
    seeds = sorted(set.intersection(*(set(w) & set(wo) for w, wo in sides)))
    return {s: sum(w[s] - wo[s] for w, wo in sides) / len(sides) for s in seeds}
