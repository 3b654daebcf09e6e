"""One plan per cell and seed: the only place where a cell's settings are resolved.

``make_plans(grid, seeds, opts)`` turns (grid, cell, seed, profile, command-line options) into immutable
``CellPlan``s, resolving each cell once. Precedence, later layers winning:

    TrainConfig defaults < profile < grid [defaults] < cell (and [overrides.<cell>]) < --set

(the grid file's layers are merged into ``Cell.overrides`` when it is parsed, ``grid.py``), then every epoch count
is multiplied by ``--epochs-scale`` and the profile's scale. Technique hyperparameters: the technique's defaults <
profile < grid and cell tables. A bad value fails here, naming the grid file and cell (or ``--set``), before any
data is loaded or run created.

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

from sota_ablate import schema
from sota_ablate.config import ConfigError, TrainConfig, apply_overrides, config_hash, flatten, scale_epoch_count
from sota_ablate.data import DataConfig
from sota_ablate.grid import Cell, Grid, GridError
from sota_ablate.profiles import Profile
from sota_ablate.registry import UnknownNameError
from sota_ablate.techniques import Technique, create_techniques, label

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
    force: bool = False
    progress_bar: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # command-line recipe overrides (--set)
    out: IO[str] | None = None  # None: sys.stdout
    # Epoch checkpoints (``train/checkpoint.py``). run_grid fills in the default (``checkpoints/`` next to a
    # sqlite store, else in the working directory); None when calling run_cell directly: no checkpoints.
    checkpoint_dir: str | None = None
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
    def params(self) -> dict[str, Any]:
        """What the cell run logs as MLflow params before training (the loop adds stages, dtype, model size)."""
        return {
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
    except (ConfigError, UnknownNameError, GridError) as err:
        raise GridError(f"{grid.source}: cell {cell.name!r}: {err}") from None
    cfg = apply_overrides(cfg, dict(overrides), where="the command line")
    cfg.validate(where="--set" if overrides else "")
    cfg = dataclasses.replace(cfg, epochs=scale_epoch_count(cfg.epochs, scale))
    return cfg, [t.scale_epochs(scale) for t in techniques]


def make_plans(grid: Grid, seeds: Sequence[int], opts: RunOptions, git_commit: str = "unknown") -> list[CellPlan]:
    """One plan per cell x seed, seed-major then in the grid's order; each cell is resolved once.

    Raises:
        GridError: a bad value in the grid file (names the file and cell).
        ConfigError: a bad ``--set`` value.
    """
    scale = opts.epochs_scale * opts.profile.epochs_scale
    resolved = {c.name: resolve_cell(c, grid, opts.profile, opts.overrides, scale) for c in grid.cells}
    total = len(grid.cells) * len(seeds)
    plans = []
    for seed in seeds:
        for cell in grid.cells:
            cfg, techniques = resolved[cell.name]
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
                )
            )
    return plans


def grid_identity(grid: Grid, opts: RunOptions, seeds: Sequence[int], data_info: Mapping[str, Any]) -> str:
    """The hash a rerun of the same grid run finds its parent run by."""
    payload = {
        "grid": grid.name,
        "cells": [(c.name, sorted(c.techniques), c.overrides) for c in grid.cells],
        "seeds": list(seeds),
        "profile": opts.profile.name,
        "epochs_scale": opts.epochs_scale,
        "overrides": opts.overrides,
        "data": data_identity(data_info),
    }
    return config_hash(payload)
