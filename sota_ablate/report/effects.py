"""What each technique is worth: matched pairs of cells that differ by that one technique.

A *pair* for technique ``T`` is two finished cells whose technique sets are ``A`` and ``A + T``. Every grid
generator yields pairs, and which ones says what the effect means:

- ``one_at_a_time`` (the chapter grid): ``baseline`` -> ``T`` alone, one pair per technique;
- ``leave_one_out``: ``all - T`` -> ``all``, what ``T`` adds to the full recipe;
- ``factorial``: 2^(n-1) pairs per technique, whose average is the factorial design's **main effect**.

The effect is measured by ``comparison``'s one rule (the technique's ``judged_by`` metric when both sides logged
it; for a technique that does not train, the ``judged_by`` metric of the cell with it against the plain accuracy
of the identically trained cell without it; otherwise the plain accuracy), so the summary's Δ and this table agree
for the same pair of cells. Per seed, ``T``'s effect is the mean over its pairs of ``m(A + T) - m(A)``; the 95%
interval is Student t over those per-seed effects, paired by seed (seed ``k`` shares initialisation, data order
and augmentation draws in every cell). Pairs whose cells train a different number of epochs are **confounded**:
their difference mixes the technique with a longer or shorter schedule; the table also says whether optimizer
steps and images seen are equal. The verdict (``verdicts.verdict``) uses a practical-equivalence band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sota_ablate import pairing
from sota_ablate.report import comparison, keys, stats, verdicts
from sota_ablate.report.collect import GridData
from sota_ablate.report.comparison import Budget, Comparison, cell_budget, judged_by
from sota_ablate.report.formatting import format_band, format_count, format_difference, format_ratio, pipe_table
from sota_ablate.report.prose import listing
from sota_ablate.techniques import ordered

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
        time_ratio: wall time with / without (``comparison.wall_time_ratio``; NaN when unknown).
        equal_budget: every pair trains the same number of epochs on both sides.
        comparisons: each pair's ``comparison.Comparison`` (its metrics and per-seed values).
        budgets: (without, with) ``Budget`` of the first pair.
        longer: None with equal epochs, else whether the side with the technique trained more epochs.
        reason: why the technique is not compared (empty when it is).
    """

    technique: str
    pairs: tuple[tuple[str, str], ...]
    kind: str
    accuracy: stats.Difference
    seeds: tuple[int, ...]
    time_ratio: float
    equal_budget: bool
    comparisons: tuple[Comparison, ...] = ()
    budgets: tuple[Budget, Budget] | None = None
    longer: bool | None = None
    reason: str = ""

    @property
    def metric(self) -> str:
        """What the effect was measured on (``accuracy``, ``tta_accuracy vs accuracy``)."""
        metrics = {c.metric for c in self.comparisons if c.key_with is not None}
        return " / ".join(sorted(metrics)) or "-"

    def verdict(self, band: float = verdicts.DEFAULT_BAND) -> verdicts.Verdict:
        if self.reason:
            return verdicts.Verdict(verdicts.UNKNOWN, "not compared")
        return verdicts.verdict(self.accuracy, band, self.longer)

    @property
    def context(self) -> str:
        """The pairs in words, for the table."""
        if self.kind == MAIN_EFFECT:
            return f"main effect, mean over {len(self.pairs)} pairs of cells"
        without, with_cell = self.pairs[0]
        prefix = {ALONE: "alone: ", FULL_RECIPE: "in the full recipe: "}.get(self.kind, "")
        return f"{prefix}`{with_cell}` vs `{without}`"


def matched_pairs(data: GridData, technique: str) -> list[tuple[str, str]]:
    """(without, with) cells whose technique sets differ by exactly ``technique``, both with finished runs.

    When several cells share a technique set (e.g. ``tta`` and ``baseline`` in the chapter grid are both
    checked below), each set is represented by its first finished cell in grid order.
    """
    finished = [(c, data.technique_set(c)) for c in data.cells if data.values(c, keys.FINAL_ACCURACY)]
    return pairing.matched_pairs(finished, technique)


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
    compared = [comparison.compare_pair(data, technique, w, wo) for wo, w in pairs]
    budgets = (cell_budget(data, pairs[0][0]), cell_budget(data, pairs[0][1]))
    longer = None
    for wo, w in pairs:
        e_without, e_with = cell_budget(data, wo).epochs, cell_budget(data, w).epochs
        if None not in (e_without, e_with) and e_without != e_with:
            longer = bool(e_with > e_without)  # type: ignore[operator]
            break
    time_ratio = comparison.wall_time_ratio(data, pairs)
    common = dict(
        technique=technique,
        pairs=tuple(pairs),
        kind=_kind(data, pairs),
        time_ratio=time_ratio,
        equal_budget=longer is None,
        comparisons=tuple(compared),
        budgets=budgets,
        longer=longer,
    )
    usable = [c for c in compared if c.diff is not None]
    if not usable:
        reason = next((c.reason for c in compared if c.reason), "no finished runs on both sides")
        none = stats.Difference(math.nan, math.nan, math.nan, 0, "none", math.nan)
        return TechniqueEffect(accuracy=none, seeds=(), reason=reason, **common)  # type: ignore[arg-type]
    seeds = stats.paired_seeds(*(c.values_with for c in usable), *(c.values_without for c in usable)) or []
    if seeds:
        # per seed: mean over pairs with the technique vs without it (mean of differences = difference of means)
        with_mean = [stats.mean([c.values_with[s] for c in usable]) for s in seeds]
        without_mean = [stats.mean([c.values_without[s] for c in usable]) for s in seeds]
        diff = stats.paired_difference(with_mean, without_mean)
    elif len(usable) == 1:  # the two cells ran different seeds: Welch
        diff = usable[0].diff
        assert diff is not None
    else:
        deltas = [c.diff.delta for c in usable if c.diff is not None]
        diff = stats.Difference(stats.mean(deltas), math.nan, math.nan, 0, "none", math.nan)
    return TechniqueEffect(accuracy=diff, seeds=tuple(seeds), **common)  # type: ignore[arg-type]


