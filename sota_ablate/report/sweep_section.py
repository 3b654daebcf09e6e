"""A sweep grid's report section: what to do first (each arm's crossover, and for a sweep over a recipe key the
trend of its difference), the table of every (arm, value), the method, what a budget grid held equal, the
chapter's statements next to the measured answer, and the figures (``sweep_plots``).

Every sentence is computed from a ``sweep.Sweep``; one sentence per computed fact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from sota_ablate.report import sweep_plots, verdicts
from sota_ablate.report.claims import Claim, claims_for
from sota_ablate.report.collect import GridData
from sota_ablate.report.formatting import format_difference, format_duration, format_points, format_ratio, pipe_table
from sota_ablate.report.markdown import Section
from sota_ablate.report.prose import listing
from sota_ablate.report.sweep import ABOVE, BELOW, Arm, Point, Sweep, equalised, format_value, reliable
from sota_ablate.report.tables import CellSummary, cell_summary
from sota_ablate.report.writer import FigureWriter

FIGURES = {"sweep": "sweep_accuracy.png", "compute": "sweep_compute.png"}


def at(sweep: Sweep, value: float | str | None) -> str:
    """A swept value in words: ``20 epochs``, ``budget 20``, ``label_noise = 25``."""
    if sweep.is_budget:
        return f"budget {format_value(value)}" if sweep.unit == "flops" else f"{format_value(value)} epochs"
    return f"`{sweep.key}` = {format_value(value)}"


def largest(sweep: Sweep) -> str:
    """``40 epochs``: the sweep's largest value, in words."""
    return at(sweep, sweep.values[-1]) if sweep.values else "-"


def _diff_at(p: Point) -> str:
    return f"{format_difference(p.diff)} at {format_value(p.value)}"


def lead(sweep: Sweep, arm: Arm) -> str:
    """The arm's crossover in one sentence: where it pays off (or costs), or that it is not reached."""
    ref = f"`{sweep.reference}`"
    found = arm.crossover
    if found is not None and found.kind in (ABOVE, BELOW):
        start = sweep.values.index(found.value)
        shown = [p for p in arm.points if p.value in sweep.values[start:]]
        verb = "pays off" if found.kind == ABOVE else "costs accuracy"
        if not sweep.is_budget:
            verb = "is reliably above" if found.kind == ABOVE else "is reliably below"
            verb += f" {ref}"
        return (
            f"`{arm.name}` {verb} from {at(sweep, found.value)} on: "
            + ", ".join(_diff_at(p) for p in shown)
            + f" (its accuracy minus {ref}'s at the same value, 95% interval)."
        )
    last = next((p for p in reversed(arm.points) if p.diff is not None), None)
    tail = f"; at {at(sweep, last.value)}: {format_difference(last.diff)}" if last is not None else ""
    what = "no budget" if sweep.is_budget else f"no `{sweep.key}`"
    return (
        f"`{arm.name}`: not reached up to {largest(sweep)} ({what} from which its difference from {ref} stays "
        f"reliably above zero{tail})."
    )


def below_note(sweep: Sweep, arm: Arm) -> str:
    """Where the arm is reliably below the reference, when that is not its crossover (empty otherwise)."""
    if arm.crossover is not None and arm.crossover.kind == BELOW:
        return ""
    worse = [p for p in arm.points if reliable(p.diff, BELOW)]
    if not worse:
        return ""
    listed = listing([at(sweep, p.value) for p in worse])
    return f"`{arm.name}` is reliably below `{sweep.reference}` at {listed}."


def trend_sentence(sweep: Sweep, arm: Arm) -> str:
    """The trend of the arm's difference against the swept value, with its interval and what it says."""
    t = arm.trend
    if t is None:
        return f"`{arm.name}`: no trend (no seed with a difference at two values of `{sweep.key}`)."
    per = f"pts per unit of `{sweep.key}`"
    slope = f"{format_points(t.slope)} {per}"
    if not t.has_ci:
        return f"`{arm.name}`'s difference from `{sweep.reference}` changes by {slope} (one seed: no interval)."
    words = {
        "grows": "its advantage grows with",
        "shrinks": "its advantage shrinks with",
        "unclear": "no reliable trend with",
    }[t.direction]
    return (
        f"`{arm.name}`'s difference from `{sweep.reference}` changes by {slope} "
        f"[{format_points(t.ci_low)}, {format_points(t.ci_high)}] (n = {t.n} seeds): {words} `{sweep.key}`."
    )


