"""The chapter's illustrative figures, remade from real data (fastbook chapter 7).

- Normalization: the per-channel mean and std of one real training batch (the training pipeline's
  augmentation, ``train_transform``) before and after ``normalize`` with the ImageNet statistics, next to the
  numbers the book printed (``x.mean(dim=[0,2,3]), x.std(dim=[0,2,3])``).
- Mixup: the book's church + gas pump blend, ``0.3 * church + 0.7 * gas_pump``, from the first image (sorted
  by file name) of each class's training folder resized to 256x256, and the mixed target vector.
- Label smoothing: the smoothed target vector of 10 classes, ``(1 - eps) * one_hot + eps / N`` = 0.01 ... 0.91.

The image functions need the dataset folder (``train/<class>/*``); ``find_dataset`` locates it. The techniques'
report sections (``ReportSection.build``) call these; this module imports no report module that knows about
techniques.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sota_ablate.data import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, normalize, train_transform
from sota_ablate.data.names import class_names
from sota_ablate.report.canvas import pyplot
from sota_ablate.report.formatting import pipe_table

CHURCH, GAS_PUMP = "n03028079", "n03425413"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# fastbook ch. 7, printed for one batch of 64 at 224 px
BOOK_STATS = {
    "before": ((0.4842, 0.4711, 0.4511), (0.2873, 0.2893, 0.3110)),
    "after": ((-0.0787, 0.0525, 0.2136), (1.2330, 1.2112, 1.3031)),
}


def smoothed_target(n_classes: int, eps: float, index: int) -> list[float]:
    """Label smoothing's target: ``1 - eps + eps / n`` for the true class, ``eps / n`` elsewhere."""
    return [(1 - eps) * (i == index) + eps / n_classes for i in range(n_classes)]


def mixed_target(n_classes: int, first: int, second: int, weight_first: float) -> list[float]:
    """Mixup's target for ``weight_first * first + (1 - weight_first) * second``."""
    target = [0.0] * n_classes
    target[first] += weight_first
    target[second] += 1 - weight_first
    return target


def find_dataset(data_path: str | Path | None, recorded: Mapping[str, Any]) -> tuple[Path | None, str]:
    """The folder with ``train/<class>/*`` for the illustrative figures, and how it was found.

    Args:
        data_path: ``--data``; wins when given.
        recorded: the grid run's params (``data.source``, ``data.path``, ``data.variant``).

    Returns:
        (folder or None, a sentence saying where it came from or why there is none).
    """
    if data_path:
        folder = Path(data_path).expanduser()
        if (folder / "train").is_dir():
            return folder, f"images from `--data {data_path}`"
        return None, f"`--data {data_path}` has no `train/` folder"
    path = recorded.get("data.path")
    if not path:
        return None, "the grid run recorded no dataset folder (pass `--data PATH`)"
    folder = Path(str(path)).expanduser()
    candidates = [folder]
    if recorded.get("data.source") == "imagenette":  # a download root holding imagenette2*/
        variant = recorded.get("data.variant")
        name = "imagenette2" if variant in (None, "full") else f"imagenette2-{str(variant).removesuffix('px')}"
        candidates = [folder / name, *sorted(folder.glob("imagenette2*")), folder]
    for candidate in candidates:
        if (candidate / "train").is_dir():
            return candidate, f"images from the grid run's dataset `{candidate}`"
    return None, f"the grid run's dataset folder `{path}` is not on this machine (pass `--data PATH`)"


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------------------------
# Normalization


@dataclass(frozen=True)
class BatchStats:
    """Per-channel mean and std of one batch, before and after normalisation."""

    n_images: int
    size: int
    mean_before: tuple[float, ...]
    std_before: tuple[float, ...]
    mean_after: tuple[float, ...]
    std_after: tuple[float, ...]


