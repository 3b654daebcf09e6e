"""The report's text: effect sentences, honesty notes, and the markdown document itself.

``render(report)`` turns a ``Report`` (plain strings, tables and relative figure paths, built by ``generate``)
into GitHub markdown. The sentence builders are pure functions of numbers, so their wording is unit-tested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from sota_ablate.report import stats
from sota_ablate.report.collect import GridData
from sota_ablate.report.tables import CellSummary, format_duration, format_points


@dataclass(frozen=True)
class FigureRef:
    """A figure file next to the README (relative path) with its alt text and caption."""

    path: str
    alt: str
    caption: str = ""


@dataclass
class Section:
    """One chapter section: its cell's epoch table, the measured effect and its figures."""

    title: str
    intro: str = ""
    cell: str | None = None
    table: str = ""
    table_caption: str = ""
    effect: list[str] = field(default_factory=list)
    figures: list[FigureRef] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    book: str = ""
    illustration: list[str] = field(default_factory=list)


@dataclass
class Report:
    title: str
    overview: list[str]
    summary_table: str
    summary_notes: list[str]
    honesty: list[str]
    glance: list[FigureRef]
    sections: list[Section]
    provenance: list[str]


def _method(diff: stats.Difference) -> str:
    if diff.method == "paired":
        return f"paired by seed, n = {diff.n}"
    if diff.method == "welch":
        return f"Welch, unequal seeds, df = {diff.df:.1f}"
    return ""


def effect_sentence(
    cell: str, reference: str, cell_mean: float, reference_mean: float, diff: stats.Difference | None
) -> str:
    """``mixup`` reached 0.8630 vs 0.8252 for ``baseline``: +3.78 points, 95% CI [+1.2, +6.4] (paired by seed,
    n = 3): ..."""
    if diff is None or math.isnan(diff.delta):
        return f"No comparison of `{cell}` with `{reference}`: one of them has no finished run."
    head = (
        f"`{cell}` reached {cell_mean:.4f} vs {reference_mean:.4f} for `{reference}`: "
        f"**{format_points(diff.delta)} points**"
    )
    if not diff.has_ci:
        return (
            f"{head} (a single seed on at least one side: no confidence interval, so this difference cannot be "
            "told apart from seed-to-seed noise)."
        )
    ci = f"95% CI [{format_points(diff.ci_low)}, {format_points(diff.ci_high)}] ({_method(diff)})"
    if diff.significant:
        kind = "gain" if diff.delta > 0 else "loss"
        verdict = f"the interval excludes zero: a {kind} that seed-to-seed noise alone is unlikely to explain"
    else:
        verdict = "the interval includes zero: no detectable effect at this budget and number of seeds"
    return f"{head}, {ci}; {verdict}."


def _epochs(n: int | None) -> str:
    return "? epochs" if n is None else f"{n} epoch{'s' if n != 1 else ''}"


def budget_sentence(cell: CellSummary, reference: CellSummary) -> str:
    """Empty when the recipes match, else a warning naming both recipes."""
    if cell.recipe == reference.recipe or cell.recipe == "-" or reference.recipe == "-":
        return ""
    return (
        f"Budgets differ: `{cell.cell}` trained {cell.recipe} ({_epochs(cell.epochs)}) against {reference.recipe} "
        f"({_epochs(reference.epochs)}) for `{reference.cell}`, so the difference is not the technique's alone."
    )


def time_sentence(cell: CellSummary, reference: CellSummary) -> str:
    if math.isnan(cell.wall_time_s) or math.isnan(reference.wall_time_s) or reference.wall_time_s <= 0:
        return ""
    ratio = cell.wall_time_s / reference.wall_time_s
    return (
        f"Wall time per run: {format_duration(cell.wall_time_s)} vs {format_duration(reference.wall_time_s)} "
        f"({ratio:.2f}x); mean epoch {format_duration(cell.epoch_time_s)} vs "
        f"{format_duration(reference.epoch_time_s)}."
    )


def tta_sentence(cell: str, plain: dict[int, float], tta: dict[int, float], tta_time: float, valid_time: float) -> str:
    """TTA vs the same models' plain accuracy (paired by construction: same runs), and the extra time."""
    if not tta:
        return f"`{cell}` logged no TTA accuracy."
    diff = stats.compare(tta, plain)
    mean_tta, mean_plain = stats.mean(list(tta.values())), stats.mean(list(plain.values()))
    text = f"TTA on the same `{cell}` models: {mean_tta:.4f} vs {mean_plain:.4f} plain, **{format_points(diff.delta)} points**"
    if diff.has_ci:
        text += f", 95% CI [{format_points(diff.ci_low)}, {format_points(diff.ci_high)}] ({_method(diff)})"
    else:
        text += " (one seed: no confidence interval)"
    if not math.isnan(tta_time):
        text += f"; it cost {format_duration(tta_time)} of inference"
        if not math.isnan(valid_time) and valid_time > 0:
            text += f" vs {format_duration(valid_time)} for one plain validation pass ({tta_time / valid_time:.1f}x)"
    return text + "."


def _recorded(data: GridData, key: str) -> set[str]:
    values = set()
    for _, row in data.runs.iterrows():
        value = row.get(f"params.{key}")
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            values.add(str(value))
    parent_value = data.parent_param(key)
    if parent_value is not None:
        values.add(str(parent_value))
    return values


