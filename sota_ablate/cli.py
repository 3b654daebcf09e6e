"""Command line: ``python -m sota_ablate {run-grid,run,lr-find,list-grids,list-techniques,profiles,report,ui}``.

Options shared by several commands (``--tracking-uri``, ``--experiment``, ``--debug``) are defined once, in parent
parsers. The package's modules are imported by the command that needs them, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from sota_ablate import validate

DEFAULT_GRID = "chapter"  # a built-in grid (sota_ablate/grids/chapter.toml)
DEFAULT_EXPERIMENT = "sota_ablate"


class CliError(Exception):
    """A usage error printed as one paragraph (no traceback unless --debug)."""


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: a bad option value is one ``error:`` paragraph (``main`` returns 2),
    not a usage dump. Subcommand parsers are of this class too (``add_subparsers`` uses the parent's)."""

    def error(self, message: str) -> NoReturn:
        # argparse writes "argument --seeds: --seeds '0,0' repeats ..." for a validator's message: name it once.
        message = re.sub(r"^argument (\S+): \1 ", r"\1 ", message)
        message = re.sub(r"^argument (\S+): ", r"\1: ", message)
        raise CliError(f"{message} ({self.prog} --help lists the options)")


def _tracking_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--tracking-uri",
        default=None,
        type=validate.tracking_uri("--tracking-uri"),
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    return p


def _experiment_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        type=validate.text("--experiment", "my-ablation"),
        help="MLflow experiment name",
    )
    return p


def _debug_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def _add_data_options(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        type=validate.path("--data", "~/data/imagenette2"),
        help="a folder with train/<class>/* and val/<class>/* (default: download Imagenette)",
    )
    d.add_argument(
        "--variant",
        choices=["full", "320px", "160px"],
        default=None,
        help="Imagenette archive to download (default: the profile's)",
    )
    d.add_argument(
        "--data-root",
        default=None,
        type=validate.path("--data-root", "~/datasets"),
        help="where Imagenette is downloaded (default ~/.cache/sota_ablate)",
    )
    d.add_argument(
        "--split",
        choices=["official", "chapter"],
        default="official",
        help="official train/val folders (default) or the chapter's seeded random 20%% of both",
    )
    d.add_argument(
        "--cache-dir",
        default=None,
        type=validate.path("--cache-dir", "/scratch/cache"),
        help="decoded-image cache (default ~/.cache/sota_ablate/cache)",
    )


