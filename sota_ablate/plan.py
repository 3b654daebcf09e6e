"""One plan per cell and seed: the only place where a cell's settings are resolved.

``make_plans(grid, seeds, opts)`` turns (grid, cell, seed, profile, command-line options) into immutable
``CellPlan``s, resolving each cell once. Precedence, later layers winning:

    TrainConfig defaults < profile < grid [defaults] < cell (and [overrides.<cell>]) < --set

(the grid file's layers are merged into ``Cell.overrides`` when it is parsed, ``grid.py``), then every epoch count
is multiplied by ``--epochs-scale`` and the profile's scale. Technique hyperparameters: the technique's defaults <
profile < grid and cell tables. A bad value fails here, naming the grid file and cell (or ``--set``), before any
data is loaded or run created.

Sweep grids over the budget (``grid.py``): the budget replaces the cell's epoch counts here (split by
``budget.split_epochs``); with ``budget_unit = "flops"`` every arm's plan also carries its reference arm's resolved
recipe, and ``equalise_compute``, right after the data is loaded and the plans bound, sets each arm's epochs to
those that fit in the reference's FLOPs (which need the number of training images).

A plan is bound to the loaded data's identity (``bind``) once the data is there; from then on it knows its params,
tags and identity hash (``config_hash``: everything that determines the cell's numbers). The runner, resume,
executors (a Ray worker trains the plan it is sent) and the MLflow record all read plans; nothing re-resolves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import IO, Any

import torch

from sota_ablate import budget, schema
from sota_ablate.config import ConfigError, TrainConfig, apply_overrides, config_hash, flatten, scale_epoch_count
from sota_ablate.data import DataConfig
from sota_ablate.grid import Cell, Grid, GridError, SweepPoint
from sota_ablate.precision import Target
from sota_ablate.profiles import Profile
from sota_ablate.registry import UnknownNameError
from sota_ablate.techniques import Technique, create_techniques, label
from sota_ablate.train.loop import recipe_stages
from sota_ablate.train.state import uses_channels_last

# data.info keys that describe how the data was loaded this time, not which data: not part of any identity.
VOLATILE_DATA_PREFIX = "cache_"


@dataclass
class RunOptions:
    """Everything ``run-grid`` takes besides the grid: the scale and overrides every plan gets (``profile``,
    ``epochs_scale``, ``overrides``, ``device``) and how the grid runs (data, checkpoints, output)."""

    profile: Profile
    data: DataConfig
    device: torch.device
    epochs_scale: float = 1.0
    log_model: bool = False
    register_model: str | None = None  # with log_model: the registered model's name (None: not registered)
    force: bool = False
    progress_bar: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # command-line recipe overrides (--set)
    out: IO[str] | None = None  # None: sys.stdout
    # Epoch checkpoints (``train/checkpoint.py``). run_grid fills in the default (``checkpoints/`` next to a
    # sqlite store, else in the working directory); None when calling run_cell directly: no checkpoints.
    checkpoint_dir: str | None = None
    # run-grid --precision: extra seeds after the grid's (the pilot) until each comparison's 95% interval is
    # narrow enough (``precision.py``); part of the grid's identity when set.
    precision: Target | None = None
    # How the cells run on their device (none of it changes the numbers beyond float rounding; not identity):
    data_on: str = "auto"  # where the data lives: auto | device | host (data/placement.py)
    compile: bool = False  # torch.compile the model's train and eval steps (train/compiled.py)
    cells_per_gpu: int = 1  # cells trained at once on one GPU by the local executor (executors/local.py)
    gpu_memory_bytes: int | None = None  # cap this process's CUDA memory (set_per_process_memory_fraction)


def data_identity(info: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``ImageData.info`` that says which data a run saw (not how it was loaded this time)."""
    return {k: v for k, v in info.items() if not k.startswith(VOLATILE_DATA_PREFIX)}


