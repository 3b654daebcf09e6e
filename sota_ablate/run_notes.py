"""The descriptions of the runs (MLflow's note, markdown, on each run's page): every sentence from the run itself.

- ``cell_note``: a cell run's cell, grid, profile and seed, its techniques (summary and hyperparameters) and
  recipe; once it has finished, the epochs it trained at each image size and its final accuracy.
- ``grid_note``: a grid run's description, cells, seeds and profile; once it has ended, the summary table of its
  cell runs as the store has them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import groupby
from typing import Any

from sota_ablate import schema
from sota_ablate.plan import CellPlan
from sota_ablate.progress import format_time
from sota_ablate.train.record import EpochRecord


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def cell_note(
    plan: CellPlan,
    records: Sequence[EpochRecord] = (),
    wall_time_s: float | None = None,
    judged: Mapping[str, float] | None = None,
) -> str:
    """The cell run's description; with ``records`` (a finished run) also its stages and results."""
    t = plan.train
    lines = [
        f"**{plan.run_name}**: cell `{plan.cell}` of grid `{plan.grid}`, profile `{plan.profile}`, seed {plan.seed}, "
        f"on {plan.device}.",
        "",
    ]
    if plan.techniques:
        lines.append("Techniques:")
        for tech in plan.techniques:
            hyper = ", ".join(f"{k} {_value(v)}" for k, v in tech.hyperparameters().items())
            lines.append(f"- `{tech.name}`: {tech.summary}" + (f" ({hyper})" if hyper else ""))
    else:
        lines.append("Techniques: none (the baseline).")
    lines += [
        "",
        f"Recipe: {t.model}, fit_one_cycle for {_epochs(t.epochs)} at lr {'found by lr-find' if t.lr == 'find' else _value(t.lr)} (wd {t.wd:g}), batch size "
        f"{t.batch_size}, {t.size} px images.",
    ]
    if records:
        last = records[-1]
        stages = ", ".join(f"{len(list(g))} at {size} px" for size, g in groupby(r.size for r in records))
        result = f"Final accuracy: **{last.accuracy:.4f}** (valid loss {last.valid_loss:.4f}) after "
        result += f"{_epochs(len(records))} ({stages})"
        result += "".join(f", {k} {v:.4f}" for k, v in (judged or {}).items())
        if wall_time_s is not None:
            result += f", in {format_time(wall_time_s)}"
        lines += ["", result + "."]
    return "\n".join(lines)


def grid_note(
    name: str,
    description: str,
    cells: Sequence[str],
    seeds: Sequence[int],
    profile: str,
    children: Any = None,
    judged: Iterable[str] = (),
) -> str:
    """The grid run's description; with ``children`` (``search_runs`` of its cell runs) also their table."""
    lines = [f"**Grid `{name}`**" + (f": {description.strip()}" if description.strip() else ""), ""]
    lines.append(
        f"{len(cells)} cells ({', '.join(f'`{c}`' for c in cells)}) x {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}), profile `{profile}`."
    )
    if children is not None:
        lines += ["", *summary_markdown(children, list(judged))]
    return "\n".join(lines)


def summary_markdown(children: Any, judged: Sequence[str]) -> list[str]:
    """One row per cell run (``search_runs`` frame): cell, seed, status, final accuracy, judged metrics, time."""
    if children.empty:
        return ["No cell runs."]

    def metric(row: Any, key: str) -> str:
        v = row.get(f"metrics.{key}")
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    def wall(row: Any) -> str:
        v = row.get(f"metrics.{schema.WALL_TIME}")
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format_time(v)

    head = ["cell", "seed", "status", "final accuracy", *judged, "time"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = children.sort_values(by=[f"tags.{schema.SEED}", "start_time"])
    for _, row in rows.iterrows():
        values = [str(row.get(f"tags.{schema.CELL}")), str(row.get(f"tags.{schema.SEED}")), str(row["status"]),
                  metric(row, schema.FINAL_ACCURACY), *(metric(row, k) for k in judged), wall(row)]  # fmt: skip
        out.append("| " + " | ".join(values) + " |")
    return out
