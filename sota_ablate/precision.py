"""Seeds chosen for the precision asked: ``run-grid --precision H [--max-seeds N]``, by Stein's two-stage procedure.

The grid's own seeds are the **pilot** (at least ``MIN_PILOT``). For every comparison the grid makes (a
technique's effect over its matched pairs of cells, ``pairing.py``: the report's effects table), the pilot's
per-seed effects (accuracy points, paired by seed) have a sample standard deviation ``s0`` over ``n0`` seeds.
Stein (1945) fixes the total number of seeds from the pilot alone:

    n = max(n0, ceil((t_{0.975, n0 - 1} * s0 / H)^2))

and the 95% interval after the second stage is ``mean_n +- t_{0.975, n0 - 1} * s0 / sqrt(n)``: the quantile and
``s0`` stay the pilot's, so the coverage holds although ``n`` depends on the data, and the half-width is at most
``H`` by construction. ``n`` is capped at ``--max-seeds`` (default ``DEFAULT_MAX_SEEDS``); a capped comparison's
half-width is ``t * s0 / sqrt(cap)``, larger than ``H``, and the report says so. A pilot without spread
(``s0 = 0``) needs no more seeds: ``n = n0``.

A sweep grid's comparisons are value by value (``pairing.sweep_pairs``): each arm's cell against the reference's
cell at the same value, one plan each, named by the arm's cell (``mixup@20``).

The extra seeds are the next integers after the largest pilot seed; a cell trains as many of them as the
comparison that needs the most among those it belongs to (both sides of every pair), so they stay paired. Given
the pilot's results the plan is deterministic: a rerun of the same command plans the same extra cell runs and
finds them finished.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import scipy.stats

from sota_ablate import pairing
from sota_ablate.grid import GridError
from sota_ablate.techniques import ordered

PROCEDURE = "Stein (1945) two-stage"
CONFIDENCE = 0.95
MIN_PILOT = 3
DEFAULT_MAX_SEEDS = 10
POINTS = 100.0  # accuracy points per unit of accuracy

# cell -> metric key -> seed -> value (accuracy, not points)
Values = Mapping[str, Mapping[str, Mapping[int, float]]]


class PrecisionError(GridError):
    """``--precision``/``--max-seeds`` that cannot be planned; the message names the fix."""


@dataclass(frozen=True)
class Target:
    """What ``--precision`` asks: 95% intervals of half-width at most ``half_width`` accuracy points, with at most
    ``max_seeds`` seeds per cell."""

    half_width: float
    max_seeds: int = DEFAULT_MAX_SEEDS


def check_target(target: Target, pilot_seeds: int) -> None:
    """Refuse a target that cannot be planned, naming the fix."""
    if not (math.isfinite(target.half_width) and target.half_width > 0):
        raise PrecisionError(
            f"--precision {target.half_width}: use a positive number of accuracy points, e.g. --precision 1"
        )
    if pilot_seeds < MIN_PILOT:
        raise PrecisionError(
            f"--precision needs a pilot of at least {MIN_PILOT} seeds (the grid runs {pilot_seeds}): pass e.g. "
            "--seeds 0,1,2"
        )
    if isinstance(target.max_seeds, bool) or not isinstance(target.max_seeds, int) or target.max_seeds < pilot_seeds:
        raise PrecisionError(
            f"--max-seeds {target.max_seeds}: use an integer at least the number of the grid's seeds "
            f"({pilot_seeds}), e.g. --max-seeds {max(DEFAULT_MAX_SEEDS, pilot_seeds)}"
        )


def t_quantile(n0: int) -> float:
    """``t_{0.975, n0 - 1}``: the two-sided 95% Student-t quantile of the pilot (``scipy.stats.t.ppf``)."""
    return float(scipy.stats.t.ppf(0.5 + CONFIDENCE / 2, n0 - 1))


@dataclass(frozen=True)
class SteinPlan:
    """One comparison's two-stage plan.

    Attributes:
        n0: pilot seeds.
        s0: sample standard deviation of the pilot's per-seed effects, in points.
        t: ``t_{0.975, n0 - 1}``.
        needed: the seeds Stein's rule asks for (uncapped).
        planned: ``needed`` capped at ``max_seeds``.
        target: the half-width asked, in points.
        max_seeds: the cap.
    """

    n0: int
    s0: float
    t: float
    needed: int
    planned: int
    target: float
    max_seeds: int

    @property
    def capped(self) -> bool:
        return self.needed > self.planned

    def half_width(self, n: int) -> float:
        """The Stein interval's half-width with ``n`` seeds (points): ``t * s0 / sqrt(n)``."""
        return self.t * self.s0 / math.sqrt(n) if n > 0 else math.nan


def stein_plan(pilot: Sequence[float], target: float, max_seeds: int) -> SteinPlan:
    """The total seeds for a half-width of ``target`` points from the pilot's per-seed effects (points)."""
    n0 = len(pilot)
    if n0 < 2:
        raise PrecisionError(f"a two-stage plan needs at least 2 pilot seeds, got {n0}")
    mean = math.fsum(pilot) / n0
    s0 = math.sqrt(math.fsum((x - mean) ** 2 for x in pilot) / (n0 - 1))
    t = t_quantile(n0)
    needed = max(n0, math.ceil((t * s0 / target) ** 2)) if s0 > 0 else n0
    return SteinPlan(n0, s0, t, needed, min(needed, max(max_seeds, n0)), target, max_seeds)


