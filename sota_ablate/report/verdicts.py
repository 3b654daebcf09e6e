"""What an effect's interval lets the report say: helps, hurts, no effect larger than the practical-equivalence
band, inconclusive, or confounded by a different training budget; and the grid's minimum detectable effect.

Pure functions of ``stats.Difference`` values (no pandas, no techniques), so a technique's report section can use
them too. The **band** (``r`` accuracy points, default 1) is the size of effect a practitioner would not act on:

- **helps** / **hurts**: the 95% interval excludes zero (and the budgets are equal);
- **no effect larger than ±r points**: the interval lies inside ``[-r, +r]``;
- **inconclusive**: the interval crosses zero and reaches beyond the band: more seeds are needed;
- **confounded by the longer (shorter) schedule**: the two sides trained different budgets, so whatever the
  interval says, it is not the technique's alone (an equal-budget grid answers it);
- **identical on every seed**: zero spread (e.g. two cells that train identically compared on a metric that does
  not differ): no interval, no evidence;
- **unknown**: a single seed (no interval) or nothing to compare.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sota_ablate.report import stats
from sota_ablate.report.formatting import format_band

DEFAULT_BAND = 0.01  # 1 accuracy point, as a fraction

HELPS, HURTS, EQUIVALENT, INCONCLUSIVE, CONFOUNDED, IDENTICAL, UNKNOWN = (
    "helps",
    "hurts",
    "equivalent",
    "inconclusive",
    "confounded",
    "identical",
    "unknown",
)
EQUAL_BUDGET_GRID = "fair"  # the built-in grid that gives every cell the same number of epochs


@dataclass(frozen=True)
class Verdict:
    """``kind`` (one of the constants above) and its words (``text``, markdown)."""

    kind: str
    text: str

    @property
    def decided(self) -> bool:
        """The interval says something about the technique itself (helps, hurts or equivalent)."""
        return self.kind in (HELPS, HURTS, EQUIVALENT)


def is_degenerate(diff: stats.Difference) -> bool:
    """A zero-width interval: every seed gave the same difference (e.g. two identically trained cells on the
    plain accuracy): no spread, so no evidence either way."""
    return diff.has_ci and diff.ci_low == diff.ci_high


def verdict(
    diff: stats.Difference | None,
    band: float = DEFAULT_BAND,
    longer: bool | None = None,
) -> Verdict:
    """The verdict on an effect.

    Args:
        diff: the effect (with minus without) and its interval; None or NaN: not compared.
        band: the practical-equivalence band in accuracy (0.01 = 1 point).
        longer: None when both sides trained the same budget; True when the side with the technique trained the
            longer schedule, False when the shorter.
    """
    if diff is None or math.isnan(diff.delta):
        return Verdict(UNKNOWN, "not compared")
    if longer is not None:
        which = "longer" if longer else "shorter"
        return Verdict(CONFOUNDED, f"confounded by the {which} schedule (equal budget: grid `{EQUAL_BUDGET_GRID}`)")
    if is_degenerate(diff):
        return Verdict(IDENTICAL, "identical on every seed: no interval, no evidence")
    if not diff.has_ci:
        return Verdict(UNKNOWN, "one seed: unknown")
    if diff.ci_low > 0:
        return Verdict(HELPS, "**helps**" + (f" (by less than {format_band(band)})" if diff.ci_high < band else ""))
    if diff.ci_high < 0:
        return Verdict(HURTS, "**hurts**" + (f" (by less than {format_band(band)})" if diff.ci_low > -band else ""))
    if -band <= diff.ci_low and diff.ci_high <= band:
        return Verdict(EQUIVALENT, f"no effect larger than ±{format_band(band)}")
    return Verdict(INCONCLUSIVE, "inconclusive")


def pooled_sd(diffs: Sequence[stats.Difference]) -> tuple[float, int]:
    """(pooled standard deviation of the per-seed paired differences, their common n) over the paired effects
    with an interval and a spread (zero-width ones left out): the root mean square of their sds (equal degrees of
    freedom: the pooled variance). (NaN, 0) without any."""
    usable = [d for d in diffs if d.method == "paired" and d.has_ci and not is_degenerate(d) and not math.isnan(d.sd)]
    if not usable:
        return math.nan, 0
    n = min(d.n for d in usable)
    return math.sqrt(stats.mean([d.sd * d.sd for d in usable])), n


def mde_sentence(diffs: Sequence[stats.Difference], band: float = DEFAULT_BAND) -> str:
    """``With 3 seeds this grid detects effects of about 2.1 points ...``: the minimum detectable effect from the
    observed spread of the paired per-seed differences (``stats.minimum_detectable_effect``)."""
    sd, n = pooled_sd(diffs)
    if n < 2:
        return "No minimum detectable effect: no paired comparison with at least two seeds and a spread in this grid."
    mde = stats.minimum_detectable_effect(sd, n)
    compared = "smaller" if mde < band else "larger"
    return (
        f"With {n} seeds this grid detects effects of about **{100 * mde:.1f} points** (minimum detectable effect "
        f"of a paired t test, two-sided 5 %, power {100 * stats.POWER:.0f} %: (t₀.₉₇₅,ₙ₋₁ + t₀.₈,ₙ₋₁) · s / √n with "
        f"n = {n} and s = {100 * sd:.2f} points, the pooled standard deviation of the per-seed differences); "
        f"that is {compared} than the ±{format_band(band)} band, so "
        + (
            "an effect outside the band should show."
            if mde < band
            else "a real effect the size of the band can go unseen: read 'inconclusive' as 'needs more seeds'."
        )
    )
