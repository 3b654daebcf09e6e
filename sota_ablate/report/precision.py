"""The "Precision" section of a grid run with ``run-grid --precision``: per comparison the pilot, Stein's planned
number of seeds, the seeds that ran, and the achieved 95% interval against the target half-width.

Everything is recomputed from the runs (``precision.py``'s plan from the pilot seeds' values, the interval from the
seeds that finished), with the target, cap and procedure from the grid run's params; grid runs without
``--precision`` get no section.
"""

from __future__ import annotations

from sota_ablate import pairing, schema
from sota_ablate.precision import POINTS, ComparisonPlan, Target, effect_points, plan_comparisons
from sota_ablate.report import keys
from sota_ablate.report.collect import GridData
from sota_ablate.report.formatting import pipe_table
from sota_ablate.report.markdown import Section
from sota_ablate.report.prose import listing
from sota_ablate.report.sweep import sweep_of


def _values(data: GridData) -> dict[str, dict[str, dict[int, float]]]:
    """cell -> summary metric -> seed -> value, for the plain accuracy and every technique's judged metric."""
    metrics = {pairing.PLAIN, *(k for t in data.techniques_used() if (k := pairing.judged_by(t)))}
    return {c: {m: v for m in metrics if (v := data.values(c, keys.metric(m)))} for c in data.cells}


def _metric(text: str) -> str:
    """The metric in the report's words: ``accuracy`` for the plain accuracy (``comparison.metric_label``)."""
    return text.replace(pairing.PLAIN, "accuracy")


def _row(c: ComparisonPlan, values: dict, target: float) -> tuple[list[str], str]:
    """The table row of one comparison and its note ('' when none)."""
    if c.plan is None:
        return [f"`{c.label}`", _metric(c.metric), *["-"] * 7], f"`{c.label}`: {c.reason}."
    p = c.plan
    effects = effect_points(c.technique, c.pairs, values)
    seeds = sorted(effects)[: p.planned]
    n = len(seeds)
    half = p.half_width(n)
    mean = sum(effects[s] for s in seeds) / n if n else float("nan")
    interval = f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]" if n else "-"
    planned = f"{p.planned} (capped at {p.max_seeds}; needs {p.needed})" if p.capped else str(p.planned)
    met = "yes" if n and half <= target + 1e-12 else "**no**"
    note = ""
    if p.capped:
        note = (
            f"`{c.label}`: the cap stopped it short: {p.needed} seeds would give ±{target:g}, {p.max_seeds} give "
            f"±{p.half_width(p.planned):.2f} points."
        )
    elif n < p.planned:
        note = f"`{c.label}`: {n} of the {p.planned} planned seeds finished: rerun the same command to run the rest."
    row = [
        f"`{c.label}`",
        _metric(c.metric),
        str(p.n0),
        f"{p.s0:.2f}",
        planned,
        str(n),
        interval,
        f"±{half:.2f}",
        met,
    ]
    return row, note


def precision_section(data: GridData) -> Section | None:
    """The section, or None for a grid run without ``--precision``."""
    target = data.parent_param(schema.PRECISION_HALF_WIDTH)
    if target is None:
        return None
    max_seeds = int(data.parent_param(schema.PRECISION_MAX_SEEDS))
    procedure = data.parent_param(schema.PRECISION_PROCEDURE, "")
    pilot = [int(s) for s in data.parent_param(schema.SEEDS, [])]
    values = _values(data)
    cells = [(c, data.technique_set(c)) for c in data.cells]
    sweep = sweep_of(data)
    points = {p.cell: (a.name, str(p.value), sweep.reference) for a in sweep.arms for p in a.points} if sweep else None
    comparisons = plan_comparisons(cells, values, pilot, Target(float(target), max_seeds), points)
    if not comparisons:
        return None
    rows, notes = [], []
    for c in comparisons:
        row, note = _row(c, values, float(target))
        rows.append(row)
        notes += [note] if note else []
    header = ["cell" if sweep else "technique", "metric", "pilot seeds n₀", "pilot s₀ (points)", "planned n", "seeds run",
              "effect [95% CI]", "achieved half-width", f"within ±{float(target):g}"]  # fmt: skip
    intro = (
        f"`run-grid --precision {float(target):g} --max-seeds {max_seeds}` asked for 95% intervals of half-width at "
        f"most H = {float(target):g} accuracy points, with at most {max_seeds} seeds per cell. The seeds were chosen by "
        f"the {procedure} procedure: the grid's seeds {', '.join(map(str, pilot))} are the pilot; from their per-seed "
        "effects (paired by seed, in points) with sample standard deviation s₀ over n₀ seeds, the total is "
        "n = max(n₀, ⌈(t₀.₉₇₅,ₙ₀₋₁ · s₀ / H)²⌉), capped at the maximum, and the interval is "
        "mean over the n seeds ± t₀.₉₇₅,ₙ₀₋₁ · s₀ / √n: quantile and spread stay the pilot's, so the 95% coverage "
        "holds although n depends on the data. These intervals can differ from the "
        + ("sweep table's" if sweep else "effects table's")
        + ", which uses the spread of all seeds. "
    )
    needing = [f"`{c.label}`" for c in comparisons if c.plan is not None and c.plan.planned > c.plan.n0]
    intro += (
        f"Extra seeds were planned for {listing(needing)} only "
        + (
            "(each with its reference cell at the same value)."
            if sweep
            else "(both sides of each of its pairs of cells)."
        )
        if needing
        else "No comparison needed more seeds than the pilot."
    )
    section = Section(title="Precision", intro=intro, table=pipe_table(header, rows, align="llrrrrlrl"))
    section.effect += [f"- {n}" for n in notes]
    section.effect.append(f"- 1 point = {1 / POINTS:g} accuracy; s₀ = 0 (no spread in the pilot) plans no extra seed.")
    return section
