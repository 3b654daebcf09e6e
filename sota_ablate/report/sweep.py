"""The numbers of a sweep grid: accuracy against the swept value per arm, the difference from the reference arm at
each value, the crossover value and the trend of the difference.

A sweep grid's cell runs carry ``schema.SWEEP_KEY`` / ``SWEEP_VALUE`` / ``SWEEP_ARM`` / ``SWEEP_REFERENCE`` (and
``BUDGET_UNIT`` for a budget grid); cells are named ``<arm>@<value>``. Pure functions of a ``GridData`` (no
figures, no markdown):

- **at each value** an arm's cell is compared with the reference arm's cell of the same value by ``comparison``'s
  one rule (the technique's ``judged_by`` metric when the two differ by one technique and both logged it, else the
  plain accuracy), paired by seed on the seeds both ran (``stats.paired_seeds``; else Welch): ``stats.compare``, the summary's Δ;
- **the crossover** (``crossover``): the smallest swept value ``b`` such that at *every* value ``>= b`` of the
  sweep the difference's 95% interval lies entirely above zero; "not reached up to <largest value>" otherwise. A
  value without an interval (one seed, a zero-width interval, a cell that did not finish) breaks the run. The
  same rule with "below zero" says from where an arm reliably *costs* accuracy;
- **the trend** (``trend``): how the difference changes per unit of the swept value: for each seed, the
  least-squares slope of that seed's differences against the value (``scipy.stats.linregress``), then the mean of
  the per-seed slopes with its Student-t 95% interval over seeds (``stats.summarize``, n - 1 degrees of freedom),
  so the pairing by seed is kept and no two points of one seed are counted as independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import scipy.stats

from sota_ablate import schema
from sota_ablate.report import comparison, keys, stats, verdicts
from sota_ablate.report.collect import GridData

BUDGET_KEY = "epochs"  # the sweep key of a budget grid
ABOVE, BELOW, NOT_REACHED = "above", "below", "not_reached"
EQUAL_WITHIN = 0.01  # a compute quantity is "equal" between arms when every ratio to the reference is within 1 %


@dataclass(frozen=True)
class Point:
    """One arm at one swept value.

    Attributes:
        arm, value, cell: the arm, its value (a number when the sweep's values are, else the tag's string) and
            the cell (``<arm>@<value>``).
        accuracy: the plain final accuracy over the complete seeds (``stats.Summary``).
        seeds: seed -> plain final accuracy.
        diff: this arm minus the reference at the same value (None for the reference, or not comparable).
        metric: what ``diff`` is measured on (``accuracy``, ``tta_accuracy``).
        per_seed_diff: seed -> this arm's value minus the reference's (paired seeds only).
        flops, wall_time, images, steps: means over seeds of the logged training FLOPs, wall time (s), training
            images and optimizer steps (NaN: not logged); epochs: the cell's epochs over every stage.
    """

    arm: str
    value: float | str
    cell: str
    accuracy: stats.Summary
    seeds: dict[int, float]
    diff: stats.Difference | None
    metric: str
    per_seed_diff: dict[int, float]
    flops: float
    wall_time: float
    images: float
    steps: float
    epochs: int | None


@dataclass(frozen=True)
class Crossover:
    """Where an arm's difference from the reference becomes reliable: ``kind`` ``above`` (from ``value`` on, every
    interval lies above zero), ``below`` (every one below zero) or ``not_reached`` (``value`` None)."""

    kind: str
    value: float | str | None


@dataclass(frozen=True)
class Trend:
    """The difference's slope per unit of the swept value: mean of per-seed least-squares slopes, with its t
    interval over seeds (``ci_low``/``ci_high`` NaN with fewer than two seeds); ``n``: the seeds."""

    slope: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def has_ci(self) -> bool:
        return not (math.isnan(self.ci_low) or math.isnan(self.ci_high))

    @property
    def direction(self) -> str:
        """``grows`` (interval above zero), ``shrinks`` (below) or ``unclear``."""
        if self.has_ci and self.ci_low > 0:
            return "grows"
        if self.has_ci and self.ci_high < 0:
            return "shrinks"
        return "unclear"


@dataclass(frozen=True)
class Arm:
    """One arm of the sweep: its points in sweep order, its crossover and trend (None for the reference)."""

    name: str
    points: tuple[Point, ...]
    crossover: Crossover | None = None
    trend: Trend | None = None


@dataclass(frozen=True)
class Sweep:
    """A sweep grid's numbers.

    Attributes:
        key: the swept key (``epochs`` for a budget grid).
        unit: ``epochs`` / ``flops`` for a budget grid (``budget_unit``), else empty.
        reference: the reference arm.
        values: the swept values, in increasing order (numbers) or grid order (strings).
        numeric: every value is a number (the trend needs it).
        arms: the reference first, then the others in grid order.
    """

    key: str
    unit: str
    reference: str
    values: tuple[float | str, ...]
    numeric: bool
    arms: tuple[Arm, ...]

    @property
    def is_budget(self) -> bool:
        """A sweep over the training budget (the chapter's statements about epochs apply)."""
        return self.key == BUDGET_KEY

    @property
    def compared(self) -> tuple[Arm, ...]:
        """Every arm but the reference."""
        return tuple(a for a in self.arms if a.name != self.reference)

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _tag(data: GridData, cell: str, key: str) -> str | None:
    return _text(data.first(cell, keys.tag(key)))


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def format_value(value: float | str | None) -> str:
    """A swept value as the grid wrote it: ``20``, ``0.5``, ``xresnet18``."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pair(data: GridData, cell: str, reference: str) -> tuple[dict[int, float], dict[int, float], str]:
    """(cell's values, reference's values, metric) by ``comparison``'s one rule (``cell_delta``'s numbers)."""
    differing = data.technique_set(cell) ^ data.technique_set(reference)
    if len(differing) == 1:
        technique = next(iter(differing))
        if technique in data.technique_set(cell):
            c = comparison.compare_pair(data, technique, cell, reference)
            return c.values_with, c.values_without, c.metric
        c = comparison.compare_pair(data, technique, reference, cell)
        return c.values_without, c.values_with, c.metric
    key = keys.FINAL_ACCURACY
    return data.values(cell, key), data.values(reference, key), comparison.metric_label(comparison.PLAIN)


def _mean_of(data: GridData, cell: str, column: str) -> float:
    return stats.mean(list(data.values(cell, column).values()))


def _point(data: GridData, arm: str, value: float | str, cell: str, reference_cell: str | None) -> Point:
    seeds = data.values(cell, keys.FINAL_ACCURACY)
    diff, metric, per_seed = None, comparison.metric_label(comparison.PLAIN), {}
    if reference_cell is not None and reference_cell != cell:
        a, b, metric = _pair(data, cell, reference_cell)
        if a and b:
            diff = stats.compare(a, b)
            per_seed = {s: a[s] - b[s] for s in a if s in b} if set(a) == set(b) else {}
    return Point(
        arm=arm,
        value=value,
        cell=cell,
        accuracy=stats.summarize(list(seeds.values())),
        seeds=seeds,
        diff=diff,
        metric=metric,
        per_seed_diff=per_seed,
        flops=_mean_of(data, cell, keys.param(schema.TRAIN_FLOPS)),
        wall_time=_mean_of(data, cell, keys.WALL_TIME),
        images=_mean_of(data, cell, keys.param(schema.TRAIN_IMAGES)),
        steps=_mean_of(data, cell, keys.param(schema.OPTIMIZER_STEPS)),
        epochs=comparison.cell_budget(data, cell).epochs,
    )


def reliable(diff: stats.Difference | None, side: str) -> bool:
    """The difference's 95% interval lies above (``side = ABOVE``) or below zero; a missing, one-seed or
    zero-width interval is never reliable."""
    if diff is None or not diff.has_ci or verdicts.is_degenerate(diff):
        return False
    return diff.ci_low > 0 if side == ABOVE else diff.ci_high < 0


def crossover(points: Sequence[tuple[float | str, stats.Difference | None]]) -> Crossover:
    """The crossover of one arm from its (value, difference) pairs in sweep order: the smallest value from which
    every difference is reliably above zero (``ABOVE``), else the smallest from which every one is reliably below
    (``BELOW``), else ``NOT_REACHED``. A value whose difference is None (not compared) breaks the run."""
    for side in (ABOVE, BELOW):
        start = None
        for value, diff in reversed(list(points)):
            if not reliable(diff, side):
                break
            start = value
        if start is not None:
            return Crossover(side, start)
    return Crossover(NOT_REACHED, None)


def trend(per_seed: Sequence[tuple[float, dict[int, float]]]) -> Trend | None:
    """The slope of the difference against the swept value from (value, seed -> difference) pairs: per seed with
    at least two distinct values, ``scipy.stats.linregress``'s slope; then their mean and t interval over seeds.
    None when no seed has two values."""
    by_seed: dict[int, list[tuple[float, float]]] = {}
    for value, diffs in per_seed:
        for seed, d in diffs.items():
            by_seed.setdefault(seed, []).append((float(value), d))
    slopes = []
    for points in by_seed.values():
        xs, ys = [x for x, _ in points], [y for _, y in points]
        if len(set(xs)) >= 2:
            slopes.append(float(scipy.stats.linregress(xs, ys).slope))
    if not slopes:
        return None
    s = stats.summarize(slopes)
    return Trend(s.mean, s.ci_low, s.ci_high, s.n)


def _first_tag(data: GridData, key: str) -> str | None:
    value = _text(data.parent.get(keys.tag(key)))
    if value:
        return value
    for cell in data.cells:
        found = _tag(data, cell, key)
        if found:
            return found
    return None


def sweep_of(data: GridData) -> Sweep | None:
    """The sweep of a grid whose runs carry ``sweep_key`` (None for any other grid)."""
    key = _first_tag(data, schema.SWEEP_KEY)
    if key is None:
        return None
    reference = _first_tag(data, schema.SWEEP_REFERENCE) or "baseline"
    unit = _first_tag(data, schema.BUDGET_UNIT) or ""
    placed: dict[tuple[str, str], str] = {}
    arms: list[str] = []
    raw: list[str] = []
    for cell in data.cells:
        arm, value = _tag(data, cell, schema.SWEEP_ARM), _tag(data, cell, schema.SWEEP_VALUE)
        if (arm is None or value is None) and "@" in cell:  # a cell without runs yet: its name says it
            arm, value = cell.rsplit("@", 1)
        if arm is None or value is None:
            continue
        placed.setdefault((arm, value), cell)
        arms += [arm] if arm not in arms else []
        raw += [value] if value not in raw else []
    numbers = [_number(v) for v in raw]
    numeric = bool(raw) and all(n is not None for n in numbers)
    order = sorted(raw, key=lambda v: _number(v) or 0.0) if numeric else raw
    values: list[float | str] = [float(v) if numeric else v for v in order]
    ordered_arms = [reference] * (reference in arms) + [a for a in arms if a != reference]
    built = []
    for arm in ordered_arms:
        points = []
        for text, value in zip(order, values, strict=True):
            cell = placed.get((arm, text))
            if cell is not None:
                points.append(_point(data, arm, value, cell, placed.get((reference, text))))
        if arm == reference:
            built.append(Arm(arm, tuple(points)))
            continue
        by_value = {p.value: p.diff for p in points}
        found = crossover([(v, by_value.get(v)) for v in values])
        slope = trend([(float(p.value), p.per_seed_diff) for p in points]) if numeric else None
        built.append(Arm(arm, tuple(points), found, slope))
    return Sweep(key, unit, reference, tuple(values), numeric, tuple(built))


@dataclass(frozen=True)
class Equalised:
    """One compute quantity across a budget grid: ``equal`` when every arm's mean is within ``EQUAL_WITHIN`` of the
    reference's at every value; ``ratios``: arm -> (smallest, largest) ratio arm / reference over the values."""

    name: str
    equal: bool
    ratios: dict[str, tuple[float, float]]


