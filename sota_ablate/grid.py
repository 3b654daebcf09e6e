"""Grid files: which cells (technique sets + recipe overrides) to train, and with which seeds.

A grid file is TOML::

    name = "chapter"                 # the grid's name (MLflow tag ``grid``, report folder)
    description = "..."
    seeds = [0]                      # every cell runs once per seed
    generate = "one_at_a_time"       # optional: one_at_a_time | all | leave_one_out | factorial
    techniques = ["fp16", "mixup"]   # the techniques ``generate`` combines (default: all six)

    [defaults]                       # applied to every cell: recipe keys and technique tables
    epochs = 5
    progressive = { initial_epochs = 4 }

    [[cells]]                        # explicit cells (added after generated ones)
    name = "all"
    techniques = ["fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing"]
    epochs = 10
    progressive = { initial_epochs = 15 }

    [overrides.mixup]                # per-cell overrides by cell name (generated or explicit cells)
    epochs = 15

Recipe keys are ``TrainConfig`` fields (``epochs``, ``lr``, ``size``, ``batch_size``, ``augment.max_rotate``...);
a table named after a technique sets that technique's hyperparameters.

Sweep grids vary one recipe key (or the training budget) for a reference arm and each technique::

    generate = "sweep"
    techniques = ["label_smoothing", "mixup"]   # the arms besides the reference
    reference = "baseline"                      # optional; "baseline" = no techniques, else a technique (a+b ok)
    [sweep]
    key = "label_noise"                         # a recipe key (dotted ok) or "epochs"
    values = [0, 5, 25, 50]

    generate = "budget"                         # shorthand for a sweep over "epochs"
    budgets = [5, 10, 20, 40]
    budget_unit = "epochs"                      # or "flops"

Cells are ``<arm>@<value>`` (``baseline@5``, ``mixup@20``), value-major (every arm at the first value, then the
next); ``[defaults]`` and ``[overrides."mixup@20"]`` apply as to any cell. A non-epochs sweep value is the cell's
own recipe override (so ``[overrides."<cell>"]`` could still change it).

The budget of a cell (a sweep over ``epochs``) is its TOTAL number of epochs, and it replaces the cell's epoch
counts, which only give the proportions (``plan.py``): a plain cell trains ``epochs = B``; a ``progressive`` cell
splits B between its small epochs, frozen epoch(s) and fine-tune epochs in the proportions of its resolved
settings (``ablations/fair.toml``: 5 + 1 + 4 = 10), by largest remainder (ties to the earlier stage), every stage
the settings give at least one epoch keeping at least one (5 + 1 + 4 at B = 5 -> 2 + 1 + 2; at B = 20 -> 10 + 2 +
8). ``--epochs-scale`` and the profile's scale then multiply the parts as for any cell.

``budget_unit = "flops"``: the reference arm at budget B epochs defines the compute C(B) (its training FLOPs on
the loaded data, ``train/flops.py``); every other arm trains the LARGEST total epoch count whose FLOPs are <= C(B)
(split as above), at least one epoch per stage even when that exceeds C(B). Epochs, steps, images and wall time
then differ between arms; the FLOPs are what is equalised (``plan.equalise_compute``).
"""

from __future__ import annotations

import difflib
import itertools
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sota_ablate.config import ConfigError, TrainConfig, apply_overrides, flatten
from sota_ablate.techniques import check_compatible, technique_names
from sota_ablate.validate import SAFE_NAME

GENERATORS = ("one_at_a_time", "all", "leave_one_out", "factorial", "sweep", "budget")
TOP_LEVEL_KEYS = (
    "name",
    "description",
    "seeds",
    "generate",
    "techniques",
    "defaults",
    "cells",
    "overrides",
    "reference",
    "sweep",
    "budgets",
    "budget_unit",
)
CELL_KEYS = ("name", "techniques", "description")
SWEEP_KEYS = ("key", "values")
BUDGET_KEY = "epochs"  # the recipe key a budget grid sweeps
BUDGET_UNITS = ("epochs", "flops")
BASELINE = "baseline"  # the arm with no techniques
# SAFE_NAME (validate.py): grid and cell names end up in file and folder names, so no separators, no "..";
# "@" joins a sweep cell's arm and value (mixup@20).


