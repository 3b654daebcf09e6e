"""The learning-rate finder on a cell: the ``lr-find`` command's run, and ``lr = "find"`` in a cell run.

The sweep itself is ``train/lr_find.py`` (fastai's ``lr_find``, number for number). Here it runs on a cell's
plan (its model, data, techniques and augmentation, seeded by the plan's seed) and is recorded: the suggestions
as metrics ``lr_find.<name>``, the settings as params, the curve as ``lr_find.png`` and its points as
``lr_find.csv`` / ``lr_find.json``, either in a run of its own (tag ``sota_ablate.kind = lr_find``) or in the
cell run whose lr it chooses (tag ``sota_ablate.lr_source = find``, ``train.lr`` = the valley).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import IO, Any

import torch

from sota_ablate import run_figures, schema
from sota_ablate.config import LR_FIND
from sota_ablate.data import ImageData, load_data
from sota_ablate.grid import Grid
from sota_ablate.plan import CellPlan, RunOptions, make_plans
from sota_ablate.tracking import Run, Tracker, git_commit, mask_uri
from sota_ablate.train.lr_find import END_LR, NUM_IT, SKIP_END, START_LR, SUGGESTIONS, LRCurve, Suggestion, find_lr
from sota_ablate.train.state import TrainState, build_state


@dataclasses.dataclass(frozen=True)
class FinderSettings:
    """The sweep's settings (fastai's defaults); ``lr = "find"`` always uses the defaults."""

    start_lr: float = START_LR
    end_lr: float = END_LR
    num_it: int = NUM_IT

    def validate(self) -> None:
        """Raise ValueError for a sweep that cannot run."""
        if not 0 < self.start_lr < self.end_lr:
            raise ValueError(f"lr finder: use 0 < start lr < end lr (got {self.start_lr:g} and {self.end_lr:g})")
        if self.num_it < 6:
            raise ValueError(f"lr finder: use at least 6 iterations (got {self.num_it}), as fastai does")


def sweep_cell(s: TrainState, plan: CellPlan, settings: FinderSettings = FinderSettings()) -> LRCurve:
    """The finder on the cell's state (model, data, techniques), left as it was."""
    return find_lr(s, plan.techniques, settings.start_lr, settings.end_lr, settings.num_it)


def log_curve(run: Run, curve: LRCurve, suggestions: dict[str, Suggestion], title: str) -> None:
    """The sweep in ``run``: settings (params), suggestions (metrics, step 0), curve (PNG) and points (CSV, JSON)."""
    settings = {"start_lr": curve.start_lr, "end_lr": curve.end_lr, "num_it": curve.num_it,
                "iterations": len(curve.lrs), "stop": curve.stop}  # fmt: skip
    run.log_params({schema.lr_find_key(k): v for k, v in settings.items()})
    run.log_metrics({schema.lr_find_key(name): sg.lr for name, sg in suggestions.items()}, step=0)
    # minimum is marked at the lowest loss and suggests a tenth of its lr, as in fastai's plot
    marks = {("minimum / 10" if name == "minimum" else name): (sg.lr, sg.point) for name, sg in suggestions.items()}
    fig = run_figures.lr_find_figure(curve.lrs, curve.losses, marks, title, skip_end=SKIP_END)
    run.log_figure(fig, schema.LR_FIND_PNG)
    run_figures.close(fig)
    rows = [
        "iteration,lr,loss",
        *(f"{i},{lr!r},{loss!r}" for i, (lr, loss) in enumerate(zip(curve.lrs, curve.losses, strict=True))),
    ]
    run.log_text("\n".join(rows) + "\n", schema.LR_FIND_CSV)
    run.log_dict(
        {
            **settings,
            "suggestions": {name: {"lr": sg.lr, "point": list(sg.point)} for name, sg in suggestions.items()},
            "used": SUGGESTIONS[0],
        },
        schema.LR_FIND_JSON,
    )


def describe(curve: LRCurve, suggestions: dict[str, Suggestion]) -> str:
    """The suggestions as printed, the first (valley) marked as the one ``lr = "find"`` uses."""
    stops = {"num_it": "all iterations", "diverged": "stopped: the loss exceeded 4x its minimum",
             "nan": "stopped: the loss became NaN"}  # fmt: skip
    lines = [f"lr finder: {len(curve.lrs)} of {curve.num_it} iterations from {curve.start_lr:g} to "
             f"{curve.end_lr:g} ({stops[curve.stop]})"]  # fmt: skip
    notes = {"valley": f'(fastai\'s default; what lr = "{LR_FIND}" uses)', "minimum": "(the lr of the lowest loss / 10)",
             "steep": "(the steepest descent)"}  # fmt: skip
    lines += [f"  {name:<8} {sg.lr:.3e}  {notes.get(name, '')}".rstrip() for name, sg in suggestions.items()]
    return "\n".join(lines)