COMPUTE = (("training FLOPs", "flops"), ("epochs", "epochs"), ("optimizer steps", "steps"),
           ("training images", "images"), ("wall time", "wall_time"))  # fmt: skip


def equalised(sweep: Sweep) -> list[Equalised]:
    """For each logged compute quantity (FLOPs, epochs, steps, images, wall time): whether the arms matched the
    reference at every value, with the range of their ratios."""
    reference = sweep.arm(sweep.reference)
    if reference is None:
        return []
    ref = {p.value: p for p in reference.points}
    out = []
    for name, attribute in COMPUTE:
        ratios: dict[str, tuple[float, float]] = {}
        for arm in sweep.compared:
            found = []
            for p in arm.points:
                mine, theirs = getattr(p, attribute), getattr(ref[p.value], attribute) if p.value in ref else None
                if mine is None or theirs is None or math.isnan(float(mine)) or math.isnan(float(theirs)) or not theirs:
                    continue
                found.append(float(mine) / float(theirs))
            if found:
                ratios[arm.name] = (min(found), max(found))
        if ratios:
            equal = all(abs(lo - 1) <= EQUAL_WITHIN and abs(hi - 1) <= EQUAL_WITHIN for lo, hi in ratios.values())
            out.append(Equalised(name, equal, ratios))
    return out
