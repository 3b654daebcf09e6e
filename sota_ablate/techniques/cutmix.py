"""cutmix: CutMix (Yun et al. 2019, arXiv:1905.04899), as fastai's ``CutMix`` callback does it.

Every training batch, after augmentation and normalisation (fastai ``CutMix.before_batch``, in its order of
draws):

1. ONE lambda for the whole batch, lambda ~ Beta(alpha, alpha) (fastai ``self.distrib.sample((1,))``; mixup
   draws one per sample, CutMix does not), with no ``max(lambda, 1 - lambda)``;
2. a random in-batch permutation (a sample may pair with itself);
3. fastai's ``rand_bbox``: cut = sqrt(1 - lambda), ``w = round(W * cut)``, ``h = round(H * cut)``, a centre
   uniform over the pixels, the box ``[cx - w // 2, cx + w // 2) x [cy - h // 2, cy + h // 2)`` clipped to the
   image (so its width is ``2 * (w // 2)`` before clipping, as in fastai and the paper's code);
4. the box is pasted from the permuted images, the same box for the whole batch;
5. lambda <- 1 - box_area / (W * H), the share of each image actually kept, and the targets are mixed as in
   mixup: y <- lambda * y + (1 - lambda) * y[perm].

fastai mixes the two losses with the corrected lambda; we mix the (one-hot) targets, which is identical for
cross-entropy because the loss is linear in the target (also with label smoothing). Validation and TTA batches
are never cut (``before_batch`` runs on training batches only).

Determinism and syncs: lambda and the box centre come from the global CPU torch RNG (seeded per run; the box
must be known on the host to slice the batch, and CPU scalars cost no device sync), the permutation from the
batch's device RNG (as mixup; on the CPU this is exactly fastai's ``torch.randperm(bs)``), so a seed fixes
every draw and no batch waits for the device. The per-epoch metric ``cutmix_lambda`` is the mean corrected
lambda over the epoch's batches: host floats, summed without touching the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sota_ablate.config import ConfigError
from sota_ablate.report.illustrations import target_bars
from sota_ablate.techniques.base import TECHNIQUES, Priority, ReportSection, SectionContext, Technique
from sota_ablate.train.state import TrainState

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
FIGURE = "cutmix_example.png"
COLOUR = "#e377c2"
DEFAULT_ALPHA = 1.0  # fastai CutMix(alpha=1.)
FIGURE_LAMBDA = 0.7  # the example figure's lambda: 70 % of the first image kept


class Box(NamedTuple):
    """A pixel box ``[x1, x2) x [y1, y2)`` (columns x, rows y)."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def area(self) -> int:
        return (self.x2 - self.x1) * (self.y2 - self.y1)


def cutmix_box(width: int, height: int, lam: float | torch.Tensor, cx: int, cy: int) -> Box:
    """fastai's ``rand_bbox`` for a given centre: sides ``round(side * sqrt(1 - lam))``, halved (floor) either
    side of ``(cx, cy)``, clipped to the image. The rounding is done in float32 like fastai's tensors."""
    cut = torch.sqrt(1.0 - torch.as_tensor(lam, dtype=torch.float32))
    half_w = int(torch.round(width * cut)) // 2
    half_h = int(torch.round(height * cut)) // 2
    return Box(
        x1=min(max(cx - half_w, 0), width),
        y1=min(max(cy - half_h, 0), height),
        x2=min(max(cx + half_w, 0), width),
        y2=min(max(cy + half_h, 0), height),
    )


def rand_box(width: int, height: int, lam: float | torch.Tensor, generator: torch.Generator | None = None) -> Box:
    """fastai's ``rand_bbox``: the centre uniform over the pixels (x first, then y, from the CPU RNG)."""
    cx = int(torch.randint(0, width, (1,), generator=generator))
    cy = int(torch.randint(0, height, (1,), generator=generator))
    return cutmix_box(width, height, lam, cx, cy)


def kept_share(box: Box, width: int, height: int) -> float:
    """The corrected lambda: the share of each image outside the pasted box."""
    return 1.0 - box.area / float(width * height)


