"""One rule for comparing two cells, used wherever a comparison appears (the summary's Δ, the effects table, the
verdict table, the sections), so that the same pair of cells always gets the same number:

- a technique's effect is measured on the technique's ``judged_by`` metric when it has one and **both** sides
  logged it (the same metric on both sides), otherwise on the plain accuracy;
- a technique that does not train (``trains = False``: TTA) makes two cells that train identically, so their
  plain accuracies are equal by construction: they are compared on what differs, the technique's ``judged_by``
  metric of the cell with it against the plain accuracy of the identically trained cell without it, or not at all
  (never a zero-width interval presented as evidence);
- two cells that differ by several techniques are compared on the plain accuracy.

Also the training budget of a cell, beyond its epochs: optimizer steps (the ``total_steps`` param) and images seen
(over the stages: ``epochs x (n_train // batch_size) x batch_size``, the loader dropping the last partial batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sota_ablate import pairing, schema
from sota_ablate.report import keys, stats
from sota_ablate.report.collect import GridData
from sota_ablate.techniques import TECHNIQUES

PLAIN = pairing.PLAIN


def total_epochs(stages: Any, fallback: int | None = None) -> int | None:
    """Epochs over every stage of the logged ``stages`` param (``fallback`` when none were logged)."""
    if isinstance(stages, list) and stages:
        return sum(int(st.get("epochs", 0)) for st in stages)
    return fallback


def _as_int(value: Any) -> int | None:
    """A logged count as an int (params come back as Python or numpy numbers); None when it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else int(number)


