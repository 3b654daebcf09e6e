"""The benchmark scripts' arithmetic (no timing, no fastai): the chapter-grid estimate and the summary table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_chapter_estimate_counts_every_epoch_of_the_grid() -> None:
    """With one image per second everywhere, the estimate is the number of images the chapter grid touches."""
    throughput = load("throughput")
    rates = {(size, bs, p): (1.0, 1.0) for size, bs in ((128, 128), (224, 64)) for p in ("fp32", "fp16")}
    total, lines = throughput.chapter_estimate(rates)
    train_128, train_224 = (9469 // 128) * 128, (9469 // 64) * 64
    epochs_128, epochs_224 = 4 + 15, 5 * 4 + 6 + 15 * 2 + 11  # progressive / all at 128; the rest at 224
    assert epochs_128 + epochs_224 == 86
    tta = 2 * 5 * 3925  # the tta and all cells: 4 augmented passes + 1 plain
    expected = epochs_128 * (train_128 + 3925) + epochs_224 * (train_224 + 3925) + tta
    assert total == expected
    assert len(lines) == 8 and lines[0].startswith("baseline: 5 epochs fp32")


def test_parse_configs() -> None:
    throughput = load("throughput")
    assert throughput.parse_configs("128:128,224", 64) == [(128, 128), (224, 64)]


def test_fastai_compare_defaults_and_report() -> None:
    compare = load("fastai_compare")
    args = compare.parse_args(["--per-class", "40", "--seeds", "0,1"])
    assert args.valid_per_class == 20 and args.model == "xresnet18" and args.size == 64 and args.presize == 131
    runs = [
        compare.RunResult(tool, seed, [2.0 * k, 2.0 * k], [1.0 * k, 1.0 * k], 640, acc, 0.1, 1000.0, 0.5)
        for seed in (0, 1)
        for tool, k, acc in (("fastai", 2, 0.5), ("sota_ablate", 1, 0.52))
    ]
    assert runs[1].images_per_s == 640.0 and runs[0].images_per_s == 320.0
    extra = {"n_train": 400, "n_valid": 200, "subset": "40 + 20 per class", "fastai": "2.8.12"}
    table = compare.report(args, torch.device("cpu"), runs, {**extra, "cache_s": 1.0, "cache_hit": True})
    assert "| fastai 2.8.12 | 4.00 ± 0.00 | 320 ± 0 | 32% |" in table
    assert "| sota_ablate | 2.00 ± 0.00 | 640 ± 0 | 64% | 0.520, 0.520 |" in table
    assert "ratio sota_ablate / fastai: **0.50**" in table


def test_fastai_is_never_imported_by_the_package() -> None:
    """fastai is a benchmark/test reference only: importing every module of sota_ablate must not pull it in."""
    import subprocess

    code = (
        "import pkgutil, importlib, sys, sota_ablate\n"
        "for m in pkgutil.walk_packages(sota_ablate.__path__, 'sota_ablate.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print('fastai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
