"""Tables of the report: the per-cell summary, epoch tables in fastai's format, the published numbers.

``cell_summary`` turns a ``GridData`` into one numeric row per cell (mean, std and n over seeds, the
difference to the baseline with its confidence interval, timings); ``summary_markdown`` formats it.
``epoch_table_markdown`` prints one run's epochs the way fastai does (epoch, train_loss, valid_loss,
accuracy with 6 decimals, time as mm:ss). ``published_results`` reads the chapter's printed numbers and
their replication, shipped as package data (``sota_ablate/resources/published_results.csv``, see its README).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import pandas as pd

from sota_ablate.report import stats
from sota_ablate.report.collect import GridData

BOOK = "fastbook-ch7"
REPLICATION = "000_c02ea65f3b71f318.txt"
TECHNIQUE_ORDER = ("fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing")  # the chapter's order
ALL_TECHNIQUES = frozenset(TECHNIQUE_ORDER)

# cell technique set -> (source, recipe) rows of published_results.csv whose last epoch is the cell's counterpart
PUBLISHED_RECIPES: dict[frozenset[str], tuple[tuple[str, str], ...]] = {
    frozenset(): ((BOOK, "baseline"), (REPLICATION, "baseline_fp32")),
    frozenset({"fp16"}): ((REPLICATION, "baseline_fp16"),),
    frozenset({"normalize"}): ((BOOK, "normalize"), (REPLICATION, "normalize_fp16")),
    frozenset({"progressive"}): ((BOOK, "progressive_224"), (REPLICATION, "progressive_224_fp16")),
    frozenset({"tta"}): ((BOOK, "progressive_tta"), (REPLICATION, "progressive_tta_fp16")),
    frozenset({"mixup"}): ((REPLICATION, "mixup_15ep_128_fp16"),),
    frozenset({"label_smoothing"}): ((REPLICATION, "label_smoothing_15ep_128_fp16"),),
    ALL_TECHNIQUES: ((REPLICATION, "all_224_fp16"),),
}
SOURCE_LABEL = {BOOK: "book", REPLICATION: "repl."}
PUBLISHED_RECIPE_TEXT = {
    "baseline": "after 5 epochs at 224 px",
    "baseline_fp32": "after 5 epochs at 224 px",
    "baseline_fp16": "after 5 epochs at 224 px, fp16",
    "normalize": "after 5 epochs at 224 px",
    "normalize_fp16": "after 5 epochs at 224 px, fp16",
    "progressive_224": "after 4 epochs at 128 px, then fine_tune 1 + 5 at 224 px",
    "progressive_224_fp16": "after 4 epochs at 128 px, then fine_tune 1 + 5 at 224 px, fp16",
    "progressive_tta": "with TTA on the progressive-resizing model",
    "progressive_tta_fp16": "with TTA on the progressive-resizing model, fp16",
    "mixup_15ep_128_fp16": "after 15 epochs at 128 px, fp16",
    "label_smoothing_15ep_128_fp16": "after 15 epochs at 128 px, fp16",
    "all_224_fp16": "after 15 epochs at 128 px, then fine_tune 1 + 10 at 224 px, fp16 (no TTA)",
}


# ---------------------------------------------------------------------------------------------------------------
# Formatting helpers


def pipe_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one of ``l``/``r``/``c`` per column (default: all left)."""
    align = align or "l" * len(header)
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        cells = [str(v).replace("|", "\\|").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_time(seconds: float) -> str:
    """fastai's ``mm:ss`` (``h:mm:ss`` past an hour), as the epoch tables print it."""
    from sota_ablate.progress import format_time as fastai_time

    return fastai_time(seconds)


def format_duration(seconds: float | None) -> str:
    """Seconds with a decimal below a minute (fast CPU cells), else fastai's mm:ss; ``-`` when unknown."""
    if seconds is None or math.isnan(seconds):
        return "-"
    return f"{seconds:.1f} s" if seconds < 60 else format_time(seconds)


def format_points(delta: float) -> str:
    """An accuracy difference in percentage points with its sign (0.0123 -> ``+1.23``)."""
    return f"{100 * delta:+.2f}"


def format_difference(diff: stats.Difference | None) -> str:
    """``+1.23 pts [-0.50, +2.96]`` (paired/Welch), ``+1.23 pts (no CI)`` or ``-``."""
    if diff is None or math.isnan(diff.delta):
        return "-"
    if not diff.has_ci:
        return f"{format_points(diff.delta)} pts (no CI)"
    return f"{format_points(diff.delta)} pts [{format_points(diff.ci_low)}, {format_points(diff.ci_high)}]"


def stage_recipe(stages: Any, fallback: tuple[Any, Any, Any] | None = None) -> str:
    """The training recipe from the logged ``stages`` param: ``4x128px bs128 -> 1+4x224px bs64``.

    Consecutive stages with the same size and batch size (fastai's ``fine_tune``: one frozen epoch, then the
    rest) are merged as ``1+4``. ``fallback`` is (epochs, size, batch_size) when no stages were logged.
    """
    if not isinstance(stages, list) or not stages:
        if fallback and all(v is not None for v in fallback):
            epochs, size, bs = fallback
            return f"{epochs}x{size}px bs{bs}"
        return "-"
    groups: list[tuple[list[int], Any, Any]] = []
    for st in stages:
        size, bs = st.get("size"), st.get("batch_size")
        if groups and groups[-1][1] == size and groups[-1][2] == bs:
            groups[-1][0].append(int(st.get("epochs", 0)))
        else:
            groups.append(([int(st.get("epochs", 0))], size, bs))
    return " -> ".join(f"{'+'.join(map(str, e))}x{size}px bs{bs}" for e, size, bs in groups)


def total_epochs(stages: Any, fallback: int | None = None) -> int | None:
    if isinstance(stages, list) and stages:
        return sum(int(st.get("epochs", 0)) for st in stages)
    return fallback


def stage_per_epoch(stages: Any) -> list[tuple[str, int]]:
    """(stage name, size) for each global epoch, from the ``stages`` param."""
    out: list[tuple[str, int]] = []
    if isinstance(stages, list):
        for st in stages:
            out += [(str(st.get("name", "")), int(st.get("size", 0)))] * int(st.get("epochs", 0))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Published numbers


@cache
def published_results() -> pd.DataFrame:
    """The chapter's printed numbers and their replication (see ``sota_ablate/resources/README.md``)."""
    text = resources.files("sota_ablate").joinpath("resources/published_results.csv").read_text(encoding="utf-8")
    return pd.read_csv(io.StringIO(text))


def published_final(source: str, recipe: str) -> float | None:
    """The last printed accuracy of ``recipe`` from ``source`` (None when absent)."""
    df = published_results()
    rows = df[(df["source"] == source) & (df["recipe"] == recipe)]
    if rows.empty:
        return None
    rows = rows.sort_values("epoch", na_position="first")
    return float(rows.iloc[-1]["accuracy"])


def published_epochs(source: str, recipe: str) -> pd.DataFrame:
    """The printed epoch rows of ``recipe`` (epoch, train_loss, valid_loss, accuracy, time)."""
    df = published_results()
    return df[(df["source"] == source) & (df["recipe"] == recipe)].sort_values("epoch").reset_index(drop=True)


def published_for(techniques: frozenset[str]) -> list[tuple[str, str, float]]:
    """(source, recipe, final accuracy) of the published counterparts of a cell with these techniques."""
    out = []
    for source, recipe in PUBLISHED_RECIPES.get(frozenset(techniques), ()):
        acc = published_final(source, recipe)
        if acc is not None:
            out.append((source, recipe, acc))
    return out


def published_text(techniques: frozenset[str]) -> str:
    """``0.8252 (book); 0.8204 (repl.)`` for the summary table's published column; ``-`` when none."""
    items = published_for(techniques)
    if not items:
        return "-"
    return "; ".join(f"{acc:.4f} ({SOURCE_LABEL.get(src, src)})" for src, _, acc in items)


# ---------------------------------------------------------------------------------------------------------------
# The per-cell summary


@dataclass(frozen=True)
class CellSummary:
    """Everything the summary table shows about one cell (numbers unformatted)."""

    cell: str
    techniques: frozenset[str]
    label: str
    recipe: str
    epochs: int | None
    status: str
    complete: bool
    accuracy: stats.Summary
    tta: stats.Summary
    difference: stats.Difference | None
    epoch_time_s: float
    wall_time_s: float
    images_per_s: float
    device: str
    dtype: str
    published: str


def _mean_of(values: dict[int, float]) -> float:
    return stats.mean(list(values.values()))


def ordered_techniques(techniques: Iterable[str]) -> list[str]:
    """The techniques in the canonical order (unknown names last, sorted)."""
    techniques = set(techniques)
    return [t for t in TECHNIQUE_ORDER if t in techniques] + sorted(techniques - ALL_TECHNIQUES)


def technique_label(techniques: frozenset[str]) -> str:
    """Comma-separated in the canonical order (as the runs' ``techniques`` tag); ``none`` for the baseline."""
    return ",".join(ordered_techniques(techniques)) or "none"


def status_text(data: GridData, cell: str) -> tuple[str, bool]:
    """(``complete`` | ``2/3 seeds; 1 failed`` | ``missing`` ..., whether every expected seed completed)."""
    rows = data.cell_rows(cell, state=None)
    counts = rows["state"].value_counts().to_dict()
    total = len(rows)
    done = counts.pop("complete", 0)
    if done == total:
        return "complete", True
    if done == 0 and set(counts) == {"missing"}:
        return "missing", False
    rest = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return (f"{done}/{total} seeds; {rest}" if total > 1 else rest.split(" ", 1)[1]), False


def find_baseline(data: GridData) -> str | None:
    """The reference cell: the one without techniques (preferably named ``baseline``)."""
    plain = [c for c in data.cells if not data.technique_set(c) and data.first(c, "run_id") is not None]
    if "baseline" in plain:
        return "baseline"
    if plain:
        return plain[0]
    return "baseline" if "baseline" in data.cells else None


def find_reference(data: GridData) -> str | None:
    """The cell every other is compared with: the baseline (no techniques) when the grid has one, else the full
    recipe, i.e. the finished cell that uses every technique of the grid (``all`` in a leave-one-out grid)."""
    baseline = find_baseline(data)
    if baseline is not None:
        return baseline
    finished = [c for c in data.cells if data.first(c, "run_id") is not None]
    if len(finished) < 2:
        return None
    everything = frozenset().union(*(data.technique_set(c) for c in finished))
    full = [c for c in finished if data.technique_set(c) == everything]
    return ("all" if "all" in full else full[0]) if full else None


def cell_summary(data: GridData, baseline: str | None) -> list[CellSummary]:
    """One summary per cell of the grid, in grid order."""
    base_acc = data.values(baseline, "metrics.final_accuracy") if baseline else {}
    out = []
    for cell in data.cells:
        techniques = data.technique_set(cell)
        acc = data.values(cell, "metrics.final_accuracy")
        status, complete = status_text(data, cell)
        diff = None
        if baseline and cell != baseline and acc and base_acc:
            diff = stats.compare(acc, base_acc)
        stages = data.first(cell, "params.stages")
        fallback = (
            data.first(cell, "params.train.epochs"),
            data.first(cell, "params.train.size"),
            data.first(cell, "params.train.batch_size"),
        )
        device = data.first(cell, "params.device") or data.first(cell, "tags.device") or "-"
        out.append(
            CellSummary(
                cell=cell,
                techniques=techniques,
                label=technique_label(techniques),
                recipe=stage_recipe(stages, fallback),
                epochs=total_epochs(stages, fallback[0]),
                status=status,
                complete=complete,
                accuracy=stats.summarize(list(acc.values())),
                tta=stats.summarize(list(data.values(cell, "metrics.tta_accuracy").values())),
                difference=diff,
                epoch_time_s=_mean_of(data.values(cell, "metrics.mean_epoch_time_s")),
                wall_time_s=_mean_of(data.values(cell, "metrics.wall_time_s")),
                images_per_s=_mean_of(data.values(cell, "metrics.mean_images_per_s")),
                device=str(device),
                dtype=str(data.first(cell, "params.dtype") or "-"),
                published=published_text(techniques),
            )
        )
    return out


def format_accuracy(s: stats.Summary) -> str:
    """``0.8252 +- 0.0031 (n=3)``; ``0.8252 (n=1)``; ``-``."""
    if s.n == 0:
        return "-"
    if s.n == 1:
        return f"{s.mean:.4f} (n=1)"
    return f"{s.mean:.4f} ± {s.std:.4f} (n={s.n})"


def best_cell(summaries: Sequence[CellSummary]) -> str | None:
    """The cell with the highest mean final accuracy (None when no cell finished)."""
    scored = [s for s in summaries if s.accuracy.n > 0]
    return max(scored, key=lambda s: s.accuracy.mean).cell if scored else None


SUMMARY_HEADER = (
    "cell",
    "techniques",
    "recipe (epochs x size, bs)",
    "accuracy (mean ± std, n)",
    "TTA accuracy",
    "Δ vs {reference} [95% CI]",
    "epoch time",
    "wall time",
    "images/s",
    "device",
    "dtype",
    "published",
    "status",
)


def summary_rows(summaries: Sequence[CellSummary], baseline: str | None) -> list[list[str]]:
    """The summary table's cells as strings, the best cell in bold, incomplete cells marked."""
    best = best_cell(summaries)
    rows = []
    for s in summaries:
        name, acc = f"`{s.cell}`", format_accuracy(s.accuracy)
        if s.cell == best:
            name, acc = f"**{name}**", f"**{acc}**"
        diff = "(reference)" if s.cell == baseline else format_difference(s.difference)
        status = s.status if s.complete else f"⚠ {s.status}"
        rows.append(
            [
                name,
                s.label,
                s.recipe,
                acc,
                format_accuracy(s.tta) if s.tta.n else "-",
                diff,
                format_duration(s.epoch_time_s),
                format_duration(s.wall_time_s),
                "-" if math.isnan(s.images_per_s) else f"{s.images_per_s:.0f}",
                s.device,
                s.dtype,
                s.published,
                status,
            ]
        )
    return rows


def summary_markdown(summaries: Sequence[CellSummary], baseline: str | None) -> str:
    header = [h.format(reference=f"`{baseline}`" if baseline else "baseline") for h in SUMMARY_HEADER]
    return pipe_table(header, summary_rows(summaries, baseline), align="lllllrrrrllll")


# ---------------------------------------------------------------------------------------------------------------
# Epoch tables (fastai's format)


def epoch_rows(history: pd.DataFrame, stages: Any = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of an epoch table: epoch, train_loss, valid_loss, accuracy, time (+ stage, size).

    The stage and size columns are added when the run had several stages (progressive resizing).
    """
    per_epoch = stage_per_epoch(stages)
    with_stage = len({name for name, _ in per_epoch}) > 1
    header = ["epoch", "train_loss", "valid_loss", "accuracy", "time"] + (["stage", "size"] if with_stage else [])
    rows = []
    for epoch, r in history.iterrows():
        row = [str(int(epoch))] + [
            "-" if pd.isna(r.get(k)) else f"{r.get(k):.6f}" for k in ("train_loss", "valid_loss", "accuracy")
        ]
        row.append("-" if pd.isna(r.get("epoch_time_s")) else format_time(float(r["epoch_time_s"])))
        if with_stage:
            name, size = per_epoch[int(epoch)] if int(epoch) < len(per_epoch) else ("", r.get("image_size"))
            if not pd.isna(r.get("image_size")):
                size = int(r["image_size"])
            row += [name, str(size)]
        rows.append(row)
    return header, rows


def epoch_table_markdown(history: pd.DataFrame, stages: Any = None) -> str:
    header, rows = epoch_rows(history, stages)
    return pipe_table(header, rows, align="r" * 5 + "l" * (len(header) - 5))


def published_epoch_markdown(source: str, *recipes: str) -> str:
    """Published recipes' epoch tables as printed (several recipes: one after the other, with a recipe column)."""
    rows = []
    for recipe in recipes:
        for _, r in published_epochs(source, recipe).iterrows():
            if pd.isna(r["epoch"]):
                continue
            row = [str(int(r["epoch"])), f"{r['train_loss']:.6f}", f"{r['valid_loss']:.6f}", f"{r['accuracy']:.6f}"]
            rows.append([*row, r["time"], *([recipe] if len(recipes) > 1 else [])])
    header = ["epoch", "train_loss", "valid_loss", "accuracy", "time"] + (["recipe"] if len(recipes) > 1 else [])
    return pipe_table(header, rows, align="rrrrr" + "l" * (len(header) - 5))