def real_batch(folder: Path, batch_size: int = 64, size: int = 224, presize: int = 460, seed: int = 0) -> Any:
    """One training batch as the training pipeline makes it: ``float32 [B, 3, size, size]`` in [0, 1].

    A seeded random choice of training images (like one shuffled batch), each resized so its short side is
    ``presize`` (fastai's ``Resize(460)`` pre-size), then the batched training augmentation at ``size``.
    """
    import numpy as np
    import torch
    from PIL import Image

    files = [f for c in class_folders(folder) for f in image_files(folder / "train" / c)]
    if not files:
        raise FileNotFoundError(f"no images under {folder / 'train'}")
    rng = random.Random(seed)
    chosen = rng.sample(files, min(batch_size, len(files)))
    arrays = []
    for path in chosen:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = presize / min(w, h)
            resized = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            arrays.append(np.array(resized, dtype=np.uint8))
    side = max(max(a.shape[0], a.shape[1]) for a in arrays)
    canvas = torch.zeros(len(arrays), 3, side, side, dtype=torch.uint8)
    sizes = torch.zeros(len(arrays), 2, dtype=torch.int32)
    for i, a in enumerate(arrays):
        canvas[i, :, : a.shape[0], : a.shape[1]] = torch.from_numpy(a).permute(2, 0, 1)
        sizes[i] = torch.tensor(a.shape[:2])
    torch.manual_seed(seed)
    return train_transform(canvas, sizes, size, AugmentConfig(), presize=presize)


def _rounded(values: Any) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def batch_stats(x: Any) -> BatchStats:
    """Mean and std over (batch, height, width) per channel, before and after ``normalize`` (ImageNet stats)."""
    y = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    return BatchStats(
        n_images=int(x.shape[0]),
        size=int(x.shape[-1]),
        mean_before=_rounded(x.mean(dim=(0, 2, 3))),
        std_before=_rounded(x.std(dim=(0, 2, 3))),
        mean_after=_rounded(y.mean(dim=(0, 2, 3))),
        std_after=_rounded(y.std(dim=(0, 2, 3))),
    )


def _fmt4(values: Any) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def batch_stats_markdown(s: BatchStats) -> str:
    """The batch statistics next to the book's, as a paragraph with a table."""
    book_b, book_a = BOOK_STATS["before"], BOOK_STATS["after"]
    return (
        f"Per-channel statistics of one real training batch ({s.n_images} images at {s.size} px, the training "
        "augmentation), before and after `normalize` with the ImageNet mean and std:\n\n"
        + pipe_table(
            ["", "mean (R, G, B)", "std (R, G, B)", "book: mean", "book: std"],
            [
                ["before", _fmt4(s.mean_before), _fmt4(s.std_before), _fmt4(book_b[0]), _fmt4(book_b[1])],
                ["after", _fmt4(s.mean_after), _fmt4(s.std_after), _fmt4(book_a[0]), _fmt4(book_a[1])],
            ],
        )
    )


