"""fastai against sota_ablate on fastbook chapter 7's baseline recipe, and both against the compute limit.

One invocation trains, interleaved seed by seed (fastai, ours, fastai, ours, ...):

- **fastai** exactly as the chapter writes it: ``DataBlock(blocks=(ImageBlock, CategoryBlock),
  get_y=parent_label, splitter=GrandparentSplitter(valid_name='val'), item_tfms=Resize(presize),
  batch_tfms=aug_transforms(size=size, min_scale=0.75))``, ``Learner(dls, xresnet18/50(n_out=dls.c),
  loss_func=CrossEntropyLossFlat(), metrics=accuracy)``, ``fit_one_cycle(epochs, lr)``;
- **sota_ablate**'s ``baseline`` cell with the same settings (no technique; ``--fp16``: the ``fp16`` technique);

on the same images (sota_ablate's listing and per-class subset is handed to fastai's ``get_items``), model,
image size, presize, batch size, epochs, lr and seeds. Before each run it times the **compute limit**: the bare
model forward + backward + optimizer step on a fixed random batch of the same shape (no data pipeline), so each
run's throughput is compared with the limit measured next to it in time. It prints per-epoch wall times,
training images/s, final accuracies, the time ratio ours/fastai and a markdown table.

Needs the ``bench`` extra (fastai; never a runtime dependency of sota_ablate)::

    pip install -e '.[bench]'
    python bench/fastai_compare.py --data ../shared/data/imagenette2-224 --per-class 100 --seeds 0,1,2

``--no-fastai`` runs only sota_ablate and the compute limit (e.g. on a machine without fastai).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script, however this one is loaded
from throughput import median_rate, sync

DEFAULT_DATA = "../shared/data/imagenette2-224"


@dataclass
class RunResult:
    """One training run of one tool and seed."""

    tool: str
    seed: int
    epoch_times: list[float]  # wall time of each epoch, training + validation
    train_times: list[float]  # the training part of each epoch
    images_per_epoch: int  # training images per epoch (drop_last)
    accuracy: float  # final validation accuracy
    setup_s: float  # building the dataloaders / loading the device-resident data
    limit: float  # the compute limit measured just before this run, images/s
    load: float  # 1-minute load average when the run finished
    accuracies: list[float] = field(default_factory=list)

    @property
    def epoch_s(self) -> float:
        return statistics.fmean(self.epoch_times)

    @property
    def images_per_s(self) -> float:
        """Training throughput, all epochs (warm-up included): images / training seconds."""
        return self.images_per_epoch * len(self.train_times) / sum(self.train_times)

    @property
    def steady_images_per_s(self) -> float:
        """Training throughput without the first epoch (worker start, one-off caches)."""
        times = self.train_times[1:] or self.train_times
        return self.images_per_epoch * len(times) / sum(times)


# ---------------------------------------------------------------------------------------------------------------
# Compute limit


def compute_limit(
    model: torch.nn.Module,
    optimizer: Any,
    batch_size: int,
    size: int,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    steps: int = 10,
    warmup: int = 2,
) -> float:
    """images/s of forward + backward + optimizer step on one fixed random batch: no data pipeline at all.

    Args:
        model: a fresh model (trained on noise here: throw it away afterwards).
        optimizer: anything with ``step()`` and ``zero_grad()`` (a torch optimizer when ``scaler`` is given).
        batch_size: images per step.
        size: image side in pixels.
        device: where the model lives.
        autocast: the precision context (sota_ablate's ``autocast`` slot).
        scaler: a CUDA fp16 ``GradScaler`` (scale, step, update), or None.
        channels_last: feed a channels_last batch.
        steps: timed steps in each of three windows (the median window counts).
        warmup: untimed steps first (allocator, cuDNN autotuning, oneDNN primitive caches).
    """
    model.train()
    x = torch.rand(batch_size, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()

    return median_rate(step, batch_size, device, steps, warmup)


def precision_slots(
    fp16: bool, device: torch.device
) -> tuple[Callable[[], AbstractContextManager[Any]], torch.amp.GradScaler | None]:
    """sota_ablate's ``fp16`` technique's autocast and scaler slots for ``device`` (fp32: no-ops)."""
    if not fp16:
        return nullcontext, None
    from sota_ablate.techniques import create_techniques

    slots = SimpleNamespace(device=device)  # FP16.setup reads the device and writes the slots
    for tech in create_techniques(["fp16"]):
        tech.setup(slots)  # type: ignore[arg-type]
    scaler = getattr(slots, "scaler", None)
    return slots.autocast, scaler if scaler is not None and scaler.is_enabled() else None


def ours_limit(args: argparse.Namespace, device: torch.device) -> float:
    """The compute limit with sota_ablate's xresnet and optimizer: the machine's limit for this model."""
    from sota_ablate.models import create_model
    from sota_ablate.train.optim import create_optimizer

    torch.manual_seed(1234)
    model = create_model(args.model, n_out=10).to(device)
    channels_last = device.type in ("cuda", "cpu")  # as cell_run.run_cell
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast, scaler = precision_slots(args.fp16, device)
    return compute_limit(
        model,
        create_optimizer(model, args.lr),
        args.bs,
        args.size,
        device,
        autocast,
        scaler,
        channels_last,
        args.limit_steps,
    )


# ---------------------------------------------------------------------------------------------------------------
# sota_ablate


def load_ours(args: argparse.Namespace, device: torch.device) -> tuple[Any, float]:
    """sota_ablate's device-resident data (the uint8 cache must already exist: see ``main``)."""
    from sota_ablate.data import load_data

    start = time.perf_counter()
    data = load_data(data_config(args), device)
    return data, time.perf_counter() - start


def data_config(args: argparse.Namespace) -> Any:
    from sota_ablate.data import DataConfig

    return DataConfig(
        source="folder",
        path=args.data,
        presize=args.presize,
        train_per_class=args.per_class or None,
        valid_per_class=args.valid_per_class or None,
        cache_dir=args.cache_dir,
    )


def run_ours(args: argparse.Namespace, seed: int, device: torch.device, limit: float) -> RunResult:
    """sota_ablate's baseline cell (``fp16`` with ``--fp16``) for one seed, as ``cell_run.run_cell`` builds it."""
    from sota_ablate.config import TrainConfig
    from sota_ablate.techniques import create_techniques
    from sota_ablate.train.loop import fit
    from sota_ablate.train.state import build_state

    data, setup_s = load_ours(args, device)
    cfg = TrainConfig(model=args.model, epochs=args.epochs, size=args.size, batch_size=args.bs, lr=args.lr, seed=seed)
    cfg.validate()
    torch.manual_seed(seed)  # as cell_run.run_cell
    s = build_state(cfg, data, device)
    records = fit(s, create_techniques(["fp16"] if args.fp16 else []))
    return RunResult(
        tool="sota_ablate",
        seed=seed,
        epoch_times=[r.epoch_time_s for r in records],
        train_times=[r.train_time_s for r in records],
        images_per_epoch=(len(data.train) // args.bs) * args.bs,
        accuracy=records[-1].accuracy,
        setup_s=setup_s,
        limit=limit,
        load=os.getloadavg()[0],
        accuracies=[r.accuracy for r in records],
    )


# ---------------------------------------------------------------------------------------------------------------
# fastai


def fastai_version() -> str | None:
    try:
        import fastai
    except ImportError:
        return None
    return str(fastai.__version__)


def run_fastai(
    args: argparse.Namespace, seed: int, device: torch.device, paths: Sequence[str], limit: float
) -> RunResult:
    """The chapter's recipe in fastai, on the same image files, for one seed."""
    from fastai.vision.all import (
        CategoryBlock,
        CrossEntropyLossFlat,
        DataBlock,
        GrandparentSplitter,
        ImageBlock,
        Learner,
        Resize,
        accuracy,
        aug_transforms,
        parent_label,
        set_seed,
    )
    from fastai.vision.models.xresnet import xresnet18, xresnet34, xresnet50

    models = {"xresnet18": xresnet18, "xresnet34": xresnet34, "xresnet50": xresnet50}
    files = [Path(p) for p in paths]
    set_seed(seed)
    start = time.perf_counter()
    dblock = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=lambda _: files,
        get_y=parent_label,
        splitter=GrandparentSplitter(valid_name="val"),
        item_tfms=Resize(args.presize),
        batch_tfms=aug_transforms(size=args.size, min_scale=0.75),
    )
    dls = dblock.dataloaders(args.data, bs=args.bs, num_workers=args.fastai_workers, device=device)
    setup_s = time.perf_counter() - start
    timer = _fastai_timer()
    learn = Learner(
        dls, models[args.model](n_out=dls.c), loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=[timer]
    )
    if args.fp16:
        if device.type == "cuda":
            learn.to_fp16()
        else:  # fastai's MixedPrecision hard-codes autocast('cuda'): the same bf16 autocast as ours, on the CPU
            learn.add_cb(_fastai_cpu_autocast())
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(args.epochs, args.lr)
    accuracies = [float(v[2]) for v in learn.recorder.values]
    return RunResult(
        tool="fastai",
        seed=seed,
        epoch_times=timer.epoch_times,
        train_times=timer.train_times,
        images_per_epoch=len(dls.train) * args.bs,
        accuracy=accuracies[-1],
        setup_s=setup_s,
        limit=limit,
        load=os.getloadavg()[0],
        accuracies=accuracies,
    )


def _fastai_timer() -> Any:
    """A fastai callback that records each epoch's wall time and its training part (fastai imported lazily)."""
    from fastai.callback.core import Callback

    class EpochTimer(Callback):
        order = -100  # before every other callback in each event

        def __init__(self) -> None:
            self.epoch_times: list[float] = []
            self.train_times: list[float] = []

        def before_epoch(self) -> None:
            self.epoch_start = time.perf_counter()

        def before_train(self) -> None:
            self.train_start = time.perf_counter()

        def after_train(self) -> None:
            sync(self.dls.device)
            self.train_times.append(time.perf_counter() - self.train_start)

        def after_epoch(self) -> None:
            self.epoch_times.append(time.perf_counter() - self.epoch_start)

    return EpochTimer()


def _fastai_cpu_autocast() -> Any:
    """fastai's ``MixedPrecision(amp_mode='bf16')`` callback with ``autocast('cpu')`` (no scaler is needed)."""
    from fastai.callback.core import Callback

    class CPUBF16(Callback):
        order = 10  # MixedPrecision's order

        def before_batch(self) -> None:
            self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
            self.ctx.__enter__()

        def after_pred(self) -> None:
            self.learn.pred = self.pred.float()

        def after_loss(self) -> None:
            self.ctx.__exit__(None, None, None)

    return CPUBF16()


def fastai_limit(args: argparse.Namespace, device: torch.device) -> float:
    """The compute limit with fastai's xresnet and fastai's own ``Adam`` (its Python optimizer)."""
    from fastai.optimizer import Adam
    from fastai.vision.models.xresnet import xresnet18, xresnet34, xresnet50

    torch.manual_seed(1234)
    model = {"xresnet18": xresnet18, "xresnet34": xresnet34, "xresnet50": xresnet50}[args.model](n_out=10)
    model = model.to(device)
    opt = Adam(list(model.parameters()), lr=args.lr)
    autocast, _ = precision_slots(args.fp16, device)  # fastai's to_fp16 scaler is left out: fp32 grads on CPU
    return compute_limit(model, opt, args.bs, args.size, device, autocast, None, False, args.limit_steps)


# ---------------------------------------------------------------------------------------------------------------
# Report


def _mean_sd(values: Sequence[float], digits: int = 1) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def print_run(r: RunResult) -> None:
    epochs = " ".join(f"{t:.1f}" for t in r.epoch_times)
    accs = " ".join(f"{a:.3f}" for a in r.accuracies)
    print(
        f"  {r.tool:<11} seed {r.seed}: epochs {epochs} s (mean {r.epoch_s:.1f} s), setup {r.setup_s:.1f} s, "
        f"train {r.images_per_s:.0f} img/s ({r.images_per_s / r.limit:.0%} of the limit {r.limit:.0f}), "
        f"accuracy by epoch {accs}, load {r.load:.1f}",
        flush=True,
    )


def report(args: argparse.Namespace, device: torch.device, runs: list[RunResult], extra: dict[str, Any]) -> str:
    """The summary as a markdown table (printed, and written to ``--out`` when given)."""
    by_tool: dict[str, list[RunResult]] = {}
    for r in runs:
        by_tool.setdefault(r.tool, []).append(r)
    limits = [r.limit for r in runs]
    precision = "bf16 autocast" if args.fp16 and device.type == "cpu" else ("fp16 AMP" if args.fp16 else "fp32")
    lines = [
        f"Machine: {machine(device)}. Settings: {args.model}, {args.size} px, presize {args.presize}, bs {args.bs}, "
        f"{args.epochs} epochs, lr {args.lr}, {precision}, seeds {args.seeds}, "
        f"{extra['n_train']} train / {extra['n_valid']} valid images ({extra['subset']}); "
        f"fastai num_workers={args.fastai_workers}.",
        "",
        "| tool | epoch time (s) | train img/s | of compute limit | final accuracy per seed | accuracy mean ± sd |",
        "|---|---|---|---|---|---|",
    ]
    for tool, rs in by_tool.items():
        name = f"fastai {extra['fastai']}" if tool == "fastai" else "sota_ablate"
        ips = [r.images_per_s for r in rs]
        frac = [r.images_per_s / r.limit for r in rs]
        accs = [r.accuracy for r in rs]
        lines.append(
            f"| {name} | {_mean_sd([r.epoch_s for r in rs], 2)} | {_mean_sd(ips, 0)} | "
            f"{statistics.fmean(frac):.0%} | {', '.join(f'{a:.3f}' for a in accs)} | {_mean_sd(accs, 3)} |"
        )
    lines.append(f"| compute limit (model fwd+bwd+step, random batch) | | {_mean_sd(limits, 0)} | 100% | | |")
    if "fastai_limit" in extra:
        lines.append(f"| compute limit, fastai's xresnet + Adam | | {extra['fastai_limit']:.0f} | | | |")
    if "fastai" in by_tool and "sota_ablate" in by_tool:
        ours = statistics.fmean(r.epoch_s for r in by_tool["sota_ablate"])
        theirs = statistics.fmean(r.epoch_s for r in by_tool["fastai"])
        lines += ["", f"Epoch time ratio sota_ablate / fastai: **{ours / theirs:.2f}** ({theirs / ours:.1f}x faster)."]
    lines.append(
        f"One-off uint8 decode cache build (sota_ablate, first run only): {extra['cache_s']:.1f} s"
        f"{' (cache hit)' if extra['cache_hit'] else ''}."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="a folder with train/<class>/* and val/<class>/*")
    p.add_argument("--model", default="xresnet18", choices=["xresnet18", "xresnet34", "xresnet50"])
    p.add_argument("--size", type=int, default=64, help="training and validation image size (px)")
    p.add_argument("--presize", type=int, default=131, help="Resize(presize) item transform / cache short side")
    p.add_argument("--bs", type=int, default=64, help="batch size")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated; each seed trains both tools")
    p.add_argument("--per-class", type=int, default=100, help="training images per class (0: all)")
    p.add_argument("--valid-per-class", type=int, default=-1, help="validation images per class (-1: per-class/2)")
    p.add_argument("--fp16", action="store_true", help="mixed precision: fp16 AMP on CUDA, bf16 autocast on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--fastai-workers",
        type=int,
        default=min(16, os.cpu_count() or 1),
        help="fastai DataLoader num_workers (fastai's own default: min(16, cpus))",
    )
    p.add_argument("--limit-steps", type=int, default=5, help="steps per timed window of the compute limit (3 windows)")
    p.add_argument("--cache-dir", default=None, help="sota_ablate's decode cache folder (default: its own)")
    p.add_argument("--no-fastai", action="store_true", help="only sota_ablate and the compute limit")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = p.parse_args(argv)
    if args.valid_per_class < 0:
        args.valid_per_class = args.per_class // 2 if args.per_class else 0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if not (Path(args.data) / "train").is_dir():
        print(f"no train/ folder under {args.data}: pass --data PATH (train/<class>/*, val/<class>/*)", file=sys.stderr)
        return 2
    version = None if args.no_fastai else fastai_version()
    if not args.no_fastai and version is None:
        print("fastai is not installed: pip install -e '.[bench]' (or pass --no-fastai)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {machine(device)}; load average {os.getloadavg()[0]:.1f}", flush=True)

    from sota_ablate.data.cache import build_cache
    from sota_ablate.data.sources import list_items

    items = list_items(data_config(args))
    start = time.perf_counter()
    cached = build_cache(items, data_config(args))  # the one-off decode, outside every timed run
    cache_s, cache_hit = time.perf_counter() - start, cached.hit
    del cached
    paths = [path for path, _ in items.train + items.valid]
    extra: dict[str, Any] = {
        "n_train": len(items.train),
        "n_valid": len(items.valid),
        "subset": f"{args.per_class} + {args.valid_per_class} per class" if args.per_class else "all images",
        "fastai": version,
        "cache_s": cache_s,
        "cache_hit": cache_hit,
    }
    print(
        f"data: {args.data}: {len(items.train)} train, {len(items.valid)} valid; decode cache "
        f"{'hit' if cache_hit else 'built'} in {cache_s:.1f} s",
        flush=True,
    )

    runs: list[RunResult] = []
    for seed in seeds:
        tools = ["sota_ablate"] if args.no_fastai else ["fastai", "sota_ablate"]
        for tool in tools:
            limit = ours_limit(args, device)
            if tool == "fastai":
                result = run_fastai(args, seed, device, paths, limit)
            else:
                result = run_ours(args, seed, device, limit)
            runs.append(result)
            print_run(result)
    if not args.no_fastai:
        extra["fastai_limit"] = fastai_limit(args, device)
    table = report(args, device, runs, extra)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
