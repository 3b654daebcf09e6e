"""Tables of the report: the per-cell summary and epoch tables in fastai's format.

``cell_summary`` turns a ``GridData`` into one numeric row per cell (mean, std and n over seeds, the
difference to the reference with its confidence interval, the metrics that judge evaluation-only techniques,
timings); ``summary_markdown`` formats it. ``epoch_table_markdown`` prints one run's epochs the way fastai does
(epoch, train_loss, valid_loss, accuracy with 6 decimals, any per-epoch metric a technique logs, time as mm:ss).
Which techniques exist, and which metric judges each, comes from the technique registry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sota_ablate import schema
from sota_ablate.progress import format_time
from sota_ablate.report import keys, stats
from sota_ablate.report.collect import GridData
from sota_ablate.report.comparison import CellDelta, cell_budget, cell_delta, total_epochs
from sota_ablate.report.dataset import is_imagenette
from sota_ablate.report.formatting import format_accuracy, format_count, format_difference, format_duration, pipe_table
from sota_ablate.report.published import published_text
from sota_ablate.techniques import get_technique, label, technique_names

# ---------------------------------------------------------------------------------------------------------------
# Recipes from the logged stages


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


def stage_per_epoch(stages: Any) -> list[tuple[str, int]]:
    """(stage name, size) for each global epoch, from the ``stages`` param."""
    out: list[tuple[str, int]] = []
    if isinstance(stages, list):
        for st in stages:
            out += [(str(st.get("name", "")), int(st.get("size", 0)))] * int(st.get("epochs", 0))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The per-cell summary


def judging_metrics() -> list[tuple[str, str]]:
    """(technique, metric key) for every registered technique judged by a metric of its own (``judged_by``:
    TTA by its TTA accuracy), in registry order: the summary table's extra accuracy columns."""
    out = []
    for name in technique_names():
        judged_by = get_technique(name).judged_by
        if judged_by:
            out.append((name, judged_by))
    return out


@dataclass(frozen=True)
class CellSummary:
    """Everything the summary table shows about one cell (numbers unformatted).

    ``judged`` holds, per ``judging_metrics`` key (e.g. ``tta_accuracy``), that metric over the cell's seeds.
    """

    cell: str
    techniques: frozenset[str]
    label: str
    recipe: str
    epochs: int | None
    status: str
    complete: bool
    accuracy: stats.Summary
    judged: dict[str, stats.Summary]
    difference: stats.Difference | None
    delta: CellDelta | None
    steps: int | None
    images: int | None
    epoch_time_s: float
    wall_time_s: float
    images_per_s: float
    device: str
    dtype: str
    published: str
    label_noise: float = 0.0  # the % of wrong training labels it trained with (the book's labels were clean)


def _mean_of(values: dict[int, float]) -> float:
    return stats.mean(list(values.values()))


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
    base_acc = data.values(baseline, keys.FINAL_ACCURACY) if baseline else {}
    judging = judging_metrics()
    book = is_imagenette(data)  # the published column holds the book's Imagenette numbers
    out = []
    for cell in data.cells:
        techniques = data.technique_set(cell)
        acc = data.values(cell, keys.FINAL_ACCURACY)
        status, complete = status_text(data, cell)
        delta = cell_delta(data, cell, baseline) if baseline and cell != baseline and acc and base_acc else None
        budget = cell_budget(data, cell)
        stages = data.first(cell, keys.param(schema.STAGES))
        fallback = (
            data.first(cell, keys.param(schema.train_param("epochs"))),
            data.first(cell, keys.param(schema.train_param("size"))),
            data.first(cell, keys.param(schema.train_param("batch_size"))),
        )
        epochs = total_epochs(stages, fallback[0])
        device = data.first(cell, keys.param(schema.DEVICE)) or data.first(cell, keys.tag(schema.DEVICE)) or "-"
        noise = float(data.first(cell, keys.param(schema.train_param("label_noise"))) or 0)
        out.append(
            CellSummary(
                cell=cell,
                techniques=techniques,
                label=label(techniques),
                recipe=stage_recipe(stages, fallback),
                epochs=epochs,
                status=status,
                complete=complete,
                accuracy=stats.summarize(list(acc.values())),
                judged={key: stats.summarize(list(data.values(cell, keys.metric(key)).values())) for _, key in judging},
                difference=delta.diff if delta else None,
                delta=delta,
                steps=budget.steps,
                images=budget.images,
                epoch_time_s=_mean_of(data.values(cell, keys.metric(schema.MEAN_EPOCH_TIME))),
                wall_time_s=_mean_of(data.values(cell, keys.WALL_TIME)),
                images_per_s=_mean_of(data.values(cell, keys.metric(schema.MEAN_IMAGES_PER_S))),
                device=str(device),
                dtype=str(data.first(cell, keys.param(schema.DTYPE)) or "-"),
                # the book trained on clean labels: its numbers are no counterpart of a cell with wrong ones
                published=published_text(techniques, epochs) if book and not noise else "-",
                label_noise=noise,
            )
        )
    return out


