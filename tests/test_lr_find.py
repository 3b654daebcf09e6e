"""The learning-rate finder: fastai's ``lr_find`` number for number, its stop rule, and ``lr = "find"`` in a cell.

fastai is the reference (its ``Learner.lr_find`` on the same tiny model, weights and batches, and its suggestion
functions on the same curves); without fastai those tests are skipped.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from sota_ablate import schema
from sota_ablate.cli import main
from sota_ablate.config import LR_FIND, ConfigError, TrainConfig, apply_overrides
from sota_ablate.lr_find import resolve_lr
from sota_ablate.train.loop import train_step
from sota_ablate.train.lr_find import NUM_IT, LRCurve, exp_lr, minimum, steep, sweep, valley
from sota_ablate.train.optim import create_optimizer, set_hyper
from sota_ablate.train.state import TrainState

SMOKE = ["--profile", "smoke", "--device", "cpu", "--set", "size=16", "--set", "batch_size=4", "--grid", "chapter"]


def _curve(losses: list[float], stop: str = "num_it") -> LRCurve:
    lrs = [exp_lr(1e-7, 10.0, i / NUM_IT) for i in range(len(losses))]
    return LRCurve(tuple(lrs), tuple(losses), stop)


def test_stop_rule_and_schedule_on_a_synthetic_loss() -> None:
    """1.0 for 30 batches, then 10.0: the debiased smoothed loss passes 4x its minimum (1.0) at the batch a
    hand computation gives; the lrs are fastai's SchedExp; a NaN stops at once; otherwise num_it."""
    raw = iter([1.0] * 30 + [10.0] * 70)
    curve = sweep(lambda lr: torch.tensor(next(raw)))
    # smoothed after k > 30 batches: (0.98^(k-30) (1 - 0.98^30) + 10 (1 - 0.98^(k-30))) / (1 - 0.98^k)
    k = next(k for k in range(31, 101) if (10 * (1 - 0.98 ** (k - 30)) + 0.98 ** (k - 30) * (1 - 0.98**30)) /
             (1 - 0.98**k) > 4)  # fmt: skip
    assert curve.stop == "diverged" and len(curve.lrs) == k
    assert curve.lrs == tuple(1e-7 * (10 / 1e-7) ** (i / 100) for i in range(k))
    assert min(curve.losses) == pytest.approx(1.0) and curve.losses[-1] > 4 * min(curve.losses) >= curve.losses[-2]
    calm = sweep(lambda lr: torch.tensor(1.0))
    assert calm.stop == "num_it" and len(calm.lrs) == NUM_IT
    nan = sweep(lambda lr: torch.tensor(math.nan if lr > 1e-3 else 1.0))
    assert nan.stop == "nan" and nan.lrs[-1] > 1e-3 >= nan.lrs[-2]
    assert sweep(lambda lr: torch.tensor(1.0), num_it=3).stop == "num_it"  # fastai's minimum of 6 iterations
    assert len(sweep(lambda lr: torch.tensor(1.0), num_it=3).lrs) == 6


