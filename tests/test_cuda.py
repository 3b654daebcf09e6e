"""The CUDA paths: pinned chunked host-to-device copies, on-device augmentation, channels_last, fp16 autocast with
GradScaler, the fused optimizer, and no host syncs in the training loop (skipped without CUDA); and the CPU
loader's two paths."""

from __future__ import annotations

import copy
import threading
import warnings
from pathlib import Path

import pytest
import torch

from sota_ablate.config import TrainConfig
from sota_ablate.data import (
    AugmentConfig,
    DataConfig,
    ImageData,
    ImageSet,
    load_data,
    sample_params,
    train_batches,
    train_loader,
    train_transform,
    valid_batches,
)
from sota_ablate.data import loader as loader_module
from sota_ablate.data.augment import preshrink, shrunk_shape
from sota_ablate.models import create_model
from sota_ablate.techniques import create_techniques
from sota_ablate.train.loop import fit
from sota_ablate.train.optim import create_optimizer
from sota_ablate.train.state import TrainState

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def folder_config(folder: Path, tmp_path: Path) -> DataConfig:
    return DataConfig(source="folder", path=str(folder), presize=24, cache_dir=str(tmp_path / "cache"))


def synthetic(n_train: int, n_valid: int, side: int, device: torch.device) -> ImageData:
    g = torch.Generator().manual_seed(0)

    def make(n: int) -> ImageSet:
        images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g).to(device)
        sizes = torch.full((n, 2), side, dtype=torch.int32, device=device)
        labels = torch.randint(0, 3, (n,), generator=g).to(device)
        return ImageSet(images=images, sizes=sizes, labels=labels, paths=[""] * n, presize=side)

    return ImageData(make(n_train), make(n_valid), ["a", "b", "c"], {"source": "synthetic"})


def test_train_loader_on_cpu_is_train_batches() -> None:
    """Without CUDA there is no thread: the loop gets ``train_batches`` from the global RNG, draw for draw."""
    data = synthetic(24, 4, 40, torch.device("cpu"))
    torch.manual_seed(5)
    a = list(train_loader(data.train, 8, 16, AugmentConfig()))
    torch.manual_seed(5)
    b = list(train_batches(data.train, 8, 16, AugmentConfig()))
    assert len(a) == 3 and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True))


def cuda_state(data: ImageData, cfg: TrainConfig) -> TrainState:
    """The state ``cell_run.run_cell`` builds on CUDA: channels_last model, fastai's Adam."""
    torch.manual_seed(0)
    model = create_model(cfg.model, n_out=3).to(CUDA).to(memory_format=torch.channels_last)
    return TrainState(
        cfg=cfg,
        model=model,
        optimizer=create_optimizer(model, cfg.lr),
        data=data,
        device=CUDA,
        channels_last=True,
        n_out=3,
    )


def test_preshrunk_canvases_give_the_per_batch_result() -> None:
    """The CPU loader's once-per-size area pre-shrink (float16) samples what per-batch pooling samples."""
    data = synthetic(16, 4, 131, torch.device("cpu"))
    images, sizes = data.train.images, data.train.sizes
    shrunk = preshrink(images, 64, 131)
    assert shrunk.dtype == torch.float16 and shrunk.shape[-2:] == shrunk_shape(131, 131, 64, 131) == (128, 128)
    assert preshrink(images, 16, 131).shape[-1] < 131 and preshrink(images, 80, 131) is images  # 131/160 < 1
    torch.manual_seed(0)
    params = sample_params(16, AugmentConfig())
    pooled = train_transform(images, sizes, 64, AugmentConfig(), presize=131, params=params)
    kept = train_transform(shrunk, sizes, 64, AugmentConfig(), presize=131, params=params, canvas=(131, 131))
    assert (pooled - kept).abs().max() < 1e-3
    with pytest.raises(ValueError, match="pre-shrunk"):
        train_transform(shrunk, sizes, 32, AugmentConfig(), presize=131, params=params, canvas=(131, 131))


