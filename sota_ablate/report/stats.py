"""Statistics for the report: mean, sample std, Student-t 95% confidence intervals, differences between cells.

Pure functions on plain numbers (no pandas; the t distribution is scipy's). Two cells are compared by a
**paired** difference on the seeds both ran, when one ran all the seeds of the other (seed ``k`` shares the
initialisation, data order and augmentation draws in both cells, so the per-seed differences cancel most of the
seed-to-seed noise; a cell with extra ``--precision`` seeds is paired on the other's: ``paired_seeds``), otherwise by **Welch**'s unequal-variance t interval. With a single seed (or a single run on either side) there is no
interval: the seed-to-seed spread is unknown.

The intervals are ``mean +- t.ppf(0.975, df) * standard error``: the numbers ``scipy.stats.ttest_rel(a, b)`` and
``ttest_ind(a, b, equal_var=False)`` give with ``.confidence_interval()``, written out so that a zero spread
gives the zero-width interval (scipy's is NaN there) and a single seed gives none.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and t confidence interval of ``n`` values (std/CI NaN when n < 2)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Difference:
    """``a - b`` with its confidence interval.

    Attributes:
        delta: the mean difference (paired: mean of per-seed differences; Welch: difference of the means).
        ci_low, ci_high: the interval (NaN when it cannot be computed).
        n: pairs (paired), else the smaller of the two sample sizes.
        method: ``"paired"``, ``"welch"`` or ``"none"`` (no interval: too few runs).
        df: degrees of freedom of the t quantile (NaN for ``"none"``).
        sd: the sample standard deviation of the per-seed differences (paired only; else NaN).
    """

    delta: float
    ci_low: float
    ci_high: float
    n: int
    method: str
    df: float
    sd: float = math.nan

    @property
    def has_ci(self) -> bool:
        return self.method != "none" and not math.isnan(self.ci_low)

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.has_ci and (self.ci_low > 0 or self.ci_high < 0)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no values."""
    values = list(values)
    return math.fsum(values) / len(values) if values else math.nan


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator); NaN for fewer than two values."""
    values = list(values)
    if len(values) < 2:
        return math.nan
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def median(values: Sequence[float]) -> float:
    """The median (``numpy.median``); NaN for no values."""
    values = list(values)
    return float(np.median(values)) if values else math.nan


def t_cdf(t: float, df: float) -> float:
    """Student-t cumulative distribution function (``scipy.stats.t.cdf``)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(scipy.stats.t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return float(scipy.stats.t.ppf(p, df))


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, std and the t interval of the mean (``mean +- t * std / sqrt(n)``), ignoring NaNs."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(values)
    m, s = mean(values), std(values)
    if n < 2:
        return Summary(n, m, s, math.nan, math.nan)
    half = t_quantile(0.5 + confidence / 2, n - 1) * s / math.sqrt(n)
    return Summary(n, m, s, m - half, m + half)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """Mean of ``a[i] - b[i]`` and its t interval (n - 1 degrees of freedom)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length ({len(a)} != {len(b)})")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    s = summarize(diffs, confidence)
    if s.n < 2:
        return Difference(s.mean, math.nan, math.nan, s.n, "none", math.nan)
    return Difference(s.mean, s.ci_low, s.ci_high, s.n, "paired", float(s.n - 1), s.std)


def welch_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """``mean(a) - mean(b)`` with Welch's interval (Welch-Satterthwaite degrees of freedom)."""
    na, nb = len(a), len(b)
    delta = mean(a) - mean(b)
    if na < 2 or nb < 2:
        return Difference(delta, math.nan, math.nan, min(na, nb), "none", math.nan)
    va, vb = std(a) ** 2 / na, std(b) ** 2 / nb
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Difference(delta, delta, delta, min(na, nb), "welch", float(na + nb - 2))
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    half = t_quantile(0.5 + confidence / 2, df) * se
    return Difference(delta, delta - half, delta + half, min(na, nb), "welch", df)


def paired_seeds(*seed_sets: Iterable[int]) -> list[int] | None:
    """The seeds cells are compared on, paired: the seeds they all ran, when those are all the seeds of one of
    them (the others ran the same seeds or more) and at least two (or every set is the same: one seed, no
    interval); None when a paired comparison is not possible (Welch instead).

    Seed k shares initialisation and data order in every cell, so pairing by seed removes that shared noise. A
    cell with extra seeds (``run-grid --precision`` runs them only where a comparison needs them) is compared on
    the seeds the other cell also ran; two cells that ran different seeds are not paired (pairing would drop
    seeds of both)."""
    sets = [set(s) for s in seed_sets]
    if not sets:
        return None
    common = set.intersection(*sets)
    if common not in sets or not common:
        return None
    return sorted(common) if len(common) >= 2 or all(s == common for s in sets) else None


def compare(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> Difference:
    """``a - b`` for values keyed by seed: paired on the seeds both ran (``paired_seeds``), else Welch.

    Args:
        a: seed -> value of the cell being measured.
        b: seed -> value of the reference cell (the baseline).
        confidence: the interval's coverage.
    """
    a = {k: float(v) for k, v in a.items() if v is not None and not math.isnan(float(v))}
    b = {k: float(v) for k, v in b.items() if v is not None and not math.isnan(float(v))}
    if not a or not b:
        return Difference(math.nan, math.nan, math.nan, 0, "none", math.nan)
    seeds = paired_seeds(a, b)
    if seeds is not None:
        return paired_difference([a[s] for s in seeds], [b[s] for s in seeds], confidence)
    return welch_difference(list(a.values()), list(b.values()), confidence)


# ---------------------------------------------------------------------------------------------------------------
# Power, probability of improvement, bootstrap

POWER = 0.80


def minimum_detectable_effect(sd: float, n: int, power: float = POWER, confidence: float = CONFIDENCE) -> float:
    """The smallest true paired effect a two-sided paired t test at ``1 - confidence`` detects with probability
    ``power``, for ``n`` pairs whose differences have standard deviation ``sd``:
    ``(t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * sd / sqrt(n)`` (the usual normal-approximation
    formula with Student-t quantiles); NaN for fewer than two pairs or an unknown ``sd``."""
    if n < 2 or math.isnan(sd):
        return math.nan
    df = n - 1
    return (t_quantile(0.5 + confidence / 2, df) + t_quantile(power, df)) * sd / math.sqrt(n)


@dataclass(frozen=True)
class Estimate:
    """A statistic with a bootstrap confidence interval (``ci_low``/``ci_high`` NaN when it cannot be computed)."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def has_ci(self) -> bool:
        return not (math.isnan(self.ci_low) or math.isnan(self.ci_high))


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def _bootstrap_interval(
    samples: tuple[Any, ...], statistic: Callable[..., Any], paired: bool, confidence: float, seed: int
) -> tuple[float, float]:
    """``scipy.stats.bootstrap``'s percentile interval with a seeded generator (NaN, NaN when degenerate)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: scipy warns and returns NaN, which we report
        result = scipy.stats.bootstrap(
            samples,
            statistic,
            paired=paired,
            vectorized=True,
            n_resamples=BOOTSTRAP_RESAMPLES,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def probability_of_improvement(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED
) -> Estimate:
    """P(A > B) as rliable computes it: over every pair (seed of A, seed of B), the fraction where A's value beats
    B's, ties counting 1/2 (the Mann-Whitney U statistic over ``len(a) * len(b)``), with a percentile bootstrap
    interval resampling the seeds of each side independently (seeded)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a) or not len(b):
        return Estimate(math.nan, math.nan, math.nan, 0)

    def statistic(x: Any, y: Any, axis: int = -1) -> Any:
        return scipy.stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic / (
            x.shape[axis] * y.shape[axis]
        )

    value = float(statistic(a, b))
    n = min(len(a), len(b))
    if n < 2:
        return Estimate(value, math.nan, math.nan, n)
    low, high = _bootstrap_interval((a, b), statistic, paired=False, confidence=confidence, seed=seed)
    return Estimate(value, low, high, n)


def bootstrap_mean(
    per_seed: Sequence[Sequence[float]], confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED
) -> Estimate:
    """The mean of per-image values over every seed and image, with a percentile bootstrap interval that resamples
    **validation images jointly across seeds** (``scipy.stats.bootstrap(..., paired=True)``: a resampled image keeps
    its value in every seed). ``per_seed``: one equally long array per seed, image ``i`` the same image in each
    (for a comparison, the per-image difference of the two cells, so the pairing between cells is kept too)."""
    arrays = tuple(np.asarray(v, dtype=float) for v in per_seed)
    if not arrays or not len(arrays[0]):
        return Estimate(math.nan, math.nan, math.nan, 0)

    stacked = np.stack(arrays)
    value = float(stacked.mean())
    if len(arrays[0]) < 2:
        return Estimate(value, math.nan, math.nan, len(arrays[0]))
    low, high = _bootstrap_interval(arrays, _mean_over_seeds, paired=True, confidence=confidence, seed=seed)
    return Estimate(value, low, high, len(arrays[0]))


def _mean_over_seeds(*xs: Any, axis: int = -1) -> Any:
    """The statistic of ``bootstrap_mean``: the mean over seeds (the samples) and images (``axis``)."""
    return np.mean([np.mean(x, axis=axis) for x in xs], axis=0)


def bootstrap_statistic(
    per_seed: Sequence[Sequence[Any]],
    statistic: Callable[[Sequence[Any]], float],
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:
    """Any per-image statistic (e.g. a calibration error difference) with the images-jointly-across-seeds
    percentile bootstrap of ``bootstrap_mean``: ``statistic`` gets the resampled image indices' rows of every
    seed's array (``per_seed[s][indices]``) and returns a number; the estimate is ``statistic`` on all images."""
    arrays = [np.asarray(v) for v in per_seed]
    if not arrays or not len(arrays[0]):
        return Estimate(math.nan, math.nan, math.nan, 0)
    n = len(arrays[0])
    value = float(statistic(arrays))
    if n < 2:
        return Estimate(value, math.nan, math.nan, n)

    def resampled(index: Any, axis: int = -1) -> Any:
        index = np.asarray(index, dtype=int)
        if index.ndim == 1:
            return statistic([x[index] for x in arrays])
        return np.array([statistic([x[row] for x in arrays]) for row in index])

    low, high = _bootstrap_interval((np.arange(n),), resampled, paired=False, confidence=confidence, seed=seed)
    return Estimate(value, low, high, n)
