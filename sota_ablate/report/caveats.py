"""The caveats that apply to a grid ("Read this first"): partial grids, budgets that differ, too few seeds, not
the official split, not full-size Imagenette (or not Imagenette at all), bf16 standing in for fp16, scaled-down runs, the head size,
valid_loss of techniques that train with a loss of their own (those that claim the ``loss``), timings of runs
made while the machine was loaded, the book's numbers coming from a leaky split, and runs from uncommitted code.

All of them are read from the runs: none is typed in for a particular grid."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence

from sota_ablate import schema
from sota_ablate.report import stats
from sota_ablate.report.collect import GridData
from sota_ablate.report.dataset import dataset_name, is_imagenette
from sota_ablate.report.formatting import format_duration
from sota_ablate.report.keys import metric, param, tag
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


def honesty_notes(
    data: GridData, summaries: Sequence[CellSummary], baseline: str | None, compare_budgets: bool = True
) -> list[str]:
    """The caveats that apply to this grid, each one sentence or two (``compare_budgets=False``: no note on budgets
    that differ from the reference's, for a sweep grid, whose section says what it held equal at each value)."""
    notes: list[str] = []
    by_cell = {s.cell: s for s in summaries}
    left_out = left_out_cells(data)
    if left_out:
        notes.append(
            f"**Not the whole grid.** `run-grid --cells` left out {listing([f'`{c}`' for c in left_out])} of the "
            "grid file: nothing here speaks for them."
        )
    incomplete = [s for s in summaries if not s.complete]
    if incomplete:
        listed = ", ".join(f"`{s.cell}` ({s.status})" for s in incomplete)
        notes.append(f"**Partial grid.** Not every cell finished: {listed}. Their rows show what exists.")
    ref = by_cell.get(baseline) if baseline else None
    if compare_budgets and ref is not None:
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
    elif compare_budgets and baseline is None:
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
    book, dataset = is_imagenette(data), dataset_name(data)
    splits = _recorded(data, schema.data_param("split"))
    if splits - {"official"}:
        notes.append(
            "**Not the official split.** The runs used the chapter's split (a seeded random 20% of train and val "
            f"together, as fastai's `RandomSplitter` in the book), not {dataset}'s own `val/` folder."
        )
    sources, variants = _recorded(data, schema.data_param("source")), _recorded(data, schema.data_param("variant"))
    per_class = _recorded(data, schema.data_param("train_per_class")) | _recorded(
        data, schema.data_param("valid_per_class")
    )
    n_train, n_valid = data.parent_param(schema.data_param("n_train")), data.parent_param(schema.data_param("n_valid"))
    if not book:
        subset = f", a subset of {n_train} training / {n_valid} validation images" if per_class - {"all"} else ""
        notes.append(
            f"**Not Imagenette.** The data is {dataset} ({data.parent_param(schema.data_param('n_classes'))} "
            f"classes{subset}): the book's published Imagenette numbers do not apply, so the report shows none."
        )
    elif "folder" in sources or variants - {"full"} or per_class - {"all"}:
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
    if (profile != "chapter" or models - {"xresnet50"}) and not book:
        notes.append(
            f"**Scaled down** (profile `{profile}`, model {', '.join(sorted(models)) or '?'}): not the chapter's "
            "xresnet50 at 224 px on a GPU."
        )
    elif profile != "chapter" or models - {"xresnet50"}:
        notes.append(
            f"**Scaled down** (profile `{profile}`, model {', '.join(sorted(models)) or '?'}): the published column "
            "(xresnet50 at 224 px on full Imagenette, GPU) is a reference point, not a target these runs should hit."
        )
    n_out = _recorded(data, schema.train_param("n_out"))
    if n_out and book:
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
    notes += [n for n in (label_noise_note(data), loaded_machine_note(data), leaky_split_note(data, summaries)) if n]
    notes += [n for n in (dirty_code_note(data),) if n]
    notes += [f"**Collection:** {n}" for n in data.notes]
    return notes


SLOW = 0.75  # a run slower than 75 % of the median images/s of its cell's other seeds was timed on a loaded machine
CPU_EXCESS = 20.0  # or its mean system CPU % is this many points above the median of the cell's other seeds


def left_out_cells(data: GridData) -> list[str]:
    """The grid file's cells that ``--cells`` left out of this grid run (logged as a list on the grid run) and that
    no other aggregated grid run trained."""
    value = data.parent_param(schema.CELLS_LEFT_OUT)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if not value:
        return []
    names = [str(n) for n in value] if isinstance(value, list) else [str(value)]
    return [n for n in names if n not in data.cells]  # --all-seeds: another grid run may have trained them


def loaded_runs(data: GridData) -> list[tuple[str, int, str]]:
    """(cell, seed, why) of the runs whose timings look like a loaded machine: images/s more than 25 % below the
    median of the same cell's other seeds, or mean system CPU (``system/cpu_utilization_percentage``) more than
    20 points above theirs."""
    out = []
    speed_key = metric(schema.MEAN_IMAGES_PER_S)
    for cell in data.cells:
        rows = data.cell_rows(cell)
        if len(rows) < 2:
            continue
        speeds = data.values(cell, speed_key)
        cpus = {
            int(r["seed"]): data.system_cpu[r["run_id"]] for _, r in rows.iterrows() if r["run_id"] in data.system_cpu
        }
        for seed in sorted(speeds):
            others = [v for s, v in speeds.items() if s != seed]
            why = []
            median = stats.median(others)
            if others and median > 0 and speeds[seed] < SLOW * median:
                why.append(f"{speeds[seed]:.0f} images/s vs a median of {median:.0f} for its other seeds")
            other_cpu = [v for s, v in cpus.items() if s != seed]
            if seed in cpus and other_cpu and cpus[seed] > stats.median(other_cpu) + CPU_EXCESS:
                why.append(f"system CPU {cpus[seed]:.0f} % vs {stats.median(other_cpu):.0f} %")
            if why:
                out.append((cell, seed, "; ".join(why)))
    return out


def loaded_machine_note(data: GridData) -> str:
    """The caveat on runs timed while the machine was loaded (their accuracy is unaffected, their time is not)."""
    flagged = loaded_runs(data)
    if not flagged:
        return ""
    listed = "; ".join(f"`{cell}` seed {seed} ({why})" for cell, seed, why in flagged)
    walls = [data.values(cell, metric(schema.WALL_TIME)).get(seed, math.nan) for cell, seed, _ in flagged]
    longest = max((w for w in walls if not math.isnan(w)), default=math.nan)
    return (
        f"**Timings of {len(flagged)} run(s) look like a loaded machine** (another job running alongside): "
        f"{listed}. Their accuracies are unaffected; their times (up to {format_duration(longest)} of wall time) are "
        "inflated, and so are the time ratios and speeds that include them."
    )


def leaky_split_note(data: GridData, summaries: Sequence[CellSummary]) -> str:
    """The caveat on the book's numbers: the chapter drew a random 20 % split on every ``get_dls`` call, so in
    progressive resizing most final validation images had been training images."""
    if all(s.published == "-" for s in summaries):
        return ""
    splits = _recorded(data, schema.data_param("split"))
    ours = f"these runs use the `{', '.join(sorted(splits))}` split" if splits else "these runs' split is not recorded"
    return (
        "**The book's numbers come from a leaky split.** The chapter passed no splitter, so fastai drew a new random "
        "20 % split of train and val on every `get_dls` call: across progressive resizing about 80 % of the final "
        f"validation images had been training images, which inflates its progressive and TTA numbers; {ours}."
    )


def label_noise_note(data: GridData) -> str:
    """The caveat on cells trained on noisy labels: per level, its cells, where the labels came from and the
    realised fraction of wrong training labels (``train.label_noise``, ``label_noise.*`` params)."""
    level_key, source_key = param(schema.train_param("label_noise")), param(schema.LABEL_NOISE_SOURCE)
    fraction_key = param(schema.LABEL_NOISE_FLIP_FRACTION)
    if level_key not in data.runs.columns:
        return ""
    by_level: dict[int, tuple[set[str], set[str], list[float]]] = {}
    for _, row in data.runs.iterrows():
        level = row.get(level_key)
        if level is None or level != level or int(level) == 0:
            continue
        cells, sources, fractions = by_level.setdefault(int(level), (set(), set(), []))
        cells.add(str(row["cell"]))
        sources.add(str(row.get(source_key)))
        fraction = row.get(fraction_key)
        if fraction is not None and fraction == fraction:
            fractions.append(float(fraction))
    if not by_level:
        return ""
    parts = []
    for level, (cells, sources, fractions) in sorted(by_level.items()):
        realised = f"; realised {100 * min(fractions):.1f} %" if fractions else ""
        if fractions and max(fractions) != min(fractions):
            realised += f" to {100 * max(fractions):.1f} %"
        parts.append(
            f"{level} % in {', '.join(f'`{c}`' for c in sorted(cells))} ({', '.join(sorted(sources))}{realised})"
        )
    return (
        f"**Noisy training labels.** Some cells trained with a share of wrong training labels: {'; '.join(parts)}. "
        "Validation labels are clean, so accuracy measures how well the true classes were learnt."
    )


def dirty_code_note(data: GridData) -> str:
    """The caveat on runs made from uncommitted code (``git_commit`` tag ending in ``-dirty``)."""
    column = tag(schema.GIT_COMMIT)
    commits = set()
    if column in data.runs.columns:
        commits |= {str(c) for c in data.runs[column] if isinstance(c, str)}
    parent = data.parent.get(column)
    if isinstance(parent, str):
        commits.add(parent)
    dirty = sorted(c for c in commits if c.endswith("-dirty"))
    if not dirty:
        return ""
    return (
        f"**Uncommitted code.** Runs were made from a working tree with local changes ({', '.join(f'`{c}`' for c in dirty)}): "
        "the commit alone does not say exactly what ran."
    )