def images_seen(stages: Any, n_train: Any) -> int | None:
    """Training images the optimizer saw: sum over stages of ``epochs x (n_train // bs) x bs``."""
    n_train = _as_int(n_train)
    if not isinstance(stages, list) or not stages or n_train is None:
        return None
    total = 0
    for st in stages:
        bs = int(st.get("batch_size", 0) or 0)
        if bs <= 0:
            return None
        total += int(st.get("epochs", 0)) * (int(n_train) // bs) * bs
    return total


@dataclass(frozen=True)
class Budget:
    """What a cell trained: epochs, optimizer steps, images seen (None: not logged)."""

    epochs: int | None
    steps: int | None
    images: int | None


def cell_budget(data: GridData, cell: str) -> Budget:
    stages = data.first(cell, keys.param(schema.STAGES))
    epochs = total_epochs(stages, fallback=data.first(cell, keys.param(schema.train_param("epochs"))))
    steps = data.first(cell, keys.param(schema.TOTAL_STEPS))
    n_train = data.first(cell, keys.param(schema.data_param("n_train")))
    if n_train is None:
        n_train = data.parent_param(schema.data_param("n_train"))
    return Budget(epochs, _as_int(steps), images_seen(stages, n_train))


judged_by = pairing.judged_by
trains = pairing.trains


def metric_label(key: str) -> str:
    """How a metric is named in tables: ``accuracy`` for the plain accuracy, else its key."""
    return "accuracy" if key == PLAIN else key


@dataclass(frozen=True)
class Comparison:
    """``with_cell`` against ``without_cell`` on the metrics the rule picks.

    Attributes:
        technique: the technique the two cells differ by (None: several).
        key_with, key_without: the summary metric of each side (``final_accuracy``, ``tta_accuracy``); None when
            the pair is not compared (``reason`` says why).
        diff: with minus without (paired by seed, else Welch); None when not compared.
        reason: why the pair is not compared (empty when it is).
    """

    with_cell: str
    without_cell: str
    technique: str | None
    key_with: str | None
    key_without: str | None
    values_with: dict[int, float]
    values_without: dict[int, float]
    diff: stats.Difference | None
    reason: str = ""

    @property
    def metric(self) -> str:
        """The metric in words: ``accuracy``, ``tta_accuracy`` or ``tta_accuracy vs accuracy``."""
        if self.key_with is None or self.key_without is None:
            return "-"
        if self.key_with == self.key_without:
            return metric_label(self.key_with)
        return f"{metric_label(self.key_with)} vs {metric_label(self.key_without)}"


def _values(data: GridData, cell: str, key: str) -> dict[int, float]:
    return data.values(cell, keys.metric(key))


def technique_metrics(data: GridData, technique: str, with_cell: str, without_cell: str) -> tuple[Any, Any, str]:
    """(key with, key without, reason) for measuring ``technique`` between the two cells (keys None: not
    compared, ``reason`` says why)."""
    judged = judged_by(technique)
    judged_with = bool(judged and _values(data, with_cell, judged))
    judged_without = bool(judged and _values(data, without_cell, judged))
    key_with, key_without = pairing.metric_keys(technique, judged_with, judged_without)
    if key_with is None:
        return (
            None,
            None,
            f"`{technique}` changes evaluation only, so `{with_cell}` and `{without_cell}` train identically, and "
            f"`{with_cell}` logged no {judged or 'metric of its own'}: not compared",
        )
    return key_with, key_without, ""


def compare_pair(data: GridData, technique: str, with_cell: str, without_cell: str) -> Comparison:
    """``technique``'s effect between two cells that differ by it alone (``with_cell`` has it)."""
    key_with, key_without, reason = technique_metrics(data, technique, with_cell, without_cell)
    if key_with is None or key_without is None:
        return Comparison(with_cell, without_cell, technique, None, None, {}, {}, None, reason)
    a, b = _values(data, with_cell, key_with), _values(data, without_cell, key_without)
    diff = stats.compare(a, b) if a and b else None
    return Comparison(with_cell, without_cell, technique, key_with, key_without, a, b, diff)


def negated(diff: stats.Difference | None) -> stats.Difference | None:
    """``b - a`` from ``a - b``."""
    if diff is None:
        return None
    return stats.Difference(-diff.delta, -diff.ci_high, -diff.ci_low, diff.n, diff.method, diff.df, diff.sd)


@dataclass(frozen=True)
class CellDelta:
    """A cell against the reference, as the summary shows it: ``diff`` is cell minus reference, ``metric`` what it
    was measured on, ``reason`` why it was not (empty when it was)."""

    diff: stats.Difference | None
    metric: str
    reason: str = ""
    cell_mean: float = math.nan
    reference_mean: float = math.nan


def _mean(values: dict[int, float]) -> float:
    return stats.mean(list(values.values()))


def cell_delta(data: GridData, cell: str, reference: str) -> CellDelta:
    """``cell`` minus ``reference``: by the technique rule when they differ by one technique (so the summary's Δ is
    the effects table's number, with the sign of the summary's direction), else on the plain accuracy."""
    cell_set, ref_set = data.technique_set(cell), data.technique_set(reference)
    differing = cell_set ^ ref_set
    if len(differing) == 1:
        technique = next(iter(differing))
        if technique in cell_set:
            c = compare_pair(data, technique, cell, reference)
            return CellDelta(c.diff, c.metric, c.reason, _mean(c.values_with), _mean(c.values_without))
        c = compare_pair(data, technique, reference, cell)
        metric = c.metric
        if c.key_with is not None and c.key_without is not None and c.key_with != c.key_without:
            metric = f"{metric_label(c.key_without)} vs {metric_label(c.key_with)}"  # the summary's direction
        return CellDelta(negated(c.diff), metric, c.reason, _mean(c.values_without), _mean(c.values_with))
    a, b = _values(data, cell, PLAIN), _values(data, reference, PLAIN)
    return CellDelta(stats.compare(a, b) if a and b else None, metric_label(PLAIN), "", _mean(a), _mean(b))


def wall_time_ratio(data: GridData, pairs: list[tuple[str, str]]) -> float:
    """Wall time with / without: per pair the ratio of the mean wall times over seeds, averaged over pairs (for one
    pair, the same ratio as the sections' sentences)."""
    ratios = []
    for without, with_cell in pairs:
        t_with = list(data.values(with_cell, keys.WALL_TIME).values())
        t_without = list(data.values(without, keys.WALL_TIME).values())
        if t_with and t_without and stats.mean(t_without) > 0:
            ratios.append(stats.mean(t_with) / stats.mean(t_without))
    return stats.mean(ratios) if ratios else math.nan


def prediction_array(key: str | None) -> str | None:
    """The ``predictions.npz`` array a summary metric is computed from: ``plain`` for the plain accuracy, the name
    of the technique whose ``judged_by`` it is otherwise (``tta_accuracy`` -> ``tta``); None when unknown."""
    if key == PLAIN:
        return "plain"
    for name, cls in TECHNIQUES.entries().items():
        if key is not None and cls.judged_by == key:
            return name
    return None