@dataclass(frozen=True)
class CellPlan:
    """Everything about one cell x seed of a grid run, resolved.

    Attributes:
        grid: the grid's name.
        cell: the cell's name.
        seed: the seed (init, data order, augmentation, mixup draws).
        run_name: the cell run's name (``<cell>-seed<N>`` when the grid run has several seeds).
        index, total: 1-based position in the grid run's order (seed-major, then the grid's cell order) and the
            number of cell runs.
        techniques: the technique instances with their hyperparameters, sorted by hook priority.
        technique_names: the techniques as the cell lists them.
        train: the resolved TrainConfig (epochs scaled, seed set).
        profile: the profile's name.
        device: where the cell trains (``str(torch.device)``).
        git_commit: the code's version (``-dirty`` when the checkout has changes).
        data_info: ``ImageData.info`` of the data the plan is bound to (None until ``bind``).
        sweep: the cell's place in the grid's sweep (sweep grids only).
        budget_weights: a budget cell's epoch counts as its settings give them (the proportions its budget is
            split by); () for other cells.
        reference: a ``budget_unit = "flops"`` cell's reference arm at the same budget, resolved: (config,
            techniques) whose training FLOPs the cell's are equalised to (``equalise_compute``).
        target_flops, achieved_flops: set by ``equalise_compute``: the reference's FLOPs and the cell's.
    """

    grid: str
    cell: str
    seed: int
    run_name: str
    index: int
    total: int
    techniques: tuple[Technique, ...]
    technique_names: tuple[str, ...]
    train: TrainConfig
    profile: str
    device: str
    git_commit: str
    data_info: Mapping[str, Any] | None = None
    sweep: SweepPoint | None = None
    budget_weights: tuple[int, ...] = ()
    reference: tuple[TrainConfig, tuple[Technique, ...]] | None = None
    target_flops: int | None = None
    achieved_flops: int | None = None

    @property
    def label(self) -> str:
        """The ``techniques`` tag: ``fp16,normalize`` in the registry's order, ``none`` for the baseline."""
        return label(self.technique_names)

    def bind(self, data_info: Mapping[str, Any]) -> CellPlan:
        """The same plan for the loaded data (``ImageData.info``)."""
        return dataclasses.replace(self, data_info=MappingProxyType(dict(data_info)))

    def _data(self) -> Mapping[str, Any]:
        if self.data_info is None:
            raise RuntimeError(f"the plan of {self.run_name} is not bound to data yet (CellPlan.bind)")
        return self.data_info

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """``train.*`` and ``tech.<name>.*``, flattened."""
        params = {schema.train_param(k): v for k, v in flatten(self.train).items()}
        for t in self.techniques:
            for k, v in t.hyperparameters().items():
                params[schema.tech_param(t.name, k)] = v
        return params

    @property
    def identity(self) -> dict[str, Any]:
        """Everything that determines the cell's numbers: hyperparameters (seed included), techniques, data."""
        return {
            **self.hyperparameters,
            **{schema.data_param(k): v for k, v in data_identity(self._data()).items()},
            schema.TECHNIQUES: sorted(self.technique_names),
        }

    @property
    def config_hash(self) -> str:
        return config_hash(self.identity)

    @property
    def total_epochs(self) -> int:
        """Epochs over all stages (progressive: small + frozen + fine-tune)."""
        return sum(budget.epoch_weights(self.train, self.techniques))

    @property
    def budget_params(self) -> dict[str, Any]:
        """A budget cell's total epochs and, for equal compute, the FLOPs target and the cell's own FLOPs."""
        if self.sweep is None or not self.sweep.is_budget:
            return {}
        out: dict[str, Any] = {schema.BUDGET_EPOCHS: self.total_epochs}
        if self.target_flops is not None:
            out[schema.BUDGET_TARGET_FLOPS] = self.target_flops
            out[schema.BUDGET_ACHIEVED_FLOPS] = self.achieved_flops
        return out

    @property
    def sweep_tags(self) -> dict[str, str]:
        """``sweep_key``, ``sweep_value``, ``sweep_arm``, ``sweep_reference`` (and ``budget_unit``) of a sweep cell."""
        if self.sweep is None:
            return {}
        p = self.sweep
        tags = {schema.SWEEP_KEY: p.key, schema.SWEEP_VALUE: p.value_text, schema.SWEEP_ARM: p.arm,
                schema.SWEEP_REFERENCE: p.reference}  # fmt: skip
        if p.unit is not None:
            tags[schema.BUDGET_UNIT] = p.unit
        return tags

    @property
    def params(self) -> dict[str, Any]:
        """What the cell run logs as MLflow params before training (the loop adds stages, dtype, model size)."""
        return {
            **self.budget_params,
            **self.hyperparameters,
            **{schema.data_param(k): v for k, v in self._data().items()},
            schema.TECHNIQUES: self.label,
            schema.PROFILE: self.profile,
            schema.DEVICE: self.device,
            schema.SEED: self.seed,
            schema.CELL: self.cell,
            schema.GRID: self.grid,
        }

    @property
    def tags(self) -> dict[str, Any]:
        """The cell run's tags (the runner adds the parent run)."""
        return {
            schema.GRID: self.grid,
            schema.CELL: self.cell,
            schema.TECHNIQUES: self.label,
            schema.SEED: self.seed,
            schema.CONFIG_HASH: self.config_hash,
            schema.PROFILE: self.profile,
            schema.GIT_COMMIT: self.git_commit,
            schema.DEVICE: torch.device(self.device).type,
            **{schema.technique_tag(t): "true" for t in self.technique_names},
            **self.sweep_tags,
        }

    def record(self) -> dict[str, Any]:
        """The plan as JSON (the ``config.json`` artifact of the cell run)."""
        return {
            schema.CELL: self.cell,
            schema.SEED: self.seed,
            schema.TECHNIQUES: self.label,
            schema.CONFIG_HASH: self.config_hash,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.hyperparameters.items()},
            "data": dict(self._data()),
        }