def resolve_lr(plan: CellPlan, s: TrainState, run: Run, ckpt: dict[str, Any] | None, out: IO[str]) -> None:
    """For a cell with ``lr = "find"``: set ``s.cfg.lr`` to the finder's valley, found now and logged in ``run``
    (curve, suggestions, tag ``sota_ablate.lr_source``), or, when resuming, the lr the checkpoint recorded (the
    sweep is not redone). Logs ``train.lr``. A cell with a number as lr is left alone."""
    if plan.train.lr != LR_FIND:
        return
    lr = (ckpt or {}).get("meta", {}).get("lr")
    if lr is None:
        curve = sweep_cell(s, plan)
        suggestions = curve.suggestions()
        log_curve(run, curve, suggestions, f"lr finder: {plan.run_name}")
        print(describe(curve, suggestions), file=out, flush=True)
        lr = suggestions[SUGGESTIONS[0]].lr
    s.cfg = dataclasses.replace(s.cfg, lr=float(lr))
    run.log_params({schema.train_param("lr"): s.cfg.lr})
    run.set_tags({schema.LR_SOURCE: schema.LR_SOURCE_FIND})
    print(f"{plan.run_name}: lr = {s.cfg.lr:.3e} (the lr finder's {SUGGESTIONS[0]})", file=out, flush=True)


def lr_find_command(
    grid: Grid,
    cell: str,
    seed: int,
    opts: RunOptions,
    tracker: Tracker,
    settings: FinderSettings = FinderSettings(),
) -> tuple[str, dict[str, Suggestion]]:
    """``lr-find``: the sweep on ``cell`` of ``grid`` with ``seed``, in an MLflow run of its own; returns the run
    id and the suggestions. Bad settings fail before the store or the data is touched."""
    out = opts.out or sys.stdout
    settings.validate()
    (plan,) = make_plans(grid.select([cell]), [seed], opts, git_commit())
    tracker.check()
    print(f"MLflow store: {mask_uri(tracker.uri)}  experiment: {tracker.experiment_name}", file=out)
    data = load_data(opts.data, opts.device)
    plan = plan.bind(data.info)
    run = tracker.start_run(f"lr_find-{plan.cell}-seed{seed}", tags=_tags(plan))
    try:
        params = {k: v for k, v in plan.params.items() if k != schema.train_param("lr")}  # the sweep sets every lr
        run.log_params(params)
        suggestions, curve = _sweep(plan, data, opts.device, settings)
        log_curve(run, curve, suggestions, f"lr finder: {grid.name} / {plan.cell}, seed {seed}")
        run.set_tags({schema.COMPLETE: "true"})
        run.end("FINISHED")
    except BaseException as err:
        run.set_tags({schema.FAILURE: mask_uri(f"{type(err).__name__}: {err}")[:5000],
                      schema.FAILURE_TYPE: type(err).__name__})  # fmt: skip
        run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    print(describe(curve, suggestions), file=out)
    print(f"run {run.run_id}: {schema.LR_FIND_PNG}, {schema.LR_FIND_CSV}, {schema.LR_FIND_JSON}", file=out)
    return run.run_id, suggestions


def _tags(plan: CellPlan) -> dict[str, Any]:
    return {
        schema.KIND: schema.KIND_LR_FIND,
        schema.GRID: plan.grid,
        schema.CELL: plan.cell,
        schema.SEED: plan.seed,
        schema.TECHNIQUES: plan.label,
        schema.PROFILE: plan.profile,
        schema.GIT_COMMIT: plan.git_commit,
        schema.DEVICE: torch.device(plan.device).type,
    }


def _sweep(
    plan: CellPlan, data: ImageData, device: torch.device, settings: FinderSettings
) -> tuple[dict[str, Suggestion], LRCurve]:
    """The cell's state as its run builds it (same seed, same init), swept."""
    torch.manual_seed(plan.seed)
    n_out = plan.train.n_out or len(data.classes)
    if n_out < len(data.classes):
        raise ValueError(f"n_out = {n_out} is smaller than the {len(data.classes)} classes in the data")
    s = build_state(plan.train, data, device, n_out)
    curve = sweep_cell(s, plan, settings)
    return curve.suggestions(), curve