@needs_cuda
def test_load_data_to_cuda_equals_cpu(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked copies through two pinned staging buffers (non_blocking) give exactly the CPU data."""
    monkeypatch.setattr(loader_module, "_CHUNK_BYTES", 3 * 24 * 40 * 2)  # about two images per chunk
    cfg = folder_config(image_folder, tmp_path)
    cpu, gpu = load_data(cfg, "cpu"), load_data(cfg, CUDA)
    for a, b in ((cpu.train, gpu.train), (cpu.valid, gpu.valid)):
        assert b.images.is_cuda and b.sizes.is_cuda and b.labels.is_cuda
        assert torch.equal(a.images, b.images.cpu())
        assert torch.equal(a.sizes, b.sizes.cpu()) and torch.equal(a.labels, b.labels.cpu())


@needs_cuda
def test_rows_to_device_gathers_scattered_rows_in_pinned_chunks() -> None:
    images = torch.randint(0, 256, (37, 3, 5, 5), dtype=torch.uint8)
    rows = [5, 1, 30, 2, 2, 36, 0, 17, 9]
    old = loader_module._CHUNK_BYTES
    try:
        loader_module._CHUNK_BYTES = 3 * 5 * 5 * 2  # two rows per chunk: both staging buffers are reused
        out = loader_module._rows_to_device(images, rows, CUDA)
    finally:
        loader_module._CHUNK_BYTES = old
    assert out.is_cuda and torch.equal(out.cpu(), images[rows])


@needs_cuda
def test_augmentation_on_cuda_equals_cpu() -> None:
    data = synthetic(16, 4, 40, torch.device("cpu"))
    torch.manual_seed(0)
    params = sample_params(16, AugmentConfig())
    cpu = train_transform(data.train.images, data.train.sizes, 24, AugmentConfig(), params=params)
    on_cuda = {f: getattr(params, f).to(CUDA) for f in params.__dataclass_fields__}
    gpu = train_transform(
        data.train.images.to(CUDA),
        data.train.sizes.to(CUDA),
        24,
        AugmentConfig(),
        params=type(params)(**on_cuda),
    )
    assert gpu.is_cuda
    assert torch.allclose(cpu, gpu.cpu(), atol=2e-3)


@needs_cuda
def test_batches_on_cuda_are_channels_last() -> None:
    data = synthetic(32, 10, 40, CUDA)
    torch.manual_seed(0)
    for x, y in train_batches(data.train, 8, 24, AugmentConfig()):
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert float(x.min()) >= 0 and float(x.max()) <= 1
    for x, _ in valid_batches(data.valid, 4, 24):
        assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)


@needs_cuda
def test_data_pipeline_never_syncs_the_host() -> None:
    """Batches are on-device slices and one resample: no .item(), no data-dependent shapes."""
    data = synthetic(32, 10, 40, CUDA)
    list(valid_batches(data.valid, 4, 24))  # the first call precomputes the validation set
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in train_batches(data.train, 8, 24, AugmentConfig()):
            pass
        for _ in train_loader(data.train, 8, 24, AugmentConfig()):  # the background thread's path
            pass
        for _ in valid_batches(data.valid, 4, 24):
            pass
    finally:
        torch.cuda.set_sync_debug_mode(0)


@needs_cuda
@pytest.mark.parametrize("techniques", [[], ["fp16"]])
def test_training_steps_never_sync_the_host(techniques: list[str]) -> None:
    """One epoch syncs only at its end (timing and the smoothed loss), never per batch: with fp16, the fused
    optimizer takes GradScaler's inf check on the device."""
    data = synthetic(48, 6, 40, CUDA)
    cfg = TrainConfig(model="xresnet18", size=24, batch_size=8, epochs=1)
    s = cuda_state(data, cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit(s, create_techniques(techniques))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    steps = len(data.train) // cfg.batch_size
    assert len(syncs) < steps, [f"{Path(w.filename).name}:{w.lineno}" for w in syncs]


@needs_cuda
def test_fp16_uses_autocast_gradscaler_and_a_fused_optimizer() -> None:
    data = synthetic(32, 8, 40, CUDA)
    cfg = TrainConfig(model="xresnet18", size=24, batch_size=8, epochs=1)
    s = cuda_state(data, cfg)
    assert s.optimizer.defaults.get("fused") is True
    records = fit(s, create_techniques(["fp16"]))
    assert s.dtype == "float16" and s.scaler.is_enabled() and s.scaler.get_scale() > 0
    assert all(torch.isfinite(p).all() for p in s.model.parameters())
    assert records[-1].train_loss == records[-1].train_loss  # not NaN
    conv = next(m for m in s.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark


@needs_cuda
def test_fused_optimizer_matches_foreach_on_cuda() -> None:
    """The fused AdamW create_optimizer picks on CUDA takes the foreach AdamW's steps, β1 schedule included."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2)).to(CUDA)
    twin = copy.deepcopy(net)
    fused = create_optimizer(net, 1e-2)
    assert fused.defaults.get("fused") is True
    groups = [
        {k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in create_optimizer(twin, 1e-2).param_groups
    ]
    foreach = torch.optim.AdamW(groups, foreach=True)
    for mom in (0.95, 0.9, 0.85, 0.9):
        grads = [torch.randn_like(p) * 1e-2 for p in net.parameters()]
        for model, opt in ((net, fused), (twin, foreach)):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            for group in opt.param_groups:
                group["betas"] = (mom, group["betas"][1])
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@needs_cuda
def test_prefetched_batches_are_seeded_and_complete() -> None:
    """The background thread's batches depend only on the seed, and every step of the epoch comes."""
    data = synthetic(40, 4, 40, CUDA)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append([(x.clone(), y.clone()) for x, y in train_loader(data.train, 8, 24, AugmentConfig())])
    assert len(runs[0]) == 5
    for (x1, y1), (x2, y2) in zip(*runs, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert x1.is_contiguous(memory_format=torch.channels_last)


@needs_cuda
def test_prefetch_thread_stops_with_its_consumer() -> None:
    data = synthetic(80, 4, 40, CUDA)
    before = threading.active_count()
    batches = train_loader(data.train, 8, 24, AugmentConfig())
    next(batches)
    batches.close()  # the loop broke out (an exception, Ctrl-C)
    assert threading.active_count() == before


@needs_cuda
def test_prefetch_thread_errors_reach_the_loop() -> None:
    data = synthetic(16, 4, 40, CUDA)
    with pytest.raises(ValueError, match="size must be"):
        for _ in train_loader(data.train, 8, 1, AugmentConfig()):  # a 1-pixel output is refused in the thread
            pass


@needs_cuda
def test_every_technique_together_on_cuda() -> None:
    """fp16 + normalize + progressive + TTA + mixup + label smoothing, one short run."""
    data = synthetic(32, 8, 40, CUDA)
    cfg = TrainConfig(model="xresnet18", size=24, batch_size=8, epochs=1)
    techniques = create_techniques(
        ["fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing"],
        {"progressive": {"initial_size": 16, "initial_batch_size": 8, "initial_epochs": 1}, "tta": {"n": 2}},
    )
    s = cuda_state(data, cfg)
    records = fit(s, techniques)
    assert [r.size for r in records] == [16, 24, 24]
    assert 0 <= s.final_metrics["tta_accuracy"] <= 1
    assert all(r.train_loss == r.train_loss for r in records)
