"""The caveats that apply to a grid ("Read this first"): partial grids, budgets that differ, too few seeds, not
the official split, not full-size Imagenette, bf16 standing in for fp16, scaled-down runs, the head size, and
valid_loss of techniques that train with a loss of their own (those that claim the ``loss``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sota_ablate import schema
from sota_ablate.report.collect import GridData
from sota_ablate.report.keys import param, tag
from sota_ablate.report.prose import listing
from sota_ablate.report.tables import CellSummary
from sota_ablate.techniques import TECHNIQUES, ordered


def _replaces_loss(technique: str) -> bool:
    return technique in TECHNIQUES and "loss" in TECHNIQUES.get(technique).claims


def _recorded(data: GridData, key: str) -> set[str]:
    values = set()
    for _, row in data.runs.iterrows():
        value = row.get(param(key))
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
    splits = _recorded(data, schema.data_param("split"))
    if splits - {"official"}:
        notes.append(
            "**Not the official split.** The runs used the chapter's split (a seeded random 20% of train and val "
            "together, as fastai's `RandomSplitter` in the book), not Imagenette's official `val/` folder."
        )
    sources, variants = _recorded(data, schema.data_param("source")), _recorded(data, schema.data_param("variant"))
    per_class = _recorded(data, schema.data_param("train_per_class")) | _recorded(
        data, schema.data_param("valid_per_class")
    )
    n_train, n_valid = data.parent_param(schema.data_param("n_train")), data.parent_param(schema.data_param("n_valid"))
    if "folder" in sources or variants - {"full"} or per_class - {"all"}:
        where = []
        if "folder" in sources:
            where.append(
                f"a local folder ({', '.join(f'`{p}`' for p in sorted(_recorded(data, schema.data_param('path'))))})"
            )
        if variants - {"full"}:
            where.append(f"the {', '.join(sorted(variants - {'full'}))} archive")
        if per_class - {"all"}:
            where.append(f"a subset of {n_train} training / {n_valid} validation images")
        notes.append(
            f"**Not full-size Imagenette.** The data is {' and '.join(where)}, not the book's `imagenette2` "
            "(9,469 / 3,925 images at full resolution): absolute accuracies are not comparable with the book."
        )
    if "bfloat16" in _recorded(data, schema.DTYPE):
        notes.append(
            "**CPU bfloat16 stood in for CUDA fp16.** Mixed-precision cells ran bfloat16 autocast on the CPU: "
            "their accuracy is indicative, their speed says nothing about fp16 on a GPU."
        )
    profile = data.parent_param(schema.PROFILE) or data.parent.get(tag(schema.PROFILE))
    models = _recorded(data, schema.train_param("model"))
    if profile != "chapter" or models - {"xresnet50"}:
        notes.append(
            f"**Scaled down** (profile `{profile}`, model {', '.join(sorted(models)) or '?'}): the published column "
            "(xresnet50 at 224 px on full Imagenette, GPU) is a reference point, not a target these runs should hit."
        )
    n_out = _recorded(data, schema.train_param("n_out"))
    if n_out:
        notes.append(
            f"**Head size.** These runs use {', '.join(sorted(n_out))} outputs; the book's printed numbers came from "
            "`xresnet50()` with 1000 outputs (fastbook#254 later changed it to `n_out=dls.c`)."
        )
    own_loss = [t for t in ordered(set().union(*(s.techniques for s in summaries))) if _replaces_loss(t)]
    if own_loss:
        notes.append(
            f"**valid_loss with {listing([t.replace('_', ' ') for t in own_loss])}** is the loss "
            f"{'it trains' if len(own_loss) == 1 else 'they train'} with (as in fastai), so it is not comparable "
            "with other cells' valid_loss; compare accuracies."
        )
    notes += [f"**Collection:** {n}" for n in data.notes]
    return notes