def resolve_cell(
    cell: Cell, grid: Grid, profile: Profile, overrides: Mapping[str, Any], scale: float
) -> tuple[TrainConfig, list[Technique]]:
    """(config, techniques) of ``cell``: the precedence rule (module docstring), with errors naming the cell."""
    cfg, techniques, _ = _resolve(cell, grid, profile, overrides, scale)
    return cfg, techniques


def _resolve(
    cell: Cell, grid: Grid, profile: Profile, overrides: Mapping[str, Any], scale: float
) -> tuple[TrainConfig, list[Technique], tuple[int, ...]]:
    """``resolve_cell`` and a budget cell's epoch weights (the proportions its budget was split by)."""
    recipe, tables = cell.split_overrides()
    try:
        cfg = apply_overrides(TrainConfig(), profile.train, where=f"profile {profile.name!r}")
        cfg = apply_overrides(cfg, recipe, where=f"cell {cell.name!r}")
        cfg.validate()
        for name in tables:
            if name not in cell.techniques:
                raise GridError(
                    f"cell {cell.name!r} sets hyperparameters of {name!r}, which is not among its techniques "
                    f"({', '.join(cell.techniques) or 'none'}); add it to techniques or remove the table"
                )
        hyper = {k: dict(v) for k, v in profile.techniques.items() if k in cell.techniques}
        for name, table in tables.items():
            hyper.setdefault(name, {}).update(table)
        techniques = create_techniques(cell.techniques, hyper)
        weights: tuple[int, ...] = ()
        if cell.sweep is not None and cell.sweep.is_budget:
            weights = budget.epoch_weights(cfg, techniques)
            cfg, techniques = budget.with_budget(cfg, techniques, int(cell.sweep.value), weights)
    except (ConfigError, UnknownNameError, GridError, budget.BudgetError) as err:
        raise GridError(f"{grid.source}: cell {cell.name!r}: {err}") from None
    cfg = apply_overrides(cfg, dict(overrides), where="the command line")
    cfg.validate(where="--set" if overrides else "")
    cfg = dataclasses.replace(cfg, epochs=scale_epoch_count(cfg.epochs, scale))
    techniques = [t.scale_epochs(scale) for t in techniques]
    try:
        recipe_stages(cfg, techniques)  # what the techniques make of the final recipe (progressive's sizes)
    except ConfigError as err:
        raise GridError(f"{grid.source}: cell {cell.name!r}: {err}") from None
    return cfg, techniques, weights


