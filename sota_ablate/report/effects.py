"""What each technique is worth: matched pairs of cells that differ by that one technique.

A *pair* for technique ``T`` is two finished cells whose technique sets are ``A`` and ``A + T``. Every grid
generator yields pairs, and which ones says what the effect means:

- ``one_at_a_time`` (the chapter grid): ``baseline`` -> ``T`` alone, one pair per technique;
- ``leave_one_out``: ``all - T`` -> ``all``, what ``T`` adds to the full recipe;
- ``factorial``: 2^(n-1) pairs per technique, whose average is the factorial design's **main effect**.

The effect is measured on the accuracy a user gets from the cell: for a cell with a technique that declares a
``judged_by`` metric, that metric (TTA accuracy for ``tta``: TTA only changes inference, so against the plain
accuracy its effect would be zero by construction), the plain accuracy otherwise. Per seed, ``T``'s effect is
the mean over its pairs of ``acc(A + T) - acc(A)``; the 95% interval is Student t over those per-seed effects,
paired by seed (seed ``k`` shares initialisation, data order and
augmentation draws in every cell). Pairs whose cells train a different number of epochs are flagged: their
difference mixes the technique with a longer or shorter schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sota_ablate import schema
from sota_ablate.report import keys, stats
from sota_ablate.report.collect import GridData
from sota_ablate.report.formatting import format_difference, pipe_table
from sota_ablate.report.prose import listing
from sota_ablate.report.tables import total_epochs
from sota_ablate.techniques import TECHNIQUES, ordered

# How the pairs of a technique were formed (``TechniqueEffect.kind``).
ALONE, FULL_RECIPE, MAIN_EFFECT, SINGLE_PAIR = "alone", "full_recipe", "main_effect", "single_pair"


@dataclass(frozen=True)
class TechniqueEffect:
    """The measured effect of switching one technique on.

    Attributes:
        technique: the registry name.
        pairs: (cell without, cell with) for every matched pair.
        kind: how the pairs were formed: ``alone`` (baseline -> the technique alone), ``full_recipe`` (everything
            but it -> everything), ``main_effect`` (several pairs, averaged) or ``single_pair`` (any other pair).
        accuracy: the per-seed effects' mean and interval (``stats.Difference``; method ``none`` with one seed).
        seeds: the seeds every cell of the pairs finished.
        time_ratio: mean over pairs and seeds of wall time with / without (NaN when unknown).
        equal_budget: every pair trains the same number of epochs on both sides.
    """

    technique: str
    pairs: tuple[tuple[str, str], ...]
    kind: str
    accuracy: stats.Difference
    seeds: tuple[int, ...]
    time_ratio: float
    equal_budget: bool

    @property
    def context(self) -> str:
        """The pairs in words, for the table."""
        if self.kind == MAIN_EFFECT:
            return f"main effect, mean over {len(self.pairs)} pairs of cells"
        without, with_cell = self.pairs[0]
        prefix = {ALONE: "alone: ", FULL_RECIPE: "in the full recipe: "}.get(self.kind, "")
        return f"{prefix}`{with_cell}` vs `{without}`"


def judged_by(technique: str) -> str | None:
    """The metric that measures ``technique`` (its ``judged_by``; None: the plain accuracy or not registered)."""
    return TECHNIQUES.get(technique).judged_by if technique in TECHNIQUES else None


def deployed_accuracy(data: GridData, cell: str) -> dict[int, float]:
    """seed -> the accuracy the cell delivers: the ``judged_by`` metric of its first technique (in registry order)
    that declares one and logged it (TTA accuracy for a cell with ``tta``), else the plain accuracy."""
    for technique in ordered(data.technique_set(cell)):
        key = judged_by(technique)
        values = data.values(cell, keys.metric(key)) if key else {}
        if values:
            return values
    return data.values(cell, keys.FINAL_ACCURACY)


def _epochs(data: GridData, cell: str) -> int | None:
    return total_epochs(
        data.first(cell, keys.param(schema.STAGES)), fallback=data.first(cell, keys.param(schema.train_param("epochs")))
    )


def matched_pairs(data: GridData, technique: str) -> list[tuple[str, str]]:
    """(without, with) cells whose technique sets differ by exactly ``technique``, both with finished runs.

    When several cells share a technique set (e.g. ``tta`` and ``baseline`` in the chapter grid are both
    checked below), each set is represented by its first finished cell in grid order.
    """
    by_set: dict[frozenset[str], str] = {}
    for cell in data.cells:
        if deployed_accuracy(data, cell):
            by_set.setdefault(data.technique_set(cell), cell)
    pairs = []
    for techniques, with_cell in by_set.items():
        if technique in techniques:
            without = by_set.get(techniques - {technique})
            if without is not None:
                pairs.append((without, with_cell))
    order = {c: i for i, c in enumerate(data.cells)}
    return sorted(pairs, key=lambda p: (order[p[1]], order[p[0]]))


def _kind(data: GridData, pairs: list[tuple[str, str]]) -> str:
    if len(pairs) > 1:
        return MAIN_EFFECT
    without, with_cell = pairs[0]
    if not data.technique_set(without):
        return ALONE
    everything = frozenset().union(*(data.technique_set(c) for c in data.cells))
    return FULL_RECIPE if data.technique_set(with_cell) == everything else SINGLE_PAIR


def technique_effect(data: GridData, technique: str) -> TechniqueEffect | None:
    """``technique``'s effect from its matched pairs (None when the grid has no pair for it)."""
    pairs = matched_pairs(data, technique)
    if not pairs:
        return None
    accs = {c: deployed_accuracy(data, c) for pair in pairs for c in pair}
    seeds = sorted(set.intersection(*(set(v) for v in accs.values())))
    if seeds:  # per seed: mean over pairs with the technique vs without it (mean of differences = difference of means)
        with_mean = [stats.mean([accs[w][s] for _, w in pairs]) for s in seeds]
        without_mean = [stats.mean([accs[wo][s] for wo, _ in pairs]) for s in seeds]
        diff = stats.paired_difference(with_mean, without_mean)
    elif len(pairs) == 1:  # the two cells ran different seeds: Welch
        diff = stats.compare(accs[pairs[0][1]], accs[pairs[0][0]])
    else:
        deltas = [stats.compare(accs[w], accs[wo]).delta for wo, w in pairs]
        diff = stats.Difference(stats.mean(deltas), math.nan, math.nan, 0, "none", math.nan)
    ratios = []
    for wo, w in pairs:
        t_with, t_without = data.values(w, keys.WALL_TIME), data.values(wo, keys.WALL_TIME)
        ratios += [t_with[s] / t_without[s] for s in set(t_with) & set(t_without) if t_without[s] > 0]
    equal = all(_epochs(data, wo) == _epochs(data, w) for wo, w in pairs)
    return TechniqueEffect(
        technique=technique,
        pairs=tuple(pairs),
        kind=_kind(data, pairs),
        accuracy=diff,
        seeds=tuple(seeds),
        time_ratio=stats.mean(ratios) if ratios else math.nan,
        equal_budget=equal,
    )