def normalization_figure(s: BatchStats) -> Any:
    """Grouped bars: per-channel mean and std, before and after normalisation; the book's values as markers."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    channels = ["R", "G", "B"]
    width = 0.38
    panels = (
        ("mean", s.mean_before, s.mean_after, BOOK_STATS["before"][0], BOOK_STATS["after"][0]),
        ("std", s.std_before, s.std_after, BOOK_STATS["before"][1], BOOK_STATS["after"][1]),
    )
    for ax, (what, before, after, book_before, book_after) in zip(axes, panels, strict=True):
        xs = range(3)
        ax.bar([x - width / 2 for x in xs], before, width, color="#bbbbbb", label="before normalize")
        ax.bar([x + width / 2 for x in xs], after, width, color="#1f77b4", label="after normalize")
        ax.scatter([x - width / 2 for x in xs], book_before, marker="_", s=300, color="black", zorder=3)
        ax.scatter([x + width / 2 for x in xs], book_after, marker="_", s=300, color="black", zorder=3,
                   label="printed in the book")  # fmt: skip
        for x, v in zip(xs, before, strict=True):
            ax.text(x - width / 2, v, f"{v:.3f}", ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
        for x, v in zip(xs, after, strict=True):
            ax.text(x + width / 2, v, f"{v:.3f}", ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
        ax.axhline(0 if what == "mean" else 1, color="black", lw=0.8, ls=":")
        ax.set_xticks(list(xs), channels)
        ax.set_title(f"per-channel {what}")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"one real training batch ({s.n_images} images at {s.size} px): target mean 0, std 1", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Mixup


@dataclass(frozen=True)
class MixupExample:
    first: Path
    second: Path
    first_class: str
    second_class: str
    classes: tuple[str, ...]
    weight_first: float = 0.3

    @property
    def target(self) -> list[float]:
        return mixed_target(
            len(self.classes),
            self.classes.index(self.first_class),
            self.classes.index(self.second_class),
            self.weight_first,
        )


def mixup_example(folder: Path) -> tuple[MixupExample | None, str]:
    """The book's pair (church, gas pump), or the first two classes when the dataset lacks them."""
    classes = class_folders(folder)
    if CHURCH in classes and GAS_PUMP in classes:
        pair, note = (CHURCH, GAS_PUMP), ""
    elif len(classes) >= 2:
        pair = (classes[0], classes[1])
        names = class_names(pair)
        note = f"this dataset has no church/gas pump classes: {names[pair[0]]} and {names[pair[1]]} stand in"
    else:
        return None, "the dataset has fewer than two classes"
    files = [image_files(folder / "train" / c) for c in pair]
    if not all(files):
        return None, "a class folder has no images"
    return MixupExample(files[0][0], files[1][0], pair[0], pair[1], tuple(classes)), note


def mixup_figure(example: MixupExample, names: Mapping[str, str]) -> Any:
    """Three images (first, second, 0.3/0.7 blend) and the mixed target vector, as in the book."""
    import numpy as np
    from PIL import Image

    plt = pyplot()

    def load(path: Path) -> Any:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((256, 256), Image.BILINEAR), dtype=np.float32) / 255.0

    a, b = load(example.first), load(example.second)
    w = example.weight_first
    blend = w * a + (1 - w) * b
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1, 1, 1, 1.5]})
    label_a = names.get(example.first_class, example.first_class)
    label_b = names.get(example.second_class, example.second_class)
    for ax, img, title in (
        (axes[0], a, label_a),
        (axes[1], b, label_b),
        (axes[2], blend, f"{w:g} × {label_a} + {1 - w:g} × {label_b}"),
    ):
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    target_bars(axes[3], example.target, [names.get(c, c) for c in example.classes], "#d62728", "mixed target")
    fig.tight_layout()
    return fig


def target_bars(ax: Any, target: Sequence[float], labels: Sequence[str], colour: str, title: str) -> None:
    """A mixed target vector as bars: the classes with weight in ``colour``, their weights written above."""
    ax.bar(range(len(target)), target, color=[colour if v > 0 else "#cccccc" for v in target])
    for i, v in enumerate(target):
        if v > 0:
            ax.text(i, v + 0.02, f"{v:.2g}", ha="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_title(title, fontsize=9)


# ---------------------------------------------------------------------------------------------------------------
# Label smoothing


def label_smoothing_figure(eps: float = 0.1, names: Sequence[str] | None = None, index: int = 4) -> Any:
    """One-hot vs smoothed target for 10 classes (0.01 everywhere, 0.91 for the true class at eps 0.1)."""
    plt = pyplot()
    n = len(names) if names else 10
    labels = list(names) if names else [f"class {i}" for i in range(n)]
    one_hot = [float(i == index) for i in range(n)]
    smooth = smoothed_target(n, eps, index)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.4
    ax.bar([i - width / 2 for i in range(n)], one_hot, width, color="#cccccc", label="one-hot target")
    ax.bar([i + width / 2 for i in range(n)], smooth, width, color="#9467bd", label=f"smoothed, eps = {eps:g}")
    for i, v in enumerate(smooth):
        ax.text(i + width / 2, v + 0.015, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("target probability")
    ax.set_title(f"label smoothing: (1 - eps) × one-hot + eps / {n}; true class: {labels[index]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