@dataclass(frozen=True)
class ComparisonPlan:
    """A comparison of the grid (a technique over its matched pairs; in a sweep, one arm's cell against the
    reference's at the same value) and its plan (None: not comparable). ``name``: the sweep cell (``mixup@20``),
    empty for a technique comparison; ``technique`` decides the metric (``""``: the plain accuracy)."""

    technique: str
    pairs: tuple[tuple[str, str], ...]
    metric: str
    plan: SteinPlan | None
    reason: str = ""
    name: str = ""

    @property
    def label(self) -> str:
        """What the comparison is called in messages, metrics and the report: the technique or the sweep cell."""
        return self.name or self.technique

    @property
    def cells(self) -> set[str]:
        return {c for pair in self.pairs for c in pair}


def _sides(
    technique: str, pairs: Sequence[tuple[str, str]], values: Values, seeds: Sequence[int] | None
) -> tuple[list[tuple[dict[int, float], dict[int, float]]], str]:
    """Per pair, (with, without) seed -> value on the pair's judged metric (``pairing.metric_keys``), restricted to
    ``seeds`` when given; and the metric in words."""
    judged = pairing.judged_by(technique)
    sides, metrics = [], set()
    for without, with_cell in pairs:
        has_with = bool(judged and values.get(with_cell, {}).get(judged))
        has_without = bool(judged and values.get(without, {}).get(judged))
        key_with, key_without = pairing.metric_keys(technique, has_with, has_without)
        if key_with is None or key_without is None:
            continue
        w, wo = values.get(with_cell, {}).get(key_with, {}), values.get(without, {}).get(key_without, {})
        keep = set(seeds) if seeds is not None else None
        sides.append(
            ({s: v for s, v in w.items() if keep is None or s in keep},
             {s: v for s, v in wo.items() if keep is None or s in keep})
        )  # fmt: skip
        metrics.add(key_with if key_with == key_without else f"{key_with} vs {key_without}")
    return sides, " / ".join(sorted(metrics))


def effect_points(
    technique: str, pairs: Sequence[tuple[str, str]], values: Values, seeds: Sequence[int] | None = None
) -> dict[int, float]:
    """seed -> the technique's per-seed effect in points (mean over its pairs), over ``seeds`` (None: all)."""
    sides, _ = _sides(technique, pairs, values, seeds)
    return {s: POINTS * v for s, v in pairing.per_seed_effect(sides).items()}


def plan_comparisons(
    cells: Sequence[tuple[str, frozenset[str]]],
    values: Values,
    pilot_seeds: Sequence[int],
    target: Target,
    sweep: Mapping[str, tuple[str, str, str]] | None = None,
) -> list[ComparisonPlan]:
    """Every comparison of the grid with its Stein plan from the pilot seeds' values: per technique in the
    registry's order, or, for a sweep grid (``sweep``: cell -> (arm, value, reference arm)), per arm's cell in grid
    order (``pairing.sweep_pairs``)."""
    if sweep:
        wanted = [(t, (pair,), cell) for cell, t, pair in pairing.sweep_pairs(cells, sweep)]
    else:
        techniques = ordered(pairing.techniques_used(cells))
        wanted = [(t, pairs, "") for t in techniques if (pairs := tuple(pairing.matched_pairs(cells, t)))]
    out = []
    for technique, pairs, name in wanted:
        sides, metric = _sides(technique, pairs, values, pilot_seeds)
        pilot = pairing.per_seed_effect(sides)
        if not sides:
            reason = "not comparable (no metric both sides logged)"
            out.append(ComparisonPlan(technique, pairs, "-", None, reason, name))
        elif len(pilot) < len(pilot_seeds):
            out.append(ComparisonPlan(technique, pairs, metric, None, "the pilot did not finish on every seed", name))
        else:
            plan = stein_plan([POINTS * pilot[s] for s in sorted(pilot)], target.half_width, target.max_seeds)
            out.append(ComparisonPlan(technique, pairs, metric, plan, name=name))
    return out


def extra_seeds(pilot_seeds: Sequence[int], count: int) -> list[int]:
    """The ``count`` seeds after the pilot: the next integers after its largest seed."""
    start = max(pilot_seeds) + 1
    return list(range(start, start + max(count, 0)))


def extra_runs(comparisons: Sequence[ComparisonPlan], pilot_seeds: Sequence[int]) -> dict[str, list[int]]:
    """cell -> the extra seeds it trains: as many as the most demanding comparison it is part of needs."""
    need: dict[str, int] = {}
    for c in comparisons:
        if c.plan is None or c.plan.planned <= c.plan.n0:
            continue
        for cell in c.cells:
            need[cell] = max(need.get(cell, 0), c.plan.planned - c.plan.n0)
    return {cell: extra_seeds(pilot_seeds, n) for cell, n in need.items()}


def plan_record(comparisons: Sequence[ComparisonPlan], target: Target, pilot_seeds: Sequence[int]) -> dict:
    """The plan as JSON (the grid run's ``precision.json`` artifact)."""
    return {
        "procedure": PROCEDURE,
        "confidence": CONFIDENCE,
        "target_half_width_points": target.half_width,
        "max_seeds": target.max_seeds,
        "pilot_seeds": list(pilot_seeds),
        "extra_runs": extra_runs(comparisons, pilot_seeds),
        "comparisons": [
            {
                "technique": c.technique,
                **({"cell": c.name} if c.name else {}),
                "pairs": [list(p) for p in c.pairs],
                "metric": c.metric,
                "reason": c.reason,
                **(
                    {
                        "n0": c.plan.n0,
                        "s0_points": c.plan.s0,
                        "t": c.plan.t,
                        "needed": c.plan.needed,
                        "planned": c.plan.planned,
                        "capped": c.plan.capped,
                        "planned_half_width_points": c.plan.half_width(c.plan.planned),
                    }
                    if c.plan is not None
                    else {}
                ),
            }
            for c in comparisons
        ],
    }
