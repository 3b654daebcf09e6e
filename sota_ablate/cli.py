"""Command line: ``python -m sota_ablate {run-grid,run,lr-find,list-grids,list-techniques,profiles,report,ui}``.

Options shared by several commands (``--tracking-uri``, ``--experiment``, ``--debug``) are defined once, in parent
parsers. The package's modules are imported by the command that needs them, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

DEFAULT_GRID = "chapter"  # a built-in grid (sota_ablate/grids/chapter.toml)
DEFAULT_EXPERIMENT = "sota_ablate"


class CliError(Exception):
    """A usage error printed as one paragraph (no traceback unless --debug)."""


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set {item!r}: use KEY=VALUE, e.g. --set lr=1e-3 or --set augment.max_rotate=0")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise CliError(f"--seeds {text!r}: use comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds:
        raise CliError("--seeds is empty: use e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise CliError(f"--seeds {text!r}: use distinct integers >= 0, e.g. --seeds 0,1,2")
    return seeds


def _tracking_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    return p


def _experiment_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
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
        help="a folder with train/<class>/* and val/<class>/* (default: download Imagenette)",
    )
    d.add_argument(
        "--variant",
        choices=["full", "320px", "160px"],
        default=None,
        help="Imagenette archive to download (default: the profile's)",
    )
    d.add_argument("--data-root", default=None, help="where Imagenette is downloaded (default ~/.cache/sota_ablate)")
    d.add_argument(
        "--split",
        choices=["official", "chapter"],
        default="official",
        help="official train/val folders (default) or the chapter's seeded random 20%% of both",
    )
    d.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/sota_ablate/cache)")


def _add_recipe_options(g: Any) -> None:
    """--grid, --profile and --set (run-grid, run and lr-find)."""
    g.add_argument(
        "--grid",
        default=DEFAULT_GRID,
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
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe setting for every cell, e.g. --set lr=1e-3, or --set lr=find for the lr finder's "
        "suggestion (repeatable)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to run")
    _add_recipe_options(g)
    g.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (default: the grid's)")
    g.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply every epoch count (rounded, at least 1); e.g. 0.5 for a faster look",
    )
    _add_data_options(p)
    t = p.add_argument_group("tracking and hardware")
    t.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    t.add_argument("--log-model", action="store_true", help="also log each cell's model weights")
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
        metavar="DIR",
        help="epoch checkpoints of unfinished cells (default: checkpoints/ next to a sqlite store, else ./checkpoints)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar (epoch tables still print)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.add_argument("--cells", default=None, help="only these cells, comma-separated (e.g. baseline,mixup)")
    _add_executor_options(p)
    p = sub.add_parser("run", parents=store, help="train one cell of a grid", description="Train one cell of a grid.")
    p.add_argument("--cell", required=True, help="the cell's name in the grid file, e.g. baseline")
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
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000; 0: any free port)")
    return parser


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
    g.add_argument("--cell", default=None, help="the cell's name in the grid (default: the grid's first cell)")
    g.add_argument("--seed", type=int, default=None, help="the seed: init, data order, augmentation (default: the "
                   "grid's first)")  # fmt: skip
    f = p.add_argument_group("the sweep (fastai's defaults)")
    f.add_argument("--start-lr", type=float, default=1e-7, help="first lr (default 1e-7)")
    f.add_argument("--end-lr", type=float, default=10.0, help="last lr (default 10)")
    f.add_argument("--num-it", type=int, default=100, help="iterations, at least 6 (default 100)")
    _add_data_options(p)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")


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
        metavar="ADDRESS",
        help="with --executor ray: auto (the cluster this node joined with `ray start`) or ray://host:port; "
        "default: $RAY_ADDRESS, else the cluster `ray start` runs here, else a new local Ray instance",
    )
    g.add_argument("--cpus-per-cell", type=float, default=None, help="CPUs Ray reserves per cell (default 1)")
    g.add_argument(
        "--gpus-per-cell",
        type=float,
        default=None,
        help="GPUs Ray reserves per cell (default: 1 if the cluster has GPUs, else 0)",
    )
    g.add_argument(
        "--max-retries", type=int, default=2, help="reruns of a cell whose Ray worker process died (default 2)"
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
        help="the grid (parent) run to report on (default: the newest run of every grid in the store, and "
        "<out>/README.md, the verdict across them)",
    )
    p.add_argument(
        "--band",
        type=float,
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
    p.add_argument("--out", default="reports", help="reports folder; the report goes to <out>/<grid>/")
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
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
    if not all(math.isfinite(v) for v in (args.start_lr, args.end_lr)):
        raise CliError("--start-lr and --end-lr must be finite numbers, e.g. --start-lr 1e-7 --end-lr 10")
    try:
        settings.validate()
    except ValueError as err:
        raise CliError(f"{err}: e.g. --start-lr 1e-7 --end-lr 10 --num-it 100") from None
    device = _device(args.device)
    profile = _profile(args, device)
    grid = load_grid(args.grid)
    cell = args.cell or grid.cells[0].name
    seed = grid.seeds[0] if args.seed is None else args.seed
    if seed < 0:
        raise CliError(f"--seed {seed}: use an integer >= 0")
    opts = RunOptions(profile=profile, data=_data_config(args, profile), device=device, overrides=_parse_sets(args.set))
    tracker = Tracker(resolve_tracking_uri(args.tracking_uri), args.experiment)
    lr_find_command(grid, cell, seed, opts, tracker, settings)
    return 0


def _run(args: argparse.Namespace) -> int:
    from sota_ablate.grid import load_grid
    from sota_ablate.grid_run import run_grid
    from sota_ablate.plan import RunOptions
    from sota_ablate.tracking import Tracker, resolve_tracking_uri

    executor = _executor(args)
    device = _device(args.device) if executor is None else executor.device(args.device)
    profile = _profile(args, device)
    grid = load_grid(args.grid)
    cells = [args.cell] if args.command == "run" else (args.cells.split(",") if args.cells is not None else None)
    if cells is not None:
        names = [c.strip() for c in cells if c.strip()]
        if not names:
            raise CliError(f"--cells {args.cells!r} names no cell; use e.g. --cells baseline,mixup")
        grid = grid.select(names)
    data_cfg = _data_config(args, profile)
    if not (args.epochs_scale > 0 and math.isfinite(args.epochs_scale)):
        raise CliError(f"--epochs-scale {args.epochs_scale}: use a positive number")
    opts = RunOptions(
        profile=profile,
        data=data_cfg,
        device=device,
        epochs_scale=args.epochs_scale,
        log_model=args.log_model,
        force=args.force,
        checkpoint_dir=args.checkpoint_dir,
        progress_bar=profile.progress_bar and not args.no_progress and sys.stderr.isatty(),
        overrides=_parse_sets(args.set),
    )
    tracker = Tracker(resolve_tracking_uri(args.tracking_uri), args.experiment)
    try:
        outcome = run_grid(grid, opts, tracker, seeds=_parse_seeds(args.seeds), executor=executor)
    finally:
        if executor is not None:
            executor.close()
    if outcome.failed:
        names = ", ".join(f"{o.cell} (seed {o.seed}): {o.error}" for o in outcome.failed)
        print(f"{len(outcome.failed)} cell run(s) failed: {names}", file=sys.stderr)
        return 1
    return 0


def _executor(args: argparse.Namespace) -> Any:
    """The RayExecutor for ``--executor ray``, None for local."""
    if getattr(args, "executor", "local") != "ray":
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

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: use 1-65535, or 0 for any free port")
    return serve_ui(resolve_tracking_uri(args.tracking_uri), port=args.port)


def _report(args: argparse.Namespace) -> int:
    from sota_ablate.report.collect import latest_grid_runs
    from sota_ablate.report.generate import generate_report, generate_synthesis
    from sota_ablate.tracking import Tracker, mask_uri, resolve_tracking_uri

    if not (args.band > 0 and math.isfinite(args.band)):
        raise CliError(f"--band {args.band}: use a positive number of accuracy points, e.g. --band 1")
    tracker = Tracker(resolve_tracking_uri(args.tracking_uri), args.experiment)
    print(f"MLflow store: {mask_uri(tracker.uri)}  experiment: {tracker.experiment_name}")
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
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
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
    from sota_ablate.tracking import TrackingError, mask_uri
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
        if isinstance(err, TrackingError) and "stopped answering" in str(err) and args.command in ("run-grid", "run"):
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