def technique_effects(data: GridData) -> list[TechniqueEffect]:
    """The effect of every technique the grid can isolate, in the registry's order."""
    return [e for e in (technique_effect(data, t) for t in ordered(data.techniques_used())) if e is not None]


def effects_markdown(effects: list[TechniqueEffect]) -> str:
    """The effects table: technique, pairs, accuracy effect with CI, verdict, time, budget."""
    rows = []
    for e in effects:
        d = e.accuracy
        if not d.has_ci:
            verdict = "one seed: unknown"
        elif d.significant:
            verdict = "**helps**" if d.delta > 0 else "**hurts**"
        else:
            verdict = "no clear effect"
        rows.append(
            [
                f"`{e.technique}`",
                e.context,
                format_difference(d),
                verdict,
                "-" if math.isnan(e.time_ratio) else f"x{e.time_ratio:.2f}",
                "equal" if e.equal_budget else "⚠ differs",
                ", ".join(str(s) for s in e.seeds) or "-",
            ]
        )
    header = ["technique", "measured as", "accuracy effect [95% CI]", "verdict", "wall time", "epochs", "seeds"]
    return pipe_table(header, rows, align="lllllll")


def effect_notes(effects: list[TechniqueEffect]) -> list[str]:
    """The footnotes under the effects table."""
    judged = [(e.technique, judged_by(e.technique)) for e in effects if judged_by(e.technique)]
    by_own = ""
    if judged:
        named = listing([f"`{t}`, `{key}`" for t, key in judged])
        by_own = f" (for {named} vs plain accuracy: what the user gets)"
    notes = [
        "accuracy effect: accuracy with the technique minus without it, in points, over the pairs of cells that "
        f"differ by that technique only{by_own}; mean of the per-seed effects with a Student-t 95% interval, "
        "paired by seed. A verdict needs an interval that excludes zero.",
        "wall time: with / without, mean over pairs and seeds (x0.80: the technique saves 20 % of the run).",
    ]
    if any(not e.equal_budget for e in effects):
        unequal = ", ".join(f"`{e.technique}`" for e in effects if not e.equal_budget)
        notes.append(
            f"⚠ epochs differ within the pairs of {unequal}: those effects include a longer or shorter schedule "
            "(the chapter's recipes do this; `ablations/fair.toml` gives every cell the same number of epochs)."
        )
    if any(len(e.pairs) > 1 for e in effects):
        notes.append(
            "main effect: the technique's effect averaged over every combination of the other techniques in the "
            "grid; a technique that only helps together with another shows a smaller main effect than its best pair."
        )
    return notes


def pair_lines(effects: list[TechniqueEffect]) -> list[str]:
    """For grids with many pairs per technique: which cells were compared."""
    lines = []
    for e in effects:
        if len(e.pairs) > 1:
            shown = "; ".join(f"`{wo}` -> `{w}`" for wo, w in e.pairs[:8])
            more = f"; and {len(e.pairs) - 8} more" if len(e.pairs) > 8 else ""
            lines.append(f"`{e.technique}`: {shown}{more}.")
    return lines
