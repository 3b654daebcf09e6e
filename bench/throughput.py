"""Training throughput of sota_ablate's real loop against the model's pure compute limit, and a CUDA smoke run.

For each image size and precision it trains 2 short epochs through ``sota_ablate.train.loop.fit`` (the
second one timed: data pipeline + augmentation + forward/backward/step) and times the bare model
forward+backward+step on one fixed random batch of the same shape (no data pipeline): the ratio is how close
training gets to the machine's limit. Then it runs every technique together for a few steps (fp16 +
GradScaler, channels_last, mixup, label smoothing, progressive, TTA) to exercise the CUDA paths.

No MLflow, no dataset needed (synthetic uint8 images at the presize; ``--data PATH`` uses a real folder)::

    python bench/throughput.py --device cuda --model xresnet50 --sizes 128,224
    python bench/throughput.py --device cpu --model xresnet18 --sizes 64 --images 512
"""

from __future__ import annotations

import argparse
import time

import torch

from sota_ablate.config import TrainConfig
from sota_ablate.data import DataConfig, ImageData, ImageSet, load_data
from sota_ablate.models import create_model
from sota_ablate.techniques import create_techniques
from sota_ablate.train.loop import fit
from sota_ablate.train.optim import create_optimizer
from sota_ablate.train.state import TrainState


def synthetic_data(n_train: int, n_valid: int, presize: int, device: torch.device, classes: int = 10) -> ImageData:
    g = torch.Generator(device="cpu").manual_seed(0)

    def make(n: int) -> ImageSet:
        images = torch.randint(0, 256, (n, 3, presize, presize), dtype=torch.uint8, generator=g).to(device)
        sizes = torch.full((n, 2), presize, dtype=torch.int32, device=device)
        labels = torch.randint(0, classes, (n,), generator=g).to(device)
        return ImageSet(images=images, sizes=sizes, labels=labels, paths=[""] * n, presize=presize)

    return ImageData(make(n_train), make(n_valid), [f"c{i}" for i in range(classes)], {"source": "synthetic"})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def state_for(cfg: TrainConfig, data: ImageData, device: torch.device) -> TrainState:
    torch.manual_seed(0)
    model = create_model(cfg.model, n_out=len(data.classes)).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = create_optimizer(model, cfg.lr)
    return TrainState(
        cfg=cfg,
        model=model,
        optimizer=opt,
        data=data,
        device=device,
        channels_last=channels_last,
        n_out=len(data.classes),
    )


def compute_limit(cfg: TrainConfig, device: torch.device, techniques: list, steps: int) -> float:
    """images/s of model forward + backward + step alone, on one fixed random batch."""
    data = synthetic_data(cfg.batch_size, cfg.batch_size, 8, device)
    s = state_for(cfg, data, device)
    for t in techniques:
        t.setup(s)
    x = torch.rand(cfg.batch_size, 3, cfg.size, cfg.size, device=device)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (cfg.batch_size,), device=device), 10).float()

    def step() -> None:
        with s.autocast():
            logits = s.model(x)
        loss = s.loss_fn(logits.float(), y)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="xresnet50")
    p.add_argument("--sizes", default="128,224")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=4096, help="synthetic training images per epoch")
    p.add_argument("--presize", type=int, default=0, help="cache presize (default: 460 * size / 224)")
    p.add_argument("--data", default=None, help="a real train/val folder instead of synthetic images")
    p.add_argument("--precisions", default="fp32,fp16")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}")
    rows = []
    for size in [int(v) for v in args.sizes.split(",")]:
        presize = args.presize or round(460 * size / 224)
        if args.data:
            data = load_data(DataConfig(source="folder", path=args.data, presize=presize), device)
        else:
            data = synthetic_data(args.images, 512, presize, device)
        for precision in args.precisions.split(","):
            names = ["fp16"] if precision == "fp16" else []
            cfg = TrainConfig(model=args.model, size=size, batch_size=args.batch_size, epochs=2)
            s = state_for(cfg, data, device)
            records = fit(s, create_techniques(names))
            pipeline = records[-1].images_per_s
            limit = compute_limit(cfg, device, create_techniques(names), steps=20)
            rows.append((size, precision, s.dtype, pipeline, limit))
            print(
                f"{args.model} {size}px {precision} ({s.dtype}): training {pipeline:.0f} img/s, "
                f"compute limit {limit:.0f} img/s, ratio {pipeline / limit:.2f}",
                flush=True,
            )
        del data
    # Every technique at once, a few steps: the CUDA paths (GradScaler, channels_last, mixup, TTA, stages).
    size = max(int(v) for v in args.sizes.split(","))
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
        f"tta {s.final_metrics}"
    )
    print("\n| size | precision | dtype | training img/s | compute limit img/s | ratio |")
    print("|---|---|---|---|---|---|")
    for size, precision, dtype, pipe, limit in rows:
        print(f"| {size} | {precision} | {dtype} | {pipe:.0f} | {limit:.0f} | {pipe / limit:.2f} |")


if __name__ == "__main__":
    main()