def paste_box(
    x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, box: Box
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste ``box`` of ``x[perm]`` into a copy of ``x``; mix the soft targets ``y`` [B, C] by the kept share.

    Returns:
        (cut images, mixed targets, corrected lambda).
    """
    width, height = x.size(-1), x.size(-2)
    lam = kept_share(box, width, height)
    out = x.clone()
    if box.area > 0:
        out[..., box.y1 : box.y2, box.x1 : box.x2] = x[perm, ..., box.y1 : box.y2, box.x1 : box.x2]
    return out, torch.lerp(y[perm], y, lam), lam


def cut_batch(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix a batch in fastai's order of draws: lambda (CPU), permutation (``x``'s device), box centre (CPU).

    Args:
        x: images [B, C, H, W].
        y: soft targets [B, n_classes].
        alpha: Beta(alpha, alpha) for the batch's lambda.

    Returns:
        (cut images, mixed targets, corrected lambda: the share of each image kept).
    """
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    lam = beta.sample((1,))
    perm = torch.randperm(x.size(0), device=x.device)
    box = rand_box(x.size(-1), x.size(-2), lam)
    return paste_box(x, y, perm, box)


# ---------------------------------------------------------------------------------------------------------------
# Report section (no report imports: the report imports the technique registry)


@dataclass(frozen=True)
class CutMixExample:
    """Two real training images of two classes and the box of the example figure."""

    first: Path
    second: Path
    first_class: str
    second_class: str
    classes: tuple[str, ...]
    lam: float = FIGURE_LAMBDA
    side: int = 256

    @property
    def box(self) -> Box:
        """The box of area 1 - lam, centred (the figure shows the box, not a random draw)."""
        return cutmix_box(self.side, self.side, self.lam, self.side // 2, self.side // 2)

    @property
    def kept(self) -> float:
        return kept_share(self.box, self.side, self.side)

    @property
    def target(self) -> list[float]:
        out = [0.0] * len(self.classes)
        out[self.classes.index(self.first_class)] += self.kept
        out[self.classes.index(self.second_class)] += 1 - self.kept
        return out


def cutmix_example(folder: Path) -> tuple[CutMixExample | None, str]:
    """The first image (by file name) of the first two classes with images, or None and why not."""
    train = folder / "train"
    if not train.is_dir():
        return None, f"{folder} has no train/ folder"
    found: list[tuple[str, Path]] = []
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    for c in classes:
        files = sorted(p for p in (train / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            found.append((c, files[0]))
        if len(found) == 2:
            break
    if len(found) < 2:
        return None, "the dataset has fewer than two classes with training images"
    (a, path_a), (b, path_b) = found
    return CutMixExample(path_a, path_b, a, b, tuple(classes)), ""


def cutmix_figure(example: CutMixExample, names: Mapping[str, str]) -> Any:
    """Both images, the first with the second's box pasted (outlined), and the mixed target vector."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle
    from PIL import Image

    def load(path: Path) -> Any:
        with Image.open(path) as im:
            size = (example.side, example.side)
            return np.asarray(im.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32) / 255.0

    a, b = load(example.first), load(example.second)
    box = example.box
    cut = a.copy()
    cut[box.y1 : box.y2, box.x1 : box.x2] = b[box.y1 : box.y2, box.x1 : box.x2]
    label_a = names.get(example.first_class, example.first_class)
    label_b = names.get(example.second_class, example.second_class)
    lam = example.kept
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1, 1, 1, 1.5]})
    for ax, img, title in (
        (axes[0], a, label_a),
        (axes[1], b, label_b),
        (axes[2], cut, f"{label_a} with a box of {label_b}: λ = {lam:.2f} kept"),
    ):
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    axes[2].add_patch(
        Rectangle((box.x1 - 0.5, box.y1 - 0.5), box.x2 - box.x1, box.y2 - box.y1, fill=False, ec="white", lw=1.5)
    )
    labels = [names.get(c, c) for c in example.classes]
    target_bars(axes[3], example.target, labels, COLOUR, "mixed target: the share of each image's pixels")
    fig.tight_layout()
    return fig


def _section(ctx: SectionContext) -> None:
    """The example figure (when the dataset is here) and the cell's mean kept share in its last epoch."""
    if ctx.dataset is None:
        ctx.note("CutMix figure skipped: " + ctx.dataset_note)
    else:
        example, why = cutmix_example(ctx.dataset)
        if example is None:
            ctx.note("CutMix figure skipped: " + why)
        else:
            names = dict(ctx.class_names)
            a = names.get(example.first_class, example.first_class)
            b = names.get(example.second_class, example.second_class)
            ctx.figure(
                FIGURE,
                lambda: cutmix_figure(example, names),
                alt=f"CutMix example: a box of {b} pasted into {a}, and the mixed target",
                caption=(
                    f"CutMix on two real training images ({ctx.dataset_note}): a centred box of {b} covering "
                    f"{1 - example.kept:.0%} of {a} (λ = {example.lam:g} gives sides √(1 - λ) of the image's), "
                    f"and the target {example.kept:.2f} × {a} + {1 - example.kept:.2f} × {b}. In training the "
                    "box's centre is random and the box is clipped to the image."
                ),
            )
    values = ctx.values("metrics.cutmix_lambda")
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    if finite:
        alpha = ctx.param("tech.cutmix.alpha", DEFAULT_ALPHA)
        mean = sum(finite) / len(finite)
        ctx.sentence(
            f"In the last epoch the mean kept share λ was {mean:.3f} (over {len(finite)} seed"
            f"{'s' if len(finite) != 1 else ''}). λ ~ Beta({alpha:g}, {alpha:g}) has mean 0.5, but boxes clipped "
            f"at the border paste less: fastai's procedure keeps {expected_kept_share(alpha):.2f} of each image on "
            "average (a Monte Carlo estimate)."
        )


def expected_kept_share(alpha: float, side: int = 224, n: int = 20000, seed: int = 0) -> float:
    """The mean corrected lambda of fastai's CutMix on ``side`` x ``side`` images (Monte Carlo, numpy's RNG: the
    torch RNG is left alone). About 0.68 for alpha = 1 at any usual size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lam = rng.beta(alpha, alpha, n)
    half = np.round(side * np.sqrt(1.0 - lam)).astype(np.int64) // 2  # numpy and torch both round half to even
    centres = rng.integers(0, side, (2, n))  # x and y
    lo, hi = np.clip(centres - half, 0, side), np.clip(centres + half, 0, side)
    return float(np.mean(1.0 - np.prod(hi - lo, axis=0) / side**2))


@dataclass
class LambdaMean:
    """The running mean of the corrected lambdas of one epoch (host floats: no device sync)."""

    total: float = 0.0
    count: int = 0

    def add(self, lam: float) -> None:
        self.total += lam
        self.count += 1

    def pop(self) -> float | None:
        """The mean since the last ``pop`` (None without batches), and reset."""
        mean = self.total / self.count if self.count else None
        self.total, self.count = 0.0, 0
        return mean


@TECHNIQUES.register("cutmix")
@dataclass(frozen=True)
class CutMix(Technique):
    """Paste a random box of a shuffled partner into each training image; mix the labels by the box's area."""

    alpha: float = DEFAULT_ALPHA

    name = "cutmix"
    summary = "paste a box of a shuffled partner image, labels mixed by area; one lambda ~ Beta(1, 1) per batch"
    source = "Yun et al., CutMix (arXiv:1905.04899); fastai CutMix"
    priority = Priority.AUGMENT
    order = 55
    colour = COLOUR
    claims = frozenset({"batch"})
    epoch_metric_keys = ("cutmix_lambda",)
    report = ReportSection(
        title="CutMix (beyond the chapter)",
        intro=(
            "Cut a box out of each training image and paste in the same box of another image of the batch; the "
            "labels are mixed by area (Yun et al. 2019, fastai `CutMix()`): one λ ~ Beta(1, 1) per batch, a box "
            "of area 1 - λ at a uniformly random centre, clipped to the image, then λ = the share of the image "
            "actually kept. The chapter does not use it; like mixup it replaces the training batch, so the two "
            "never share a cell. Each epoch logs the mean kept share `cutmix_lambda`."
        ),
        chapter_step=None,
        build=_section,
    )

    def validate(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(f"cutmix.alpha = {self.alpha!r} is out of range: it must be positive.")

    def setup(self, s: TrainState) -> None:
        object.__setattr__(self, "_lambdas", LambdaMean())  # frozen hyperparameters, mutable running mean

    @property
    def lambdas(self) -> LambdaMean:
        """This instance's running mean of the epoch's corrected lambdas (created on first use)."""
        meter = self.__dict__.get("_lambdas")
        if meter is None:
            meter = LambdaMean()
            object.__setattr__(self, "_lambdas", meter)
        return meter

    def before_batch(self, s: TrainState) -> None:
        assert s.x is not None and s.y is not None
        s.x, s.y, lam = cut_batch(s.x, s.y, self.alpha)
        self.lambdas.add(lam)

    def epoch_metrics(self, s: TrainState) -> dict[str, float]:
        mean = self.lambdas.pop()
        return {} if mean is None else {"cutmix_lambda": mean}