def table(sweep: Sweep, band: float) -> str:
    """One row per (arm, value): accuracy, the difference from the reference, its verdict, the compute."""
    rows = []
    for arm in sweep.arms:
        for p in arm.points:
            acc = "-" if p.accuracy.n == 0 else f"{p.accuracy.mean:.4f}"
            if p.accuracy.n >= 2 and not math.isnan(p.accuracy.ci_low):
                acc += f" [{p.accuracy.ci_low:.4f}, {p.accuracy.ci_high:.4f}]"
            acc += f" (n={p.accuracy.n})"
            is_ref = arm.name == sweep.reference
            rows.append(
                [
                    f"`{arm.name}`",
                    format_value(p.value),
                    acc,
                    "(reference)" if is_ref else format_difference(p.diff),
                    "" if is_ref else verdicts.verdict(p.diff, band).text,
                    "-" if p.epochs is None else str(p.epochs),
                    "-" if math.isnan(p.flops) else f"{p.flops:.3g}",
                    format_duration(p.wall_time),
                ]
            )
    header = ["arm", "budget" if sweep.is_budget else sweep.key, "accuracy [95% CI]", f"Δ vs `{sweep.reference}` [95% CI]", "verdict", "epochs",
              "training FLOPs", "wall time"]  # fmt: skip
    return pipe_table(header, rows, align="llllllrr")


def method_note(sweep: Sweep, band: float) -> str:
    rule = (
        f"**Crossover rule:** the smallest {'budget' if sweep.is_budget else f'`{sweep.key}`'} b such that at every value ≥ b in this sweep the "
        f"difference's 95% interval (Student t, paired by seed on the seeds both ran; Welch when the two ran different seeds) lies entirely above "
        f"zero; 'not reached up to {largest(sweep)}' otherwise; the same rule below zero says from where an arm "
        "costs accuracy. A value with one seed, a zero-width interval or no finished cell breaks the run. The "
        f"verdict column uses the ±{100 * band:g}-point equivalence band; the crossover uses zero."
    )
    if sweep.is_budget and sweep.unit == "flops":
        rule += (
            f" Budget b: the training FLOPs of `{sweep.reference}` trained b epochs; every cell trains as many "
            "epochs as fit in them."
        )
    if sweep.numeric and not sweep.is_budget:
        rule += (
            " **Trend:** for each seed, the least-squares slope of that seed's differences against the value "
            "(`scipy.stats.linregress`); then the mean of the per-seed slopes with its Student-t 95% interval "
            "over seeds (so the pairing by seed is kept)."
        )
    return rule


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def equalised_lines(sweep: Sweep) -> list[str]:
    """What a budget grid held equal between the arms at each budget and what it did not, one sentence each."""
    out = []
    for q in equalised(sweep):
        if q.equal:
            out.append(f"{_capital(q.name)}: equal between the arms at every budget (within 1 %).")
            continue
        parts = []
        for arm, (lo, hi) in q.ratios.items():
            span = format_ratio(lo) if abs(hi - lo) < 0.005 else f"{format_ratio(lo)}-{format_ratio(hi)}"
            parts.append(f"`{arm}` {span}")
        out.append(f"{_capital(q.name)}: not equal: {listing(parts)} `{sweep.reference}`'s.")
    if out:
        out.insert(0, "**What was held equal** at each budget, from the logged numbers (arm / reference):")
    return out


def measured(sweep: Sweep, arm: Arm, claim: Claim) -> str:
    """The measured answer to one of the chapter's statements."""
    kind = claim.check[0]
    if kind == "crossover":
        return lead(sweep, arm)
    limit = float(claim.check[1])
    if kind == "below":
        under = [p for p in arm.points if float(p.value) < limit]
        over = [p for p in arm.points if float(p.value) >= limit]
        helps = [format_value(p.value) for p in under if reliable(p.diff, ABOVE)]
        if not under:
            text = f"this sweep has no budget below {limit:g} epochs"
        else:
            where = f"reliably above the reference at {listing(helps)}" if helps else "nowhere reliably above it"
            text = (
                f"below {limit:g} epochs this sweep has {at(sweep, under[0].value)} to {at(sweep, under[-1].value)}, "
                f"where `{arm.name}` is {where}"
            )
        if not over:
            return f"Measured: {text}; it does not reach {limit:g} epochs."
        better = [format_value(p.value) for p in over if reliable(p.diff, ABOVE)]
        return f"Measured: {text}; from {limit:g} epochs on it is reliably above at {listing(better) or 'none'}."
    point = next((p for p in arm.points if float(p.value) == limit), None)
    if point is None and arm.points:
        point = arm.points[0]
        prefix = f"Measured: this sweep has no {limit:g}-epoch budget; at its smallest, {at(sweep, point.value)}"
    elif point is not None:
        prefix = f"Measured at {at(sweep, point.value)}"
    else:
        return "Measured: nothing (no finished cell)."
    return f"{prefix}: `{arm.name}` {format_difference(point.diff)} vs the reference ({verdicts.verdict(point.diff).text})."