def _add_recipe_options(g: Any) -> None:
    """--grid, --profile and --set (run-grid, run and lr-find)."""
    g.add_argument(
        "--grid",
        default=DEFAULT_GRID,
        type=validate.path("--grid", "chapter"),
        help=f"a built-in grid's name (list-grids shows them) or a grid TOML file (default: {DEFAULT_GRID})",
    )
    g.add_argument(
        "--profile",
        choices=["chapter", "quick", "smoke"],
        default=None,
        help="scale: chapter (GPU, the book's settings), quick (2-core CPU, <15 min), smoke (tests); "
        "default: chapter with CUDA, quick otherwise",
    )
    g.add_argument(
        "--set",
        action=validate.UniqueSettings,
        type=validate.setting("--set"),
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe setting for every cell, e.g. --set lr=1e-3, or --set lr=find for the lr finder's "
        "suggestion (repeatable)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to run")
    _add_recipe_options(g)
    g.add_argument(
        "--seeds",
        default=None,
        type=validate.seed_list("--seeds"),
        help="comma-separated seeds, e.g. 0,1,2 (default: the grid's)",
    )
    g.add_argument(
        "--epochs-scale",
        type=validate.number("--epochs-scale", 0, 100, lo_open=True, example="0.5"),
        default=1.0,
        help="multiply every epoch count (rounded, at least 1); e.g. 0.5 for a faster look",
    )
    _add_data_options(p)
    t = p.add_argument_group("tracking and hardware")
    t.add_argument(
        "--device",
        default="auto",
        type=validate.device("--device"),
        help="auto (cuda if available), cpu, cuda, cuda:1, ...",
    )
    t.add_argument(
        "--log-model",
        action="store_true",
        help="also log each cell's model as an MLflow model (signature, input example) and its weights",
    )
    t.add_argument(
        "--register-model",
        metavar="NAME",
        default=None,
        type=validate.model_name("--register-model", "xresnet-imagenette"),
        help="log each cell's model (implies --log-model) and register it as a new version of model NAME",
    )
    t.add_argument(
        "--data-on",
        choices=["auto", "device", "host"],
        default="auto",
        help="where the decoded images live: device (the GPU), host (pinned host memory, batches copied ahead), "
        "or auto: device when cache + validation + training step fit its memory with headroom (default)",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's train and eval steps (pays on a GPU for long cells; inductor caches the "
        "compiled graphs across cells and runs)",
    )
    t.add_argument(
        "--gpu-memory-gib",
        type=validate.number("--gpu-memory-gib", 0, 100_000, lo_open=True, example="16"),
        default=None,
        metavar="GIB",
        help="use at most this much CUDA memory (torch.cuda.set_per_process_memory_fraction), e.g. 16 to act "
        "as a 16 GB card; the data placement plans within it",
    )
    r = t.add_mutually_exclusive_group()
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue this grid's last run (the default, also without the flag): skip finished cells, continue "
        "an interrupted cell from its last finished epoch in the same MLflow run",
    )
    r.add_argument(
        "--force",
        action="store_true",
        help="start a new grid run even if this grid already has a (partly) finished one",
    )
    t.add_argument(
        "--checkpoint-dir",
        default=None,
        type=validate.path("--checkpoint-dir", "/scratch/checkpoints"),
        metavar="DIR",
        help="epoch checkpoints of unfinished cells (default: checkpoints/ next to a sqlite store, else ./checkpoints)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar (epoch tables still print)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m sota_ablate",
        description="Ablation suite for fastbook chapter 7: every technique measured, tracked in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tracking, experiment, debug = _tracking_parent(), _experiment_parent(), _debug_parent()
    store = [tracking, experiment, debug]
    p = sub.add_parser(
        "run-grid",
        parents=store,
        help="train every cell of a grid (one MLflow parent run, a child per cell)",
        description="Train every cell x seed of a grid; finished cells are kept and skipped "
        "when the same command is rerun.",
    )
    _add_run_options(p)
    p.add_argument(
        "--cells",
        default=None,
        type=validate.name_list("--cells", "baseline,mixup"),
        help="only these cells, comma-separated (e.g. baseline,mixup)",
    )
    _add_precision_options(p)
    _add_executor_options(p)
    p = sub.add_parser("run", parents=store, help="train one cell of a grid", description="Train one cell of a grid.")
    p.add_argument(
        "--cell",
        required=True,
        type=validate.name("--cell", "baseline"),
        help="the cell's name in the grid file, e.g. baseline",
    )
    _add_run_options(p)
    _add_lr_find_parser(sub, store)
    sub.add_parser(
        "list-grids",
        help="the built-in grids: names, descriptions, cells",
        description="List the grids that ship with sota_ablate (usable as --grid NAME from any folder).",
    )
    sub.add_parser(
        "list-techniques",
        help="the technique registry: names, hyperparameters, sources",
        description="List every registered technique with its hyperparameters and source.",
    )
    sub.add_parser("profiles", help="the profiles and their settings", description="List the profiles.")
    _add_report_parser(sub, store)
    p = sub.add_parser(
        "ui",
        parents=[tracking, debug],
        help="the MLflow UI for the runs, on 127.0.0.1",
        description="Start the MLflow UI (mlflow server) on 127.0.0.1 for the store run-grid uses, print its URL, "
        "and stop it on Ctrl-C. For an http(s):// store (a tracking server) print its address instead.",
    )
    p.add_argument(
        "--port",
        type=validate.number("--port", 0, 65535, integer=True, example="5000"),
        default=5000,
        help="port on 127.0.0.1 (default 5000; 0: any free port)",
    )
    return parser


def _add_precision_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("seeds for a precision (Stein's two-stage procedure)")
    g.add_argument(
        "--precision",
        type=validate.number("--precision", 0, 100, lo_open=True, example="1"),
        default=None,
        metavar="POINTS",
        help="after the grid's seeds (the pilot, at least 3), run extra seeds for the cells of every comparison "
        "whose 95%% interval would be wider than +-POINTS accuracy points (a technique over its pairs of cells; "
        "in a sweep, each arm against the reference at every value)",
    )
    g.add_argument(
        "--max-seeds",
        type=validate.number("--max-seeds", 3, 1000, integer=True, example="10"),
        default=None,
        metavar="N",
        help="with --precision: at most N seeds per cell, pilot included (default 10)",
    )


def _precision_target(args: argparse.Namespace, n_seeds: int) -> Any:
    """The ``precision.Target`` of ``--precision``/``--max-seeds`` (None without them), checked."""
    from sota_ablate.precision import DEFAULT_MAX_SEEDS, Target, check_target

    if getattr(args, "precision", None) is None:
        if getattr(args, "max_seeds", None) is not None:
            raise CliError("--max-seeds needs --precision POINTS (e.g. --precision 1 --max-seeds 10)")
        return None
    target = Target(args.precision, DEFAULT_MAX_SEEDS if args.max_seeds is None else args.max_seeds)
    check_target(target, n_seeds)
    return target


def _add_lr_find_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lr-find",
        parents=parents,
        help="fastai's learning-rate finder on a cell: the curve and suggested lrs, logged to MLflow",
        description="Run fastai's lr_find (an exponential lr sweep, the loss smoothed, stopped when it exceeds 4x "
        "its minimum) on a cell's exact model, data, techniques and augmentation; print the suggestions (valley, "
        "fastai's default, also minimum/10 and steep) and log them with the curve in an MLflow run "
        "(tag sota_ablate.kind = lr_find). The cell's training is not touched.",
    )
    g = p.add_argument_group("what to sweep")
    _add_recipe_options(g)
    g.add_argument(
        "--cell",
        default=None,
        type=validate.name("--cell", "baseline"),
        help="the cell's name in the grid (default: the grid's first cell)",
    )
    g.add_argument("--seed", type=validate.number("--seed", 0, integer=True, example="0"), default=None, help="the seed: init, data order, augmentation (default: the "
                   "grid's first)")  # fmt: skip
    f = p.add_argument_group("the sweep (fastai's defaults)")
    f.add_argument(
        "--start-lr",
        type=validate.number("--start-lr", 0, 100, lo_open=True, example="1e-7"),
        default=1e-7,
        help="first lr (default 1e-7)",
    )
    f.add_argument(
        "--end-lr",
        type=validate.number("--end-lr", 0, 1e6, lo_open=True, example="10"),
        default=10.0,
        help="last lr (default 10)",
    )
    f.add_argument(
        "--num-it",
        type=validate.number("--num-it", 6, 100_000, integer=True, example="100"),
        default=100,
        help="iterations, at least 6 (default 100)",
    )
    _add_data_options(p)
    p.add_argument(
        "--device",
        default="auto",
        type=validate.device("--device"),
        help="auto (cuda if available), cpu, cuda, cuda:1, ...",
    )


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where cells run")
    g.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: one cell after another in this process (default); ray: every cell x seed a Ray task "
        "(pip install -e '.[ray]'), all logging to the same tracking store",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        type=validate.address("--ray-address", "ray://head:10001"),
        metavar="ADDRESS",
        help="with --executor ray: auto (the cluster this node joined with `ray start`) or ray://host:port; "
        "default: $RAY_ADDRESS, else the cluster `ray start` runs here, else a new local Ray instance",
    )
    g.add_argument(
        "--cpus-per-cell",
        type=validate.number("--cpus-per-cell", 0, lo_open=True, example="2"),
        default=None,
        help="CPUs Ray reserves per cell (default 1)",
    )
    g.add_argument(
        "--gpus-per-cell",
        type=validate.number("--gpus-per-cell", 0, example="0.5"),
        default=None,
        help="GPUs Ray reserves per cell (default: 1 if the cluster has GPUs, else 0)",
    )
    g.add_argument(
        "--max-retries",
        type=validate.number("--max-retries", 0, 100, integer=True, example="2"),
        default=2,
        help="reruns of a cell whose Ray worker process died (default 2)",
    )
    g.add_argument(
        "--cells-per-gpu",
        type=validate.number("--cells-per-gpu", 1, 64, integer=True, example="2"),
        default=1,
        metavar="N",
        help="with --executor local on CUDA: train N cells at once on the GPU, each in its own process with 1/N "
        "of its memory (default 1: one after another in this process)",
    )