def make_plans(grid: Grid, seeds: Sequence[int], opts: RunOptions, git_commit: str = "unknown") -> list[CellPlan]:
    """One plan per cell x seed, seed-major then in the grid's order; each cell is resolved once.

    Raises:
        GridError: a bad value in the grid file (names the file and cell).
        ConfigError: a bad ``--set`` value.
    """
    scale = opts.epochs_scale * opts.profile.epochs_scale
    every = (*grid.cells, *grid.references)
    resolved = {c.name: _resolve(c, grid, opts.profile, opts.overrides, scale) for c in every}
    total = len(grid.cells) * len(seeds)
    plans = []
    for seed in seeds:
        for cell in grid.cells:
            cfg, techniques, weights = resolved[cell.name]
            reference = None
            if cell.sweep is not None and cell.sweep.unit == "flops":
                ref_cfg, ref_techniques, _ = resolved[reference_cell(grid, cell.sweep)]
                reference = (ref_cfg, tuple(ref_techniques))
            plans.append(
                CellPlan(
                    grid=grid.name,
                    cell=cell.name,
                    seed=seed,
                    run_name=cell.name if len(seeds) == 1 else f"{cell.name}-seed{seed}",
                    index=len(plans) + 1,
                    total=total,
                    techniques=tuple(techniques),
                    technique_names=tuple(cell.techniques),
                    train=dataclasses.replace(cfg, seed=seed),
                    profile=opts.profile.name,
                    device=str(opts.device),
                    git_commit=git_commit,
                    sweep=cell.sweep,
                    budget_weights=weights,
                    reference=reference,
                )
            )
    return plans


def reference_cell(grid: Grid, point: SweepPoint) -> str:
    """The name of the reference arm's cell at ``point``'s value (in ``grid.cells`` or ``grid.references``)."""
    name = f"{point.reference}@{point.value_text}"
    if not any(c.name == name for c in (*grid.cells, *grid.references)):
        raise GridError(f"{grid.source}: the reference cell {name!r} of {point.arm}@{point.value_text} is missing")
    return name


def equalise_compute(plans: Sequence[CellPlan]) -> list[CellPlan]:
    """Bound plans with every ``budget_unit = "flops"`` cell set to the largest epochs whose training FLOPs fit in
    its reference arm's at the same budget (``budget.fit_compute``; the reference keeps its own). Other plans are
    returned as they are.

    Raises:
        RuntimeError: a plan is not bound to data yet (the FLOPs need the number of training images).
    """
    out = []
    targets: dict[Any, int] = {}
    for plan in plans:
        if plan.reference is None:
            out.append(plan)
            continue
        info = plan._data()
        n_train, n_out = int(info["n_train"]), plan.train.n_out or int(info["n_classes"])
        channels_last = uses_channels_last(torch.device(plan.device))
        ref_cfg, ref_techniques = plan.reference
        key = (ref_cfg, ref_techniques, n_train, n_out, channels_last)
        if key not in targets:
            targets[key] = budget.compute(ref_cfg, ref_techniques, n_train, n_out, channels_last)["flops"]
        target = targets[key]
        if plan.sweep is not None and plan.sweep.is_reference:
            cfg, techniques, flops = plan.train, list(plan.techniques), target
        else:
            cfg, techniques, flops = budget.fit_compute(plan.train, plan.techniques, plan.budget_weights, target,
                                                        n_train, n_out, channels_last)  # fmt: skip
        out.append(dataclasses.replace(plan, train=cfg, techniques=tuple(techniques), target_flops=target,
                                       achieved_flops=flops))  # fmt: skip
    return out


def grid_identity(grid: Grid, opts: RunOptions, seeds: Sequence[int], data_info: Mapping[str, Any]) -> str:
    """The hash a rerun of the same grid run finds its parent run by."""
    payload: dict[str, Any] = {
        "grid": grid.name,
        "cells": [(c.name, sorted(c.techniques), c.overrides) for c in grid.cells],
        "seeds": list(seeds),
        "profile": opts.profile.name,
        "epochs_scale": opts.epochs_scale,
        "overrides": opts.overrides,
        "data": data_identity(data_info),
    }
    if grid.sweep is not None:  # only then: grids without a sweep keep the hashes of their earlier runs
        payload["sweep"] = repr(grid.sweep)
    if opts.precision is not None:  # only when set: grid runs without --precision keep their hash
        payload["precision"] = [opts.precision.half_width, opts.precision.max_seeds]
    return config_hash(payload)