def book_lines(sweep: Sweep) -> list[str]:
    """The chapter's statements about epochs for the sweep's arms, each with the measured answer (budget sweeps
    only)."""
    if not sweep.is_budget:
        return []
    out = []
    for arm in sweep.compared:
        for claim in claims_for(arm.name):
            out.append(f"> “{claim.quote}” ({claim.source})\n\n{measured(sweep, arm, claim)}")
    return out


def section(sweep: Sweep, colours: Mapping[str, str], writer: FigureWriter, band: float) -> Section:
    """The report's opening for a sweep grid."""
    title = "Budget sweep: accuracy against the training budget" if sweep.is_budget else f"Sweep over `{sweep.key}`"
    what = [lead(sweep, arm) for arm in sweep.compared]
    what += [n for n in (below_note(sweep, arm) for arm in sweep.compared) if n]
    if sweep.numeric and not sweep.is_budget:
        what += [trend_sentence(sweep, arm) for arm in sweep.compared]
    out = Section(title=title, intro="**What to do.** " + " ".join(what) if what else "", table=table(sweep, band))
    out.effect.append(method_note(sweep, band))
    if sweep.is_budget:
        out.effect += equalised_lines(sweep)
    lines = book_lines(sweep)
    if lines:
        out.book = "**What the chapter says, and what this sweep measured.**\n\n" + "\n\n".join(lines)
    if any(p.accuracy.n for a in sweep.arms for p in a.points):
        fig = writer.save(
            FIGURES["sweep"],
            lambda: sweep_plots.plot_sweep(sweep, colours),
            f"accuracy and difference from {sweep.reference} against {sweep.key}",
            f"Left: final accuracy against {sweep.key} per arm (line: mean over seeds, band: the seeds' range). "
            f"Right: the difference from `{sweep.reference}` at the same value with its 95% interval; dotted "
            "vertical line: an arm's crossover.",
        )
        out.figures += [fig] if fig is not None else []
    if sweep.is_budget and any(not math.isnan(p.flops) or not math.isnan(p.wall_time) for a in sweep.arms
                               for p in a.points):  # fmt: skip
        fig = writer.save(
            FIGURES["compute"],
            lambda: sweep_plots.plot_compute(sweep, colours),
            "accuracy against training FLOPs and wall time",
            "Final accuracy against the training FLOPs (left) and the wall time (right) of each (arm, budget): "
            "mean over seeds, bars: the seeds' range.",
        )
        out.figures += [fig] if fig is not None else []
    return out


def sweep_title(sweep: Sweep) -> str:
    """What the sweep varies, for the report's title: ``the training budget (epochs)``, ``label_noise``."""
    if sweep.is_budget:
        return f"the training budget ({'equal compute' if sweep.unit == 'flops' else 'epochs'})"
    return f"`{sweep.key}`"


def reference_label(sweep: Sweep) -> str:
    """How the summary table names a sweep's reference: the reference arm at each cell's own value."""
    return f"{sweep.reference} at the same {sweep.key}"


def summaries(data: GridData, sweep: Sweep) -> list[CellSummary]:
    """The summary table's rows for a sweep grid: each cell's Δ against the reference arm's cell of the same value
    (``tables.cell_summary`` value by value), in grid order."""
    reference = sweep.arm(sweep.reference)
    ref_cells = {p.value: p.cell for p in reference.points} if reference is not None else {}
    by_cell: dict[str, CellSummary] = {}
    for value in sweep.values:
        cells = [p.cell for a in sweep.arms for p in a.points if p.value == value]
        for s in cell_summary(dataclasses.replace(data, cells=cells), ref_cells.get(value)):
            by_cell[s.cell] = s
    rest = [c for c in data.cells if c not in by_cell]
    for s in cell_summary(dataclasses.replace(data, cells=rest), None) if rest else []:
        by_cell[s.cell] = s
    return [by_cell[c] for c in data.cells if c in by_cell]


def arm_colours(sweep: Sweep, cell_colours: Mapping[str, str]) -> dict[str, str]:
    """arm -> the colour of its cells (``palette.cell_colours``: its technique's, black for the baseline)."""
    return {a.name: cell_colours[a.points[0].cell] for a in sweep.arms if a.points and a.points[0].cell in cell_colours}


def synthesis_line(sweep: Sweep) -> str:
    """A sweep grid's line in the synthesis across grids: its lead sentences."""
    what = " ".join(lead(sweep, arm) for arm in sweep.compared) or "no arm besides the reference."
    return f"sweep over `{sweep.key}` against `{sweep.reference}`: {what}"