def honesty_notes(data: GridData, summaries: Sequence[CellSummary], baseline: str | None) -> list[str]:
    """The caveats that apply to this grid, each one sentence or two."""
    notes: list[str] = []
    by_cell = {s.cell: s for s in summaries}
    incomplete = [s for s in summaries if not s.complete]
    if incomplete:
        listed = ", ".join(f"`{s.cell}` ({s.status})" for s in incomplete)
        notes.append(f"**Partial grid.** Not every cell finished: {listed}. Their rows show what exists.")
    ref = by_cell.get(baseline) if baseline else None
    if ref is not None:
        differ = [
            s for s in summaries if s.cell != baseline and None not in (s.epochs, ref.epochs) and s.epochs != ref.epochs
        ]
        if differ:
            listed = ", ".join(f"`{s.cell}` ({s.recipe})" for s in differ)
            notes.append(
                f"**Budgets differ between compared cells.** The reference `{baseline}` trained {ref.recipe}; "
                f"{listed}. A difference to the reference then mixes the technique with a longer or shorter "
                "schedule (the chapter does the same; `ablations/fair.toml` gives every cell the same budget)."
            )
    elif baseline is None:
        notes.append(
            "**No reference cell** (neither a cell without techniques nor one with all of them) in this grid: no "
            "differences to a reference are computed."
        )
    counts = [s.accuracy.n for s in summaries if s.accuracy.n > 0]
    if counts and min(counts) < 3:
        fewest = min(counts)
        if max(counts) == 1:
            notes.append(
                "**One seed per cell: no confidence intervals.** Seed-to-seed noise is unknown, and a difference "
                "of a point or two can be noise alone. Run more seeds (`--seeds 0,1,2`) and use `--all-seeds`."
            )
        else:
            notes.append(
                f"**Fewer than 3 seeds** (as few as {fewest}): where there are 2, the 95% interval uses Student's "
                "t with 1 degree of freedom (12.7 standard errors) and is very wide; with 1 there is none."
            )
    splits = _recorded(data, "data.split")
    if splits - {"official"}:
        notes.append(
            "**Not the official split.** The runs used the chapter's split (a seeded random 20% of train and val "
            "together, as fastai's `RandomSplitter` in the book), not Imagenette's official `val/` folder."
        )
    sources, variants = _recorded(data, "data.source"), _recorded(data, "data.variant")
    per_class = _recorded(data, "data.train_per_class") | _recorded(data, "data.valid_per_class")
    n_train, n_valid = data.parent_param("data.n_train"), data.parent_param("data.n_valid")
    if "folder" in sources or variants - {"full"} or per_class - {"all"}:
        where = []
        if "folder" in sources:
            where.append(f"a local folder ({', '.join(f'`{p}`' for p in sorted(_recorded(data, 'data.path')))})")
        if variants - {"full"}:
            where.append(f"the {', '.join(sorted(variants - {'full'}))} archive")
        if per_class - {"all"}:
            where.append(f"a subset of {n_train} training / {n_valid} validation images")
        notes.append(
            f"**Not full-size Imagenette.** The data is {' and '.join(where)}, not the book's `imagenette2` "
            "(9,469 / 3,925 images at full resolution): absolute accuracies are not comparable with the book."
        )
    if "bfloat16" in _recorded(data, "dtype"):
        notes.append(
            "**CPU bfloat16 stood in for CUDA fp16.** Mixed-precision cells ran bfloat16 autocast on the CPU: "
            "their accuracy is indicative, their speed says nothing about fp16 on a GPU."
        )
    profile = data.parent_param("profile") or data.parent.get("tags.profile")
    models = _recorded(data, "train.model")
    if profile != "chapter" or models - {"xresnet50"}:
        notes.append(
            f"**Scaled down** (profile `{profile}`, model {', '.join(sorted(models)) or '?'}): the published column "
            "(xresnet50 at 224 px on full Imagenette, GPU) is a reference point, not a target these runs should hit."
        )
    n_out = _recorded(data, "train.n_out")
    if n_out:
        notes.append(
            f"**Head size.** These runs use {', '.join(sorted(n_out))} outputs; the book's printed numbers came from "
            "`xresnet50()` with 1000 outputs (fastbook#254 later changed it to `n_out=dls.c`)."
        )
    if any("label_smoothing" in s.techniques for s in summaries):
        notes.append(
            "**valid_loss with label smoothing** is the smoothed cross-entropy (as in fastai), so it is not "
            "comparable with other cells' valid_loss; compare accuracies."
        )
    notes += [f"**Collection:** {n}" for n in data.notes]
    return notes


def _figure(fig: FigureRef) -> str:
    text = f"![{fig.alt}]({fig.path})"
    return f"{text}\n\n*{fig.caption}*" if fig.caption else text


def render(report: Report) -> str:
    """The whole README.md."""
    out: list[str] = [f"# {report.title}", ""]
    out += [*report.overview, ""]
    out += ["## Summary", "", report.summary_table, ""]
    out += [f"- {n}" for n in report.summary_notes]
    out += ["", "## Read this first: caveats", ""]
    out += [f"- {n}" for n in report.honesty] or ["- None apply."]
    if report.glance:
        out += ["", "## Results at a glance", ""]
        for fig in report.glance:
            out += [_figure(fig), ""]
    for section in report.sections:
        out += ["", f"## {section.title}", ""]
        if section.intro:
            out += [section.intro, ""]
        if section.table:
            if section.table_caption:
                out += [section.table_caption, ""]
            out += [section.table, ""]
        for line in section.effect:
            out += [line, ""]
        if section.book:
            out += [section.book, ""]
        for line in section.illustration:
            out += [line, ""]
        for fig in section.figures:
            out += [_figure(fig), ""]
        for note in section.notes:
            out += [f"> {note}", ""]
    out += ["", "## Provenance", ""]
    out += report.provenance
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"
