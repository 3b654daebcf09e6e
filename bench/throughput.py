"""Training throughput of sota_ablate's real loop against the model's pure compute limit, and a CUDA smoke run.

For each configuration (image size, batch size) and precision it trains 2 short epochs through
``sota_ablate.train.loop.fit`` (the second one timed: data pipeline + augmentation + forward/backward/step, and
the validation pass) and times the bare model forward + backward + step on one fixed random batch of the same
shape (no data pipeline): the ratio is how close training gets to the machine's limit. Then it runs every
technique together for a few steps (fp16 + GradScaler, channels_last, mixup, label smoothing, progressive,
TTA) to exercise the CUDA paths.

Optional extras: ``--limit-variants`` times the compute limit under each optimizer implementation, precision,
memory format and batch size (what makes fp16 fast or slow); ``--compile`` times the compute limit eager and under
``torch.compile`` (compilation time and break-even); ``--check-syncs`` counts the host syncs of one
training epoch; ``--chapter-estimate`` turns the measured rates into the wall time of ``ablations/chapter.toml``
under the ``chapter`` profile (synthetic data of the chapter's size: 9,469 train and 3,925 valid images).

No MLflow, no dataset needed (synthetic uint8 images at the presize; ``--data PATH`` uses a real folder)::

    python bench/throughput.py --device cuda --model xresnet50 --configs 128:64,224:64 --chapter-estimate
    python bench/throughput.py --device cpu --model xresnet18 --configs 64:64 --images 512 --valid 256
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from sota_ablate.config import TrainConfig
from sota_ablate.data import DataConfig, ImageData, ImageSet, load_data, train_loader
from sota_ablate.models import create_model
from sota_ablate.techniques import create_techniques
from sota_ablate.train import loop as loop_module
from sota_ablate.train.loop import fit
from sota_ablate.train.optim import create_optimizer
from sota_ablate.train.state import TrainState, build_state

CHAPTER_TRAIN, CHAPTER_VALID = 9469, 3925  # official Imagenette split


def synthetic_data(n_train: int, n_valid: int, presize: int, device: torch.device, classes: int = 10) -> ImageData:
    """Random uint8 square images at the presize, generated on ``device`` (GBs in a second on a GPU)."""
    g = torch.Generator(device=device).manual_seed(0)

    def make(n: int) -> ImageSet:
        images = torch.randint(0, 256, (n, 3, presize, presize), dtype=torch.uint8, generator=g, device=device)
        sizes = torch.full((n, 2), presize, dtype=torch.int32, device=device)
        labels = torch.randint(0, classes, (n,), generator=g, device=device)
        return ImageSet(images=images, sizes=sizes, labels=labels, paths=[""] * n, presize=presize)

    return ImageData(make(n_train), make(n_valid), [f"c{i}" for i in range(classes)], {"source": "synthetic"})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def with_impl(opt: torch.optim.Optimizer, impl: str) -> torch.optim.Optimizer:
    """The same AdamW with another implementation: ``default`` (as created), ``foreach`` or ``fused``."""
    if impl == "default":
        return opt
    groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in opt.param_groups]
    return torch.optim.AdamW(groups, **({"fused": True} if impl == "fused" else {"foreach": True, "fused": False}))


def pipeline_only(data: ImageData, size: int, batch_size: int, device: torch.device, steps: int = 30) -> float:
    """images/s of the training data pipeline alone (index, augment in one resample, layout): no model."""
    from sota_ablate.data import AugmentConfig, train_batches

    aug = AugmentConfig()
    for _ in zip(range(3), train_batches(data.train, batch_size, size, aug), strict=False):
        pass
    sync(device)
    start, n = time.perf_counter(), 0
    for _, (x, _y) in zip(range(steps), train_batches(data.train, batch_size, size, aug), strict=False):
        n += x.shape[0]
    sync(device)
    return n / (time.perf_counter() - start)


def state_for(cfg: TrainConfig, data: ImageData, device: torch.device, impl: str = "default") -> TrainState:
    """The TrainState ``cell_run.run_cell`` builds (channels_last model, fastai's Adam)."""
    torch.manual_seed(0)
    s = build_state(cfg, data, device)
    s.optimizer = with_impl(s.optimizer, impl)
    return s


@dataclass(frozen=True)
class LimitVariant:
    """One way of running the bare training step."""

    precision: str = "fp32"  # fp32 | fp16 (autocast + GradScaler, as the fp16 technique on CUDA) | bf16 (no scaler)
    optimizer: str = "default"  # default (create_optimizer) | foreach | fused
    channels_last: bool = True
    batch_size: int = 64
    compile: bool = False  # torch.compile(model) (inductor; the first step, timed apart, compiles)


def compute_limit(
    model_name: str,
    size: int,
    device: torch.device,
    variant: LimitVariant,
    steps: int,
    warmup: int = 10,
    first_step: list[float] | None = None,
) -> float:
    """images/s of model forward + backward + optimizer step alone, on one fixed random batch.

    ``first_step``, when given, receives the seconds of the very first step (with ``compile``: the compilation).
    """
    torch.manual_seed(0)
    model = create_model(model_name, n_out=10).to(device)
    channels_last = variant.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if variant.compile else model
    opt = with_impl(create_optimizer(model, 3e-3), variant.optimizer)
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    if variant.precision == "fp16":
        slots = SimpleNamespace(device=device, dtype="float32")
        create_techniques(["fp16"])[0].setup(slots)  # type: ignore[arg-type]  # setup reads .device only
        autocast, scaler = slots.autocast, getattr(slots, "scaler", scaler)
    elif variant.precision == "bf16":
        autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16)
    bs = variant.batch_size
    x = torch.rand(bs, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = F.one_hot(torch.randint(0, 10, (bs,), device=device), 10).float()

    def step() -> None:
        with autocast():
            logits = forward(x)
        loss = -(y * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()  # the loop's soft cross-entropy
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()
    sync(device)
    if first_step is not None:
        first_step.append(time.perf_counter() - start)
    return median_rate(step, bs, device, steps, warmup)


def compile_ab(model_name: str, size: int, device: torch.device, variant: LimitVariant, steps: int) -> dict[str, float]:
    """The compute limit eager and under ``torch.compile``: does compiling pay off here, and after how long?

    Returns eager and compiled img/s, the compiled first step's seconds (compilation) and the break-even in
    training images (compile time / time saved per image; inf when compiling is not faster).
    """
    eager = compute_limit(model_name, size, device, variant, steps)
    first: list[float] = []
    compiled = compute_limit(
        model_name, size, device, dataclasses.replace(variant, compile=True), steps, first_step=first
    )
    saved_per_image = 1 / eager - 1 / compiled
    return {
        "eager_images_per_s": eager,
        "compiled_images_per_s": compiled,
        "compile_s": first[0],
        "break_even_images": first[0] / saved_per_image if saved_per_image > 0 else float("inf"),
    }


def median_rate(step: Callable[[], None], images: int, device: torch.device, steps: int, warmup: int) -> float:
    """images/s of ``step`` (``images`` per call): ``warmup`` untimed calls, then the median of three timed
    windows of ``steps`` calls each (a busy neighbour or a clock step moves one window, not two)."""
    for _ in range(warmup):
        step()
    windows = []
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        windows.append(steps * images / (time.perf_counter() - start))
    return sorted(windows)[1]


def count_syncs(cfg: TrainConfig, data: ImageData, device: torch.device, names: list[str]) -> dict[str, int]:
    """Host syncs in one training epoch (CUDA): ``torch.cuda.set_sync_debug_mode('warn')`` warnings by origin."""
    s = state_for(cfg, data, device)
    counts: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit(s, create_techniques(names))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{Path(w.filename).name}:{w.lineno}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def profile_steps(cfg: TrainConfig, data: ImageData, device: torch.device, names: list[str]) -> str:
    """torch.profiler over one short epoch: GPU kernel time per step against the step's wall time, top ops."""
    from torch.profiler import ProfilerActivity, profile

    s = state_for(cfg, data, device)
    fit(s, create_techniques(names))  # warm-up: cuDNN autotuning, allocator
    s = state_for(cfg, data, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        records = fit(s, create_techniques(names))
        wall = time.perf_counter() - start
    steps = len(data.train) // cfg.batch_size
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    table = events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50)
    return (
        f"profile {cfg.size}px bs {cfg.batch_size} {names or 'fp32'}: {steps} steps + validation in {wall:.2f} s "
        f"(train {records[-1].train_time_s:.2f} s, {records[-1].train_time_s / steps * 1e3:.1f} ms/step); "
        f"GPU kernels {gpu_us / 1e6:.2f} s in all\n{table}"
    )


def chapter_estimate(rates: dict[tuple[int, int, str], tuple[float, float]]) -> tuple[float, list[str]]:
    """Wall time of ``ablations/chapter.toml`` under the ``chapter`` profile from measured rates.

    Args:
        rates: ``(size, batch size, precision) -> (train img/s, valid img/s)``, both with the data pipeline.

    Returns:
        Total seconds (training + validation + TTA; no decode cache, no MLflow) and one line per cell.
    """
    from sota_ablate.grid import load_grid
    from sota_ablate.plan import resolve_cell
    from sota_ablate.profiles import get_profile
    from sota_ablate.train.loop import plan_stages

    profile = get_profile("chapter")
    grid = load_grid("chapter")
    total, lines = 0.0, []
    for cell in grid.cells:
        cfg, techniques = resolve_cell(cell, grid, profile, {}, profile.epochs_scale)
        names = {t.name for t in techniques}
        precision = "fp16" if "fp16" in names else "fp32"
        stages = plan_stages(techniques, SimpleNamespace(cfg=cfg))  # type: ignore[arg-type]  # reads .cfg only
        seconds = 0.0
        for st in stages:
            train_ips, valid_ips = rates[(st.size, st.batch_size, precision)]
            steps = CHAPTER_TRAIN // st.batch_size
            seconds += st.epochs * (steps * st.batch_size / train_ips + CHAPTER_VALID / valid_ips)
        if "tta" in names:  # 4 augmented passes (train transform, ~ training-pipeline rate) + 1 plain pass
            last = stages[-1]
            seconds += CHAPTER_VALID / rates[(last.size, last.batch_size, precision)][1] * 5
        total += seconds
        epochs = sum(st.epochs for st in stages)
        lines.append(f"{cell.name}: {epochs} epochs {precision}, {seconds:.0f} s")
    return total, lines


def parse_configs(text: str, default_bs: int) -> list[tuple[int, int]]:
    out = []
    for token in text.split(","):
        size, _, bs = token.partition(":")
        out.append((int(size), int(bs) if bs else default_bs))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="xresnet50")
    p.add_argument("--configs", default="128:64,224:64", help="size[:batch size],... (default batch: --batch-size)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=CHAPTER_TRAIN, help="synthetic training images per epoch")
    p.add_argument("--valid", type=int, default=CHAPTER_VALID, help="synthetic validation images")
    p.add_argument("--presize", type=int, default=0, help="cache presize (default: 460 * size / 224)")
    p.add_argument("--data", default=None, help="a real train/val folder instead of synthetic images")
    p.add_argument("--precisions", default="fp32,fp16")
    p.add_argument("--optimizers", default="default", help="AdamW implementations: default,foreach,fused")
    p.add_argument("--prefetch", default="2", help="batches the CUDA loader prepares ahead, e.g. 2,0 for an A/B")
    p.add_argument("--profile", action="store_true", help="torch.profiler over a few training steps (first config)")
    p.add_argument("--limit-steps", type=int, default=20)
    p.add_argument("--limit-variants", action="store_true", help="time the compute limit's variants too")
    p.add_argument("--compile", action="store_true", help="A/B of the compute limit eager vs torch.compile")
    p.add_argument("--check-syncs", action="store_true", help="count host syncs in one epoch (CUDA)")
    p.add_argument("--chapter-estimate", action="store_true", help="estimate the chapter grid's wall time")
    p.add_argument("--no-smoke", action="store_true", help="skip the every-technique smoke run")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}", flush=True)
    configs = parse_configs(args.configs, args.batch_size)
    if args.chapter_estimate:
        for needed in ((128, 128), (224, 64)):
            if needed not in configs:
                configs.append(needed)
    results: dict[str, Any] = {"device": str(device), "model": args.model, "runs": [], "limits": [], "syncs": {}}
    rates: dict[tuple[int, int, str], tuple[float, float]] = {}
    rows = []
    for size in sorted({s for s, _ in configs}):
        presize = args.presize or round(460 * size / 224)
        if args.data:
            data = load_data(DataConfig(source="folder", path=args.data, presize=presize), device)
        else:
            data = synthetic_data(args.images, args.valid, presize, device)
        for bs in [b for s, b in configs if s == size]:
            pipe_ips = pipeline_only(data, size, bs, device)
            print(f"data pipeline alone, {size}px bs {bs}: {pipe_ips:.0f} img/s", flush=True)
            results["pipeline"] = {**results.get("pipeline", {}), f"{size}/{bs}": pipe_ips}
            for precision, impl, ahead in itertools.product(
                args.precisions.split(","), args.optimizers.split(","), [int(v) for v in args.prefetch.split(",")]
            ):
                names = ["fp16"] if precision == "fp16" else []
                cfg = TrainConfig(model=args.model, size=size, batch_size=bs, epochs=2)
                s = state_for(cfg, data, device, impl)
                loop_module.train_loader = partial(train_loader, prefetch=ahead)  # A/B of the background thread
                try:
                    records = fit(s, create_techniques(names))
                finally:
                    loop_module.train_loader = train_loader
                last = records[-1]
                train_ips = last.images_per_s
                valid_ips = len(data.valid) / max(last.epoch_time_s - last.train_time_s, 1e-9)
                rates[(size, bs, precision)] = (train_ips, valid_ips)
                variant = LimitVariant(precision, impl, batch_size=bs)
                limit = compute_limit(args.model, size, device, variant, args.limit_steps)
                rows.append((size, bs, precision, f"{impl}, prefetch {ahead}", s.dtype, train_ips, limit, valid_ips))
                results["runs"].append(
                    {
                        "size": size,
                        "batch_size": bs,
                        "precision": precision,
                        "optimizer": impl,
                        "prefetch": ahead,
                        "dtype": s.dtype,
                        "train_images_per_s": train_ips,
                        "valid_images_per_s": valid_ips,
                        "epoch_time_s": last.epoch_time_s,
                        "limit_images_per_s": limit,
                    }
                )
                print(
                    f"{args.model} {size}px bs {bs} {precision} ({s.dtype}, {impl} AdamW, prefetch {ahead}): "
                    "training "
                    f"{train_ips:.0f} img/s, compute limit {limit:.0f} img/s, ratio {train_ips / limit:.2f}; "
                    f"valid {valid_ips:.0f} img/s; epoch {last.epoch_time_s:.1f} s",
                    flush=True,
                )
                del s
        if args.check_syncs and device.type == "cuda":
            small = synthetic_data(8 * configs[0][1], 2 * configs[0][1], presize, device)
            for precision in args.precisions.split(","):
                cfg = TrainConfig(model=args.model, size=size, batch_size=configs[0][1], epochs=1)
                counts = count_syncs(cfg, small, device, ["fp16"] if precision == "fp16" else [])
                results["syncs"][f"{size}/{precision}"] = counts
                print(f"host syncs, 1 epoch of 8 steps + validation, {size}px {precision}: {counts}", flush=True)
        del data
    if args.profile:
        size, bs = configs[0]
        data = synthetic_data(12 * bs, 2 * bs, round(460 * size / 224), device)
        for precision in args.precisions.split(","):
            cfg = TrainConfig(model=args.model, size=size, batch_size=bs, epochs=1)
            report = profile_steps(cfg, data, device, ["fp16"] if precision == "fp16" else [])
            print(report, flush=True)
            if args.out:
                with open(Path(args.out).with_suffix(".profile.txt"), "a") as f:
                    f.write(report + "\n")
        del data
    if args.limit_variants:
        variants = [
            LimitVariant(precision, optimizer, channels_last, bs)
            for precision in ("fp32", "fp16", "bf16")
            for optimizer in ("foreach", "fused")
            for channels_last in (True, False)
            for bs in (64, 256)
            if channels_last or bs == 64
        ]
        for size in sorted({s for s, _ in configs}):
            for v in variants:
                ips = compute_limit(args.model, size, device, v, args.limit_steps)
                results["limits"].append({"size": size, **dataclasses.asdict(v), "images_per_s": ips})
                print(
                    f"limit {size}px bs {v.batch_size} {v.precision} {v.optimizer} "
                    f"{'channels_last' if v.channels_last else 'NCHW'}: {ips:.0f} img/s",
                    flush=True,
                )
    if args.compile:
        for (size, bs), precision in itertools.product(configs, args.precisions.split(",")):
            ab = compile_ab(args.model, size, device, LimitVariant(precision, batch_size=bs), args.limit_steps)
            results.setdefault("compile", []).append({"size": size, "batch_size": bs, "precision": precision, **ab})
            print(
                f"torch.compile {size}px bs {bs} {precision}: eager {ab['eager_images_per_s']:.0f} img/s, compiled "
                f"{ab['compiled_images_per_s']:.0f} img/s (x{ab['compiled_images_per_s'] / ab['eager_images_per_s']:.2f}),"
                f" compilation {ab['compile_s']:.0f} s; pays off after {ab['break_even_images']:.0f} training images",
                flush=True,
            )
    if not args.no_smoke:
        # Every technique at once, a few steps: the CUDA paths (GradScaler, channels_last, mixup, TTA, stages).
        size = max(s for s, _ in configs)
        data = synthetic_data(args.batch_size * 4, args.batch_size * 2, round(460 * size / 224), device)
        cfg = TrainConfig(model=args.model, size=size, batch_size=args.batch_size, epochs=1)
        techs = create_techniques(
            ["fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing"],
            {"progressive": {"initial_size": size // 2, "initial_batch_size": args.batch_size, "initial_epochs": 1}},
        )
        s = state_for(cfg, data, device)
        records = fit(s, techs)
        print(
            f"all techniques: {len(records)} epochs, final train_loss {records[-1].train_loss:.3f}, "
            f"dtype {s.dtype}, grad scale {s.scaler.get_scale() if s.scaler.is_enabled() else 'off'}, "
            f"tta {s.final_metrics}",
            flush=True,
        )
    print("\n| size | batch | precision | AdamW, loader | training img/s | compute limit img/s | ratio | valid img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for size, bs, precision, impl, dtype, pipe, limit, valid_ips in rows:
        print(
            f"| {size} | {bs} | {precision} ({dtype}) | {impl} | {pipe:.0f} | {limit:.0f} | {pipe / limit:.2f} "
            f"| {valid_ips:.0f} |"
        )
    if args.chapter_estimate:
        total, lines = chapter_estimate(rates)
        results["chapter_estimate_s"] = total
        print(f"\nchapter grid estimate (training + validation + TTA, no cache build): {total / 60:.1f} min")
        for line in lines:
            print(f"  {line}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