class GridError(ValueError):
    """A grid file that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Sweep:
    """What a sweep grid varies: ``key`` over ``values``, for the ``reference`` arm and each of ``arms``.

    Attributes:
        unit: ``"epochs"`` or ``"flops"`` for a sweep over the budget (``key == "epochs"``), else None.
    """

    key: str
    values: tuple[Any, ...]
    reference: str
    arms: tuple[str, ...]
    unit: str | None = None

    @property
    def is_budget(self) -> bool:
        return self.key == BUDGET_KEY


@dataclass(frozen=True)
class SweepPoint:
    """A sweep cell's place in its sweep: the arm (``mixup``, ``baseline``) at ``value`` of ``key``."""

    key: str
    value: Any
    arm: str
    reference: str
    unit: str | None = None

    @property
    def is_budget(self) -> bool:
        return self.key == BUDGET_KEY

    @property
    def is_reference(self) -> bool:
        return self.arm == self.reference

    @property
    def value_text(self) -> str:
        """The value as the cell name and the ``sweep_value`` tag spell it (``20``, ``0.5``, ``true``)."""
        return value_text(self.value)


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Cell:
    """One ablation cell: a set of techniques and overrides (recipe keys and technique tables).

    ``sweep``: the cell's place in the grid's sweep (sweep grids only).
    """

    name: str
    techniques: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    description: str = ""
    sweep: SweepPoint | None = None

    def split_overrides(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(recipe overrides as dotted keys, technique hyperparameters by technique)."""
        recipe: dict[str, Any] = {}
        techs: dict[str, dict[str, Any]] = {}
        known = set(technique_names())
        for key, value in self.overrides.items():
            if key in known:
                if not isinstance(value, dict):
                    raise GridError(f"cell {self.name!r}: {key} must be a table of hyperparameters")
                techs[key] = dict(value)
            elif isinstance(value, dict):
                for sub, v in _dotted(value, key + ".").items():
                    recipe[sub] = v
            else:
                recipe[key] = value
        return recipe, techs


@dataclass(frozen=True)
class Grid:
    name: str
    cells: tuple[Cell, ...]
    seeds: tuple[int, ...] = (0,)
    description: str = ""
    source: str = ""
    sweep: Sweep | None = None
    # cells not run but resolved: the reference arms of equal-compute cells whose reference was not selected
    references: tuple[Cell, ...] = ()
    # the grid file's cells that ``select`` (``--cells``) left out: logged on the grid run, named by the report
    left_out: tuple[str, ...] = ()

    def select(self, names: Sequence[str]) -> Grid:
        """Keep only the named cells (in the grid's order); unknown names list the known ones. An equal-compute
        cell's reference arm is kept in ``references`` (its FLOPs are the cell's budget)."""
        known = [c.name for c in self.cells]
        for n in names:
            if n not in known:
                close = difflib.get_close_matches(n, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise GridError(f"unknown cell {n!r} in grid {self.name!r}.{hint} Cells: {', '.join(known)}.")
        wanted = set(names)
        kept = tuple(c for c in self.cells if c.name in wanted)
        needed = {f"{c.sweep.reference}@{c.sweep.value_text}" for c in kept if c.sweep and c.sweep.unit == "flops"}
        references = tuple(c for c in (*self.cells, *self.references) if c.name in needed - wanted)
        left_out = (*self.left_out, *(n for n in known if n not in wanted))
        return Grid(self.name, kept, self.seeds, self.description, self.source, self.sweep, references, left_out)


def _dotted(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def generate_cells(mode: str, techniques: Sequence[str]) -> list[Cell]:
    """Cells for a generator over ``techniques``.

    - ``one_at_a_time``: baseline, each technique alone, all of them (the chapter's story).
    - ``all``: just the cell with every technique.
    - ``leave_one_out``: all, and all minus each technique (``no_<name>``).
    - ``factorial``: every subset (2**n cells), named by their techniques joined with ``+``; subsets with
      techniques that cannot be combined (both replace the training batch: ``mixup`` and ``cutmix``) are left out.

    Raises:
        GridError: an unknown generator, or ``all``-style cells over techniques that cannot be combined.
    """
    techniques = list(techniques)
    if mode in ("one_at_a_time", "all", "leave_one_out"):
        try:
            check_compatible(techniques)
        except ConfigError as err:
            raise GridError(f"generate = {mode!r} needs a cell with all of {techniques}, but {err}") from None
    if mode == "one_at_a_time":
        return [Cell("baseline", ()), *[Cell(t, (t,)) for t in techniques], Cell("all", tuple(techniques))]
    if mode == "all":
        return [Cell("all", tuple(techniques))]
    if mode == "leave_one_out":
        cells = [Cell("all", tuple(techniques))]
        cells += [Cell(f"no_{t}", tuple(x for x in techniques if x != t)) for t in techniques]
        return cells
    if mode == "factorial":
        cells = []
        for r in range(len(techniques) + 1):
            for combo in itertools.combinations(techniques, r):
                if _compatible(combo):
                    cells.append(Cell("+".join(combo) or "baseline", tuple(combo)))
        return cells
    raise GridError(f"unknown generator {mode!r}; use one of: {', '.join(GENERATORS)}")


def _compatible(names: Sequence[str]) -> bool:
    try:
        check_compatible(names)
    except ConfigError:
        return False
    return True


def check_name(name: str, what: str, source: str) -> None:
    """Raise GridError unless ``name`` is safe in a file name (letters, digits, ``_ . + @ -``; no path parts)."""
    if not SAFE_NAME.fullmatch(name):
        raise GridError(
            f"{source}: {what} {name!r} is not allowed: use letters, digits and _ . + @ - (starting with a letter or "
            "digit, at most 100 characters), since it becomes part of file and folder names."
        )


def _check_keys(keys: Iterable[str], allowed: Sequence[str], where: str) -> None:
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(k, list(allowed), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise GridError(f"unknown key {k!r} in {where}.{hint} Allowed keys: {', '.join(allowed)}.")


def parse_grid(data: dict[str, Any], source: str = "<grid>") -> Grid:
    """Build and validate a ``Grid`` from parsed TOML."""
    _check_keys(data, TOP_LEVEL_KEYS, source)
    known_techs = technique_names()
    name = data.get("name") or Path(source).stem
    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise GridError(f"{source}: seeds must be a non-empty list of distinct integers >= 0, like seeds = [0, 1, 2]")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise GridError(f"{source}: [defaults] must be a table")
    cells: list[Cell] = []
    sweep: Sweep | None = None
    generate = data.get("generate")
    for key, needs in [("reference", "sweep or budget"), ("sweep", "sweep"), ("budgets", "budget"),
                       ("budget_unit", "budget")]:  # fmt: skip
        if key in data and generate not in needs.split(" or "):
            raise GridError(f'{source}: {key!r} needs generate = "{needs.split(" or ")[0]}" (it is {generate!r})')
    if generate in ("sweep", "budget"):
        sweep = parse_sweep(data, source)
        cells += sweep_cells(sweep)
    elif "generate" in data:
        techs = data.get("techniques", known_techs)
        if not isinstance(techs, list) or not all(isinstance(t, str) for t in techs):
            raise GridError(f'{source}: techniques must be a list of technique names, like techniques = ["mixup"]')
        try:
            cells += generate_cells(str(data["generate"]), techs)
        except GridError as err:
            raise GridError(f"{source}: {err}") from None
    elif "techniques" in data:
        raise GridError(f"{source}: 'techniques' at the top level needs 'generate' (e.g. generate = \"all\")")
    for i, raw in enumerate(data.get("cells", [])):
        if not isinstance(raw, dict) or "name" not in raw:
            raise GridError(f'{source}: cells[{i}] needs a name, e.g. [[cells]] name = "baseline"')
        techs = raw.get("techniques", [])
        if not isinstance(techs, list):
            raise GridError(f"{source}: cells[{i}].techniques must be a list of technique names")
        overrides = {k: v for k, v in raw.items() if k not in CELL_KEYS}
        cells.append(Cell(str(raw["name"]), tuple(techs), overrides, str(raw.get("description", ""))))
    if not cells:
        raise GridError(f'{source}: no cells; add [[cells]] tables or generate = "one_at_a_time"')
    per_cell = data.get("overrides", {})
    check_name(str(name), "grid name" if "name" in data else "grid name (from the file name; set name = ...)", source)
    for c in cells:
        check_name(c.name, "cell name", source)
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise GridError(f"{source}: duplicate cell names: {', '.join(dupes)}")
    _check_keys(per_cell, names, f"{source} [overrides] (cell names)")
    merged: list[Cell] = []
    for c in cells:
        # Technique tables in [defaults] apply to the cells that use the technique.
        cell_defaults = {k: v for k, v in defaults.items() if k not in known_techs or k in c.techniques}
        overrides = _deep_merge(cell_defaults, c.overrides)
        overrides = _deep_merge(overrides, per_cell.get(c.name, {}))
        merged.append(Cell(c.name, c.techniques, overrides, c.description, c.sweep))
    return Grid(
        name=str(name),
        cells=tuple(merged),
        seeds=tuple(seeds),
        description=str(data.get("description", "")),
        source=source,
        sweep=sweep,
    )


def arm_techniques(arm: str) -> tuple[str, ...]:
    """The techniques of a sweep arm: none for ``baseline``, else the ``+``-joined names (``mixup``, ``a+b``)."""
    return () if arm == BASELINE else tuple(arm.split("+"))


def parse_sweep(data: dict[str, Any], source: str) -> Sweep:
    """The ``Sweep`` of a ``generate = "sweep"`` or ``"budget"`` grid, validated (errors name the file and key)."""
    known_techs = technique_names()
    arms = data.get("techniques")
    if not isinstance(arms, list) or not all(isinstance(t, str) for t in arms):
        raise GridError(
            f"{source}: generate = {data['generate']!r} needs techniques, the arms besides the reference: a list of "
            'technique names (a+b for a combination), like techniques = ["mixup", "label_smoothing"]'
        )
    reference = data.get("reference", BASELINE)
    if not isinstance(reference, str):
        raise GridError(f'{source}: reference must be a technique name or "baseline" (no techniques)')
    if reference in arms:
        raise GridError(
            f"{source}: reference {reference!r} is also in techniques; the reference arm is trained at every value "
            "anyway: remove it from techniques"
        )
    if len(set(arms)) != len(arms):
        dupes = sorted({a for a in arms if arms.count(a) > 1})
        raise GridError(f"{source}: techniques lists {', '.join(dupes)} more than once")
    for arm in [reference, *arms]:
        if arm == BASELINE:
            continue
        for t in arm_techniques(arm):
            if t not in known_techs:
                close = difflib.get_close_matches(t, [*known_techs, BASELINE], n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise GridError(
                    f"{source}: unknown technique {t!r} in arm {arm!r}.{hint} Techniques: {', '.join(known_techs)} "
                    f'(or "{BASELINE}" for none)'
                )
        try:
            check_compatible(arm_techniques(arm))
        except ConfigError as err:
            raise GridError(f"{source}: arm {arm!r}: {err}") from None
    if data["generate"] == "budget":
        key, values = BUDGET_KEY, data.get("budgets")
        unit = data.get("budget_unit", "epochs")
        if unit not in BUDGET_UNITS:
            raise GridError(f"{source}: budget_unit = {unit!r}: use one of {', '.join(map(repr, BUDGET_UNITS))}")
        what = "budgets"
    else:
        table = data.get("sweep")
        if not isinstance(table, dict):
            raise GridError(f'{source}: generate = "sweep" needs a [sweep] table with key = "..." and values = [...]')
        _check_keys(table, SWEEP_KEYS, f"{source} [sweep]")
        if "key" not in table or "values" not in table:
            raise GridError(f'{source}: [sweep] needs key (a recipe key like "lr", or "epochs") and values = [...]')
        key, values, what = table["key"], table["values"], "[sweep] values"
        if not isinstance(key, str):
            raise GridError(f'{source}: [sweep] key must be a recipe key as a string, like key = "lr"')
        _check_sweep_key(key, source)
        unit = "epochs" if key == BUDGET_KEY else None
    if not isinstance(values, list) or not values:
        raise GridError(f"{source}: {what} must be a non-empty list, like {what.split()[-1]} = [5, 10, 20]")
    texts = [value_text(v) for v in values]
    if len(set(texts)) != len(texts):
        dupes = sorted({t for t in texts if texts.count(t) > 1})
        raise GridError(f"{source}: {what} lists {', '.join(dupes)} more than once")
    for v in values:
        _check_sweep_value(key, v, what, source)
    return Sweep(key, tuple(values), reference, tuple(arms), unit)


def _check_sweep_key(key: str, source: str) -> None:
    known = sorted(flatten(TrainConfig()))
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise GridError(f"{source}: [sweep] key {key!r} is not a recipe key.{hint} Recipe keys: {', '.join(known)}.")


def _check_sweep_value(key: str, value: Any, what: str, source: str) -> None:
    if key == BUDGET_KEY and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise GridError(f"{source}: {what}: {value!r} is not a budget: use whole numbers of epochs >= 1")
    if isinstance(value, dict | list):
        raise GridError(f"{source}: {what}: {value!r} is not a single value for {key}")
    try:
        apply_overrides(TrainConfig(), {key: value}, where=f"{source} {what}")
    except ConfigError as err:
        raise GridError(str(err)) from None


def sweep_cells(sweep: Sweep) -> list[Cell]:
    """``<arm>@<value>`` cells, value-major, the reference arm first at each value."""
    cells = []
    for value in sweep.values:
        for arm in (sweep.reference, *sweep.arms):
            point = SweepPoint(sweep.key, value, arm, sweep.reference, sweep.unit)
            overrides = {} if sweep.is_budget else _nested(sweep.key, value)  # the budget: plan.py
            cells.append(Cell(f"{arm}@{point.value_text}", arm_techniques(arm), overrides, sweep=point))
    return cells


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    """``{"augment": {"max_rotate": 5}}`` for ``augment.max_rotate``: merges with tables in [defaults]."""
    head, _, rest = dotted.partition(".")
    return {head: _nested(rest, value) if rest else value}


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def builtin_grids() -> dict[str, Path]:
    """The grids that ship with the package (``sota_ablate/grids/*.toml``; ``ablations/`` in a checkout), by name."""
    folder = resources.files("sota_ablate").joinpath("grids")
    return {Path(str(f)).stem: Path(str(f)) for f in sorted(folder.iterdir(), key=str) if str(f).endswith(".toml")}


def find_grid(name_or_path: str | Path) -> Path:
    """The grid file ``--grid`` means: an existing file, else a built-in grid's name (``chapter``, ``fair``, ...).

    Raises:
        GridError: neither (the message lists the built-in grids and the closest name).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    builtin = builtin_grids()
    key = str(name_or_path).removesuffix(".toml")
    if key in builtin and path.parent == Path("."):
        return builtin[key]
    close = difflib.get_close_matches(key, list(builtin), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise GridError(
        f"grid {str(name_or_path)!r} is neither a file nor a built-in grid.{hint} Pass --grid with a path to a "
        f"TOML file or one of the built-in grids: {', '.join(builtin)} (list-grids shows them)."
    )


def load_grid(name_or_path: str | Path) -> Grid:
    """Read a grid: a TOML file or a built-in grid's name. Errors name the file and line (syntax) or the key."""
    p = find_grid(name_or_path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{p}: TOML syntax error: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GridError(f"cannot read the grid file {p}: {err}") from None
    return parse_grid(data, source=str(p))