def _fastai_schedule():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("fastai.callback.schedule")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suggestions_are_fastais_on_the_same_curve(seed: int) -> None:
    """valley, minimum and steep equal fastai's functions exactly on noisy U-shaped curves; a NaN-stopped curve
    is suggested from as fastai's (which trains on to num_it in NaNs) is."""
    fs = _fastai_schedule()
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-3, 2, 90)
    losses = (2.3 - torch.exp(-((x + 0.5) ** 2)) + 0.05 * torch.randn(90, generator=g)).tolist()
    for stop, cut in (("diverged", 90), ("nan", 70)):
        curve = _curve(losses[:cut] + ([math.nan] if stop == "nan" else []), stop)
        ours = curve.suggestions()
        full = list(curve.losses) + [math.nan] * (NUM_IT - len(curve.losses)) if stop == "nan" else list(curve.losses)
        lrs = torch.tensor([exp_lr(1e-7, 10.0, i / NUM_IT) for i in range(len(full))][10:-5])
        ref = torch.tensor(full[10:-5])
        if stop == "nan":
            first = int(torch.nonzero(torch.isnan(ref)).min())
            lrs, ref = lrs[:first], ref[:first]
        for name, ours_fn, theirs in (("valley", valley, fs.valley), ("minimum", minimum, fs.minimum),
                                      ("steep", steep, fs.steep)):  # fmt: skip
            lr, point = theirs(lrs, ref, NUM_IT)
            assert ours[name].lr == pytest.approx(lr, rel=1e-7), (name, stop)
            assert ours[name].point == pytest.approx((float(point[0]), float(point[1])), rel=1e-6), (name, stop)
            assert ours_fn(lrs, ref) == ours[name]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def test_finder_matches_fastai_lr_find(tmp_path: Path) -> None:
    """Our sweep (the training loop's step, fastai's Adam as AdamW) against ``Learner.lr_find`` on the same
    model, initial weights and batches (in order, no augmentation): the curves agree to 1e-4 while the lr is
    below 0.1 (fp rounding of two Adam implementations grows with the lr), both stop at the same iteration
    give or take 2, and every suggestion agrees within a factor 1.25 (about one step of the sweep)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fl = pytest.importorskip("fastai.learner")
        fdata = pytest.importorskip("fastai.data.core")
        fload = pytest.importorskip("fastai.data.load")
        flosses = pytest.importorskip("fastai.losses")
        fs = _fastai_schedule()
    torch.manual_seed(0)
    n, bs = 40, 8
    x = torch.rand(n, 3, 8, 8)
    y = torch.randint(0, 3, (n,))
    x[torch.arange(n), y] += 0.5  # learnable: the class's channel is brighter
    model = TinyNet()
    init = copy.deepcopy(model.state_dict())

    cfg = TrainConfig()
    s = TrainState(cfg=cfg, model=model, optimizer=create_optimizer(model, 1e-3), data=None, device=torch.device("cpu"),
                   n_out=3)  # type: ignore[arg-type]  # fmt: skip
    batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, n, bs)]
    it = iter(range(10**6))

    def step(lr: float) -> torch.Tensor:
        xb, yb = batches[next(it) % len(batches)]
        set_hyper(s.optimizer, lr, 0.9)
        return train_step(s, [], xb, yb)

    ours = sweep(step)
    ours_sugg = ours.suggestions()

    theirs_model = TinyNet()
    theirs_model.load_state_dict(init)
    ds = list(zip(x, y, strict=True))
    cpu = torch.device("cpu")
    dls = fdata.DataLoaders(fload.DataLoader(ds, bs=bs, shuffle=False, drop_last=True, device=cpu),
                            fload.DataLoader(ds, bs=bs, device=cpu), device=cpu)  # fmt: skip
    learn = fl.Learner(dls, theirs_model, loss_func=flosses.CrossEntropyLossFlat(), path=tmp_path)
    with learn.no_bar():
        sugg = learn.lr_find(show_plot=False, suggest_funcs=(fs.valley, fs.minimum, fs.steep))
    t_lrs = [float(v) for v in learn.recorder.lrs]
    t_losses = [float(v) for v in learn.recorder.losses]
    assert abs(len(t_lrs) - len(ours.lrs)) <= 2
    assert ours.lrs[: len(t_lrs)] == pytest.approx(t_lrs[: len(ours.lrs)], rel=1e-12)
    low = [i for i, lr in enumerate(t_lrs[: len(ours.lrs)]) if lr < 0.1]
    assert [ours.losses[i] for i in low] == pytest.approx([t_losses[i] for i in low], rel=1e-4)
    for name in ("valley", "minimum", "steep"):
        ratio = ours_sugg[name].lr / getattr(sugg, name)
        assert 1 / 1.25 <= ratio <= 1.25, (name, ours_sugg[name].lr, getattr(sugg, name))


def test_lr_find_in_config_and_its_hash() -> None:
    """``lr = "find"`` is a value of lr (from a cell or --set), a number can replace it, anything else is an error
    naming both forms; the plan's identity keeps "find", not a number."""
    cfg = apply_overrides(TrainConfig(), {"lr": LR_FIND})
    cfg.validate()
    assert cfg.lr == LR_FIND
    assert apply_overrides(cfg, {"lr": 1e-3}).lr == 1e-3
    with pytest.raises(ConfigError, match=r'lr = .fnd.*also takes "find"'):
        apply_overrides(TrainConfig(), {"lr": "fnd"})


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    """One cell with --set lr=find, then the same with that number, and lr-find on the same cell and seed."""
    from tests.conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("lrfind")
    folder = make_image_folder(tmp / "images")
    common = [*SMOKE, "--data", str(folder), "--cache-dir", str(tmp / "cache"),
              "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--experiment", "lrf"]  # fmt: skip
    assert main(["run-grid", *common, "--cells", "baseline", "--set", "lr=find"]) == 0
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["lrf"])
    cell = runs[(runs["tags.sota_ablate.lr_source"] == "find")].iloc[0]
    lr = float(cell["params.train.lr"])
    assert main(["run-grid", *common, "--cells", "baseline", "--set", f"lr={lr!r}"]) == 0
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        assert main(["lr-find", *common, "--cell", "baseline"]) == 0
    return tmp, lr, out.getvalue()