def technique_effects(data: GridData) -> list[TechniqueEffect]:
    """The effect of every technique the grid can isolate, in the registry's order."""
    return [e for e in (technique_effect(data, t) for t in ordered(data.techniques_used())) if e is not None]


def _equal_or(values: tuple[object, object], fmt: object = format_count) -> str:
    """``equal (12,800)`` or ``12,800 vs 6,400`` (without vs with); ``-`` when unknown."""
    a, b = values
    if a is None or b is None:
        return "-"
    f = fmt if callable(fmt) else str
    return f"equal ({f(a)})" if a == b else f"{f(a)} → {f(b)}"


def budget_cells(e: TechniqueEffect) -> list[str]:
    """The effects table's budget columns for ``e``: epochs, optimizer steps, images seen (without → with)."""
    if e.budgets is None or len(e.pairs) > 1:
        return ["equal" if e.equal_budget else "⚠ differs", "-", "-"]
    without, with_ = e.budgets
    epochs = _equal_or((without.epochs, with_.epochs), str)
    return [epochs if e.equal_budget else f"⚠ {epochs}", _equal_or((without.steps, with_.steps)),
            _equal_or((without.images, with_.images))]  # fmt: skip


def effects_markdown(effects: list[TechniqueEffect], band: float = verdicts.DEFAULT_BAND) -> str:
    """The effects table: technique, pairs, metric, effect with CI, verdict, time, budget."""
    rows = []
    for e in effects:
        rows.append(
            [
                f"`{e.technique}`",
                e.context,
                e.metric,
                format_difference(e.accuracy),
                e.verdict(band).text,
                format_ratio(e.time_ratio),
                *budget_cells(e),
                ", ".join(str(s) for s in e.seeds) or "-",
            ]
        )
    header = ["technique", "measured as", "metric", "effect [95% CI]", "verdict", "wall time", "epochs",
              "optimizer steps", "images seen", "seeds"]  # fmt: skip
    return pipe_table(header, rows, align="llllllllll")


def effect_notes(effects: list[TechniqueEffect], band: float = verdicts.DEFAULT_BAND) -> list[str]:
    """The footnotes under the effects table."""
    judged = [(e.technique, judged_by(e.technique)) for e in effects if judged_by(e.technique)]
    by_own = ""
    if judged:
        named = listing([f"`{t}` by `{key}`" for t, key in judged])
        by_own = (
            f" Techniques judged by a metric of their own ({named}) are measured on it when both cells logged it; "
            "one that changes evaluation only is measured on it against the plain accuracy of the identically "
            "trained cell; every other technique on the plain accuracy, on both sides (the `metric` column)."
        )
    notes = [
        "effect: the metric with the technique minus without it, in accuracy points (1 point = 0.01 accuracy), "
        "over the pairs of cells (a *cell* is one recipe of the grid, trained once per seed) that differ by that "
        f"technique only; mean of the per-seed effects with a Student-t 95% interval, paired by seed.{by_own}",
        f"verdict: **helps** / **hurts** when the interval excludes zero; *no effect larger than ±{format_band(band)}*"
        f" when it lies inside ±{format_band(band)} (the practical-equivalence band); *inconclusive* when it crosses "
        "zero and the band; *confounded* when the two cells trained different numbers of epochs.",
        "wall time: with / without, ratio of the mean wall times over seeds (0.80x: the technique saves 20 % of the "
        "run). Epochs, optimizer steps (`total_steps`) and images seen (epochs × (n_train // batch size) × batch "
        "size, summed over stages) are without → with: equal epochs need not mean equal steps or images.",
    ]
    if any(not e.equal_budget for e in effects):
        unequal = ", ".join(f"`{e.technique}`" for e in effects if not e.equal_budget)
        notes.append(
            f"⚠ epochs differ within the pairs of {unequal}: those effects include a longer or shorter schedule "
            f"(the chapter's recipes do this; the `{verdicts.EQUAL_BUDGET_GRID}` grid gives every cell the same "
            "number of epochs)."
        )
    if any(len(e.pairs) > 1 for e in effects):
        notes.append(
            "main effect: the technique's effect averaged over every combination of the other techniques in the "
            "grid; a technique that only helps together with another shows a smaller main effect than its best pair."
        )
    reasons = [f"`{e.technique}`: {e.reason}." for e in effects if e.reason]
    notes += reasons
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