def _add_report_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        parents=parents,
        help="write the markdown report of a grid from its MLflow runs",
        description="Write reports/<grid>/README.md and its figures from a grid's MLflow runs and log them to that "
        "grid run under report/: with --run-id for that grid run, else for the newest run of every grid in the store, "
        "followed by reports/README.md, the verdict across them.",
    )
    p.add_argument(
        "--run-id",
        default=None,
        type=validate.run_id("--run-id"),
        help="the grid (parent) run to report on (default: the newest run of every grid in the store, and "
        "<out>/README.md, the verdict across them)",
    )
    p.add_argument(
        "--band",
        type=validate.number("--band", 0, 100, lo_open=True, example="1"),
        default=1.0,
        metavar="POINTS",
        help="practical-equivalence band in accuracy points: an effect whose interval lies inside +-POINTS is "
        "'no effect larger than POINTS' (default 1)",
    )
    p.add_argument(
        "--all-seeds",
        action="store_true",
        help="aggregate every grid run of the same grid, profile and epoch scale (seeds from several run-grid calls)",
    )
    p.add_argument(
        "--out",
        default="reports",
        type=validate.path("--out", "reports"),
        help="reports folder; the report goes to <out>/<grid>/",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        type=validate.path("--data", "~/data/imagenette2"),
        help="dataset folder (train/<class>/*) for the normalization and mixup figures "
        "(default: the grid run's recorded folder, if it exists here)",
    )
    p.add_argument("--no-log", action="store_true", help="do not log the report to the grid run")