def test_lr_find_cell_trains_with_the_found_lr(found) -> None:
    """The cell run logs the finder's valley as train.lr (tag lr_source = find), its curve and suggestions, its
    stages use that lr, and it trains exactly as the same cell given that lr as a number: the sweep leaves the
    model, optimizer and RNG as they were."""
    tmp, lr, _ = found
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["lrf"], filter_string="tags.cell = 'baseline'")
    cells = runs[runs["tags.sota_ablate.kind"].isna()]
    finder = cells[cells["tags.sota_ablate.lr_source"] == "find"].iloc[0]
    given = cells[cells["tags.sota_ablate.lr_source"].isna()].iloc[0]
    assert finder["metrics.lr_find.valley"] == lr and float(given["params.train.lr"]) == lr
    assert repr(lr) in finder["params.stages"] and LR_FIND not in finder["params.stages"]
    for key in ("train_loss", "valid_loss", "accuracy"):
        assert finder[f"metrics.{key}"] == given[f"metrics.{key}"], key
    arts = {a.path for a in client.list_artifacts(finder["run_id"])}
    assert {schema.LR_FIND_PNG, schema.LR_FIND_CSV, schema.LR_FIND_JSON} <= arts
    assert schema.LR_FIND_PNG not in {a.path for a in client.list_artifacts(given["run_id"])}


def test_lr_find_command_logs_and_prints_the_same_suggestion(found) -> None:
    """lr-find on the same cell and seed is the same sweep: its valley is the cell's lr; its run is tagged
    lr_find with the cell, grid and seed, has the three suggestions as metrics and the curve as PNG and CSV."""
    tmp, lr, printed = found
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["lrf"], filter_string="tags.`sota_ablate.kind` = 'lr_find'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert (run["tags.cell"], run["tags.grid"], run["tags.seed"], run["status"]) == ("baseline", "chapter", "0",
                                                                                      "FINISHED")  # fmt: skip
    assert run["metrics.lr_find.valley"] == lr
    assert run["metrics.lr_find.minimum"] > 0 and run["metrics.lr_find.steep"] > 0
    assert f"valley   {lr:.3e}" in printed and "minimum" in printed and "steep" in printed
    csv = Path(client.download_artifacts(run["run_id"], schema.LR_FIND_CSV, str(tmp))).read_text().splitlines()
    assert csv[0] == "iteration,lr,loss" and len(csv) - 1 == int(run["params.lr_find.iterations"])
    assert float(csv[1].split(",")[1]) == pytest.approx(1e-7)


def test_resumed_cell_reuses_the_recorded_lr(found) -> None:
    """Resuming from a checkpoint takes the lr the checkpoint recorded and runs no sweep."""
    tmp, _, _ = found
    from sota_ablate.plan import CellPlan
    from sota_ablate.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "lrf")
    run = tracker.start_run("resume-probe")
    plan = CellPlan(grid="g", cell="c", seed=0, run_name="c", index=1, total=1, techniques=(), technique_names=(),
                    train=TrainConfig(lr=LR_FIND), profile="smoke", device="cpu", git_commit="x")  # fmt: skip
    s = TrainState(cfg=plan.train, model=TinyNet(), optimizer=None, data=None,  # type: ignore[arg-type]
                   device=torch.device("cpu"))  # fmt: skip
    resolve_lr(plan, s, run, {"meta": {"lr": 0.0123}}, io.StringIO())
    run.end("FINISHED")
    assert s.cfg.lr == 0.0123
    logged = MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_run(run.run_id).data
    assert logged.params[schema.train_param("lr")] == "0.0123" and schema.lr_find_key("valley") not in logged.metrics