def best_cell(summaries: Sequence[CellSummary]) -> str | None:
    """The cell with the highest mean final accuracy (None when no cell finished)."""
    scored = [s for s in summaries if s.accuracy.n > 0]
    return max(scored, key=lambda s: s.accuracy.mean).cell if scored else None


def summary_header(reference: str | None) -> list[str]:
    """The summary table's columns: one accuracy column per ``judging_metrics`` key after the plain accuracy."""
    return [
        "cell",
        "techniques",
        "recipe (epochs x size, bs)",
        "optimizer steps",
        "images seen",
        "accuracy (mean ± std, n)",
        *[key for _, key in judging_metrics()],
        f"Δ vs {f'`{reference}`' if reference else 'baseline'} [95% CI]",
        "epoch time",
        "wall time",
        "images/s",
        "device",
        "dtype",
        "published",
        "status",
    ]


def summary_rows(summaries: Sequence[CellSummary], baseline: str | None) -> list[list[str]]:
    """The summary table's cells as strings, the best cell in bold, incomplete cells marked."""
    best = best_cell(summaries)
    judging = [key for _, key in judging_metrics()]
    rows = []
    for s in summaries:
        name, acc = f"`{s.cell}`", format_accuracy(s.accuracy)
        if s.cell == best:
            name, acc = f"**{name}**", f"**{acc}**"
        diff = "(reference)" if s.cell == baseline else delta_text(s.delta)
        status = s.status if s.complete else f"⚠ {s.status}"
        judged = [format_accuracy(s.judged[k]) if k in s.judged and s.judged[k].n else "-" for k in judging]
        rows.append(
            [
                name,
                s.label,
                s.recipe,
                format_count(s.steps),
                format_count(s.images),
                acc,
                *judged,
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


def delta_text(delta: CellDelta | None) -> str:
    """The summary's Δ: the difference with its interval, the metric when it is not the plain accuracy, or why the
    cell is not compared."""
    if delta is None:
        return "-"
    if delta.diff is None:
        return "not compared (trains identically)" if delta.reason else "-"
    text = format_difference(delta.diff)
    return text if delta.metric == "accuracy" else f"{text} ({delta.metric})"


def summary_markdown(summaries: Sequence[CellSummary], baseline: str | None, published: bool = True) -> str:
    """The summary table; without the ``published`` column when the book's numbers do not apply (not Imagenette)."""
    header = summary_header(baseline)
    align = "lllrrl" + "l" * (len(header) - 14) + "rrrrllll"
    rows = summary_rows(summaries, baseline)
    if not published:
        drop = header.index("published")
        header, align = header[:drop] + header[drop + 1 :], align[:drop] + align[drop + 1 :]
        rows = [row[:drop] + row[drop + 1 :] for row in rows]
    return pipe_table(header, rows, align=align)


# ---------------------------------------------------------------------------------------------------------------
# Epoch tables (fastai's format)


def extra_epoch_keys(logged: Any) -> list[str]:
    """The per-epoch keys a run logged beyond every run's own (a technique's ``epoch_metrics``), from its
    ``epoch_metric_keys`` param (absent in runs older than it: none)."""
    if not isinstance(logged, list):
        return []
    base = set(schema.base_epoch_metric_keys())
    return [str(k) for k in logged if k not in base]


def _value(r: pd.Series, key: str) -> str:
    return "-" if pd.isna(r.get(key)) else f"{r.get(key):.6f}"


def epoch_rows(
    history: pd.DataFrame, stages: Any = None, extra: Sequence[str] = ()
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of an epoch table: epoch, train_loss, valid_loss, accuracy, ``extra`` metrics, time (+ stage,
    size).

    The stage and size columns are added when the run had several stages (progressive resizing).
    """
    per_epoch = stage_per_epoch(stages)
    with_stage = len({name for name, _ in per_epoch}) > 1
    shown = [*keys.table_keys(), *extra]
    header = ["epoch", *shown, "time"] + (["stage", "size"] if with_stage else [])
    rows = []
    for epoch, r in history.iterrows():
        row = [str(int(epoch))] + [_value(r, k) for k in shown]
        row.append("-" if pd.isna(r.get(keys.EPOCH_TIME)) else format_time(float(r[keys.EPOCH_TIME])))
        if with_stage:
            name, size = per_epoch[int(epoch)] if int(epoch) < len(per_epoch) else ("", r.get(keys.IMAGE_SIZE))
            if not pd.isna(r.get(keys.IMAGE_SIZE)):
                size = int(r[keys.IMAGE_SIZE])
            row += [name, str(size)]
        rows.append(row)
    return header, rows


def epoch_table_markdown(history: pd.DataFrame, stages: Any = None, extra: Sequence[str] = ()) -> str:
    header, rows = epoch_rows(history, stages, extra)
    numeric = len(header) - (2 if header[-1] == "size" else 0)
    return pipe_table(header, rows, align="r" * numeric + "l" * (len(header) - numeric))