def list_techniques(out: Any = None) -> None:
    from sota_ablate.techniques import get_technique, technique_names

    out = out or sys.stdout
    for name in technique_names():
        cls = get_technique(name)
        defaults = ", ".join(f"{k}={_fmt(v)}" for k, v in cls.defaults().items()) or "(none)"
        print(
            f"{name}\n    {cls.summary}\n    hyperparameters: {defaults}\n    source: {cls.source}\n",
            file=out,
        )


def list_grids(out: Any = None) -> None:
    from sota_ablate.grid import builtin_grids, load_grid

    out = out or sys.stdout
    for name, path in builtin_grids().items():
        grid = load_grid(path)
        cells = ", ".join(c.name for c in grid.cells)
        seeds = ", ".join(str(s) for s in grid.seeds)
        print(f"{name}\n    {grid.description}\n    cells: {cells}\n    seeds: {seeds}\n    file: {path}\n", file=out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def list_profiles(out: Any = None) -> None:
    from sota_ablate.profiles import PROFILES

    out = out or sys.stdout
    for p in PROFILES.values():
        print(
            f"{p.name}: {p.description}\n    train: {p.train}\n    techniques: {p.techniques}\n"
            f"    data: {p.data}\n    epochs_scale: {p.epochs_scale}\n",
            file=out,
        )


def _device(text: str) -> Any:
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise CliError(f"--device {text!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available here; use --device cpu")
    return dev


def _profile(args: argparse.Namespace, device: Any) -> Any:
    """The --profile (printed), or the default for the device."""
    from sota_ablate.profiles import default_profile, get_profile

    if args.profile is None:
        name, why = default_profile(device.type == "cuda")
        print(f"profile: {name} ({why}; choose with --profile)")
    else:
        name = args.profile
        print(f"profile: {name}")
    return get_profile(name)


def _data_config(args: argparse.Namespace, profile: Any) -> Any:
    """The DataConfig of the data options over the profile's, validated."""
    from sota_ablate.data import DataConfig

    data_kw: dict[str, Any] = dict(profile.data)
    if args.data:
        data_kw.update(source="folder", path=args.data)
    else:
        data_kw.update(source="imagenette")
        if args.data_root:
            data_kw["path"] = args.data_root
    if args.variant:
        data_kw["variant"] = args.variant
    data_kw["split"] = args.split
    if args.cache_dir:
        data_kw["cache_dir"] = args.cache_dir
    data_cfg = DataConfig(**data_kw)
    data_cfg.validate()
    return data_cfg


def _lr_find(args: argparse.Namespace) -> int:
    from sota_ablate.grid import load_grid
    from sota_ablate.lr_find import FinderSettings, lr_find_command
    from sota_ablate.plan import RunOptions
    from sota_ablate.tracking import Tracker, resolve_tracking_uri

    settings = FinderSettings(start_lr=args.start_lr, end_lr=args.end_lr, num_it=args.num_it)
    try:
        settings.validate()
    except ValueError as err:
        raise CliError(f"{err}: e.g. --start-lr 1e-7 --end-lr 10 --num-it 100") from None
    device = _device(args.device)
    profile = _profile(args, device)
    grid = load_grid(args.grid)
    cell = args.cell or grid.cells[0].name
    seed = grid.seeds[0] if args.seed is None else args.seed
    opts = RunOptions(profile=profile, data=_data_config(args, profile), device=device, overrides=dict(args.set))
    tracker = Tracker(resolve_tracking_uri(args.tracking_uri), args.experiment)
    lr_find_command(grid, cell, seed, opts, tracker, settings)
    return 0


def _run(args: argparse.Namespace) -> int:
    from sota_ablate.grid import load_grid
    from sota_ablate.grid_run import run_grid
    from sota_ablate.plan import RunOptions
    from sota_ablate.tracking import Tracker, resolve_tracking_uri

    executor = _executor(args)
    local = executor is None or executor.name == "local"
    device = _device(args.device) if local else executor.device(args.device)
    profile = _profile(args, device)
    grid = load_grid(args.grid)
    cells = [args.cell] if args.command == "run" else args.cells  # validate.name / validate.name_list
    if cells is not None:
        grid = grid.select(cells)
    data_cfg = _data_config(args, profile)
    target = _precision_target(args, len(args.seeds or grid.seeds))
    register = args.register_model
    cells_per_gpu = _cells_per_gpu(args, device)
    gpu_memory = _gpu_memory(args.gpu_memory_gib, device)
    opts = RunOptions(
        profile=profile,
        data=data_cfg,
        device=device,
        epochs_scale=args.epochs_scale,
        log_model=args.log_model or register is not None,
        register_model=register,
        force=args.force,
        checkpoint_dir=args.checkpoint_dir,
        progress_bar=profile.progress_bar and not args.no_progress and sys.stderr.isatty(),
        overrides=dict(args.set),  # validate.setting, validate.UniqueSettings
        precision=target,
        data_on=args.data_on,
        compile=args.compile,
        cells_per_gpu=cells_per_gpu,
        gpu_memory_bytes=gpu_memory,
    )
    tracker = Tracker(resolve_tracking_uri(args.tracking_uri), args.experiment)
    try:
        outcome = run_grid(grid, opts, tracker, seeds=args.seeds, executor=executor)
    finally:
        if executor is not None:
            executor.close()
    if outcome.failed:
        names = ", ".join(f"{o.cell} (seed {o.seed}): {o.error}" for o in outcome.failed)
        print(f"{len(outcome.failed)} cell run(s) failed: {names}", file=sys.stderr)
        return 1
    return 0


def _cells_per_gpu(args: argparse.Namespace, device: Any) -> int:
    """``--cells-per-gpu``, checked: N > 1 only with the local executor on CUDA."""
    n = getattr(args, "cells_per_gpu", 1)
    if n < 1:
        raise CliError(f"--cells-per-gpu {n}: use 1 or more")
    if n > 1 and getattr(args, "executor", "local") != "local":
        raise CliError(
            f"--cells-per-gpu {n} is for --executor local; with Ray give each cell a fraction of a GPU instead "
            f"(--gpus-per-cell {1 / n:g})"
        )
    if n > 1 and device.type != "cuda":
        raise CliError(
            f"--cells-per-gpu {n}: the cells train on {device.type}, not a GPU; on a CPU one cell already uses "
            "every core, so several at once would not be faster. Drop the option or use a CUDA device."
        )
    return n


def _gpu_memory(gib: float | None, device: Any) -> int | None:
    """``--gpu-memory-gib`` in bytes, applied to this process now (workers apply their share themselves)."""
    if gib is None:
        return None
    if device.type != "cuda":
        raise CliError(f"--gpu-memory-gib: the cells train on {device.type}; it caps CUDA memory only")
    from sota_ablate.data.placement import limit_gpu_memory

    try:
        limit_gpu_memory(device, int(gib * 2**30))
    except ValueError as err:
        raise CliError(f"--gpu-memory-gib {gib}: {err}") from None
    return int(gib * 2**30)


def _executor(args: argparse.Namespace) -> Any:
    """The RayExecutor for ``--executor ray``, None for local (a LocalExecutor for --cells-per-gpu > 1)."""
    if getattr(args, "executor", "local") != "ray":
        if getattr(args, "cells_per_gpu", 1) > 1:
            from sota_ablate.executors.local import LocalExecutor

            return LocalExecutor(cells_per_gpu=args.cells_per_gpu)
        return None
    from sota_ablate.executors.ray import RayExecutor, RaySettings

    return RayExecutor(
        RaySettings(
            address=args.ray_address,
            cpus_per_cell=args.cpus_per_cell,
            gpus_per_cell=args.gpus_per_cell,
            max_retries=args.max_retries,
        )
    )


def _ui(args: argparse.Namespace) -> int:
    from sota_ablate.server import serve_ui
    from sota_ablate.tracking import resolve_tracking_uri

    return serve_ui(resolve_tracking_uri(args.tracking_uri), port=args.port)


def _report(args: argparse.Namespace) -> int:
    from sota_ablate.report.collect import latest_grid_runs
    from sota_ablate.report.generate import generate_report, generate_synthesis
    from sota_ablate.tracking import Tracker, mask_uri, resolve_tracking_uri

    tracker = Tracker(resolve_tracking_uri(args.tracking_uri), args.experiment)
    print(f"MLflow store: {mask_uri(tracker.uri)}  experiment: {tracker.experiment_name}")
    tracker.check(create=False)  # a store that is not one, a deleted experiment: error:, never a traceback
    missing = tracker.missing_artifact_folder()
    if missing is not None:
        print(
            f"warning: the artifact folder {missing} of experiment {tracker.experiment_name!r} no longer exists: "
            "the report is made from the runs' params and metrics alone (no grid file, confusion matrix or "
            "predictions).",
            file=sys.stderr,
        )
    band = args.band / 100
    options = dict(all_seeds=args.all_seeds, out_dir=args.out, data_path=args.data, log_to_mlflow=not args.no_log)
    if args.run_id:
        print(f"report: {generate_report(tracker, run_id=args.run_id, band=band, **options)}")
        return 0
    grids = latest_grid_runs(tracker)
    for _, run_id in grids:  # every grid of the store, then the synthesis across them
        print(f"report: {generate_report(tracker, run_id=run_id, band=band, **options)}")
    if not grids:  # the error that names the store and what to do
        generate_report(tracker, band=band, **options)
    print(f"synthesis: {generate_synthesis(tracker, out_dir=args.out, band=band, all_seeds=args.all_seeds)}")
    return 0


def resume_command(argv: Sequence[str]) -> str:
    """The command that continues an interrupted ``run-grid``/``run``: the same arguments without ``--force``
    (which would start yet another grid run), passwords in URIs masked."""
    from sota_ablate.tracking import mask_uri

    args = [mask_uri(a) for a in argv if a != "--force"]
    return shlex.join(["python", "-m", "sota_ablate", *args])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CliError as err:  # a bad option value (Parser.error): before anything is imported or created
        print(f"error: {err}", file=sys.stderr)
        return 2
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        # It logs every failed sqlite write with its whole traceback at ERROR; the error it raises is reported.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from sota_ablate.tracking import HTTP_RETRY_DEFAULTS

    for key, value in HTTP_RETRY_DEFAULTS.items():  # one bounded retry budget for a tracking server
        os.environ.setdefault(key, value)
    if not debug:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no INFO lines between the epoch rows
    if args.command == "list-techniques":
        list_techniques()
        return 0
    if args.command == "profiles":
        list_profiles()
        return 0
    if args.command == "list-grids":
        list_grids()
        return 0
    from sota_ablate import interrupts
    from sota_ablate.config import ConfigError
    from sota_ablate.data import DataError
    from sota_ablate.executors.base import ExecutorError
    from sota_ablate.grid import GridError
    from sota_ablate.registry import UnknownNameError
    from sota_ablate.report.collect import ReportError
    from sota_ablate.tracking import DiskFullError, TrackingError, mask_uri
    from sota_ablate.train.checkpoint import CheckpointError
    from sota_ablate.train.lr_find import LRFinderError

    # Ctrl-C and SIGTERM end a grid as KILLED (resumable), never in the middle of a tracking-store write.
    restore_signals = interrupts.install()
    try:
        if args.command == "ui":
            return _ui(args)
        if args.command == "lr-find":
            return _lr_find(args)
        return _report(args) if args.command == "report" else _run(args)
    except (
        CliError,
        ConfigError,
        GridError,
        DataError,
        ExecutorError,
        ReportError,
        TrackingError,
        UnknownNameError,
        CheckpointError,
        LRFinderError,
    ) as err:
        if debug:
            raise
        print(f"error: {mask_uri(str(err))}", file=sys.stderr)
        stopped = isinstance(err, DiskFullError) or (isinstance(err, TrackingError) and "stopped answering" in str(err))
        if stopped and args.command in ("run-grid", "run"):
            print("to continue, run:\n  " + resume_command(sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("run-grid", "run"):
            print(
                "interrupted; to continue from the last finished epoch, run:\n  "
                + resume_command(sys.argv[1:] if argv is None else argv),
                file=sys.stderr,
            )
        else:
            print("interrupted", file=sys.stderr)
        return 130
    finally:
        restore_signals()


if __name__ == "__main__":
    sys.exit(main())
