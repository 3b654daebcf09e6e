"""mixup: Beyond Empirical Risk Minimization (Zhang et al. 2018, arXiv:1710.09412), fastai's ``MixUp``.

Every training batch, after augmentation and normalisation: lambda_i ~ Beta(alpha, alpha) per sample,
lambda_i <- max(lambda_i, 1 - lambda_i) (so the original image dominates), a random in-batch permutation
(a sample may pair with itself), x <- lambda x + (1 - lambda) x[perm]. fastai mixes the per-sample losses;
we mix the (one-hot) targets, which is identical for cross-entropy because the loss is linear in the target
(also with label smoothing). Validation and TTA batches are never mixed. Mixing happens in fp32, before autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sota_ablate.config import ConfigError
from sota_ablate.report import illustrations
from sota_ablate.techniques.base import TECHNIQUES, Priority, ReportSection, SectionContext, Technique
from sota_ablate.train.state import TrainState


def mix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch: returns (mixed images, mixed soft targets). ``y`` are soft targets [B, C]."""
    n = x.size(0)
    beta = torch.distributions.Beta(torch.tensor(alpha, device=x.device), torch.tensor(alpha, device=x.device))
    lam = beta.sample((n,))
    lam = torch.maximum(lam, 1 - lam)
    perm = torch.randperm(n, device=x.device)
    x_mixed = torch.lerp(x[perm], x, lam.view(-1, 1, 1, 1).to(x.dtype))
    y_mixed = torch.lerp(y[perm], y, lam.view(-1, 1).to(y.dtype))
    return x_mixed, y_mixed


def report_section(ctx: SectionContext) -> None:
    """The report's illustration: the book's church + gas pump blend from the dataset's images, and its target."""
    if ctx.dataset is None:
        ctx.note(f"Mixup figure skipped: {ctx.dataset_note}.")
        return
    example, why = illustrations.mixup_example(ctx.dataset)
    if example is None:
        ctx.note(f"Mixup figure skipped: {why}.")
        return
    names = ctx.class_names
    first = names.get(example.first_class, example.first_class)
    second = names.get(example.second_class, example.second_class)
    target = ", ".join(f"{v:g}" for v in example.target)
    ctx.figure(
        "mixup_example.png",
        lambda: illustrations.mixup_figure(example, names),
        f"mixup of {first} and {second}",
        f"{example.weight_first:g} × {first} + {1 - example.weight_first:g} × {second} "
        f"(`{example.first.name}`, `{example.second.name}`), and the mixed target [{target}].",
    )
    if why:
        ctx.note(why)


@TECHNIQUES.register("mixup")
@dataclass(frozen=True)
class Mixup(Technique):
    """Blend each training image with a shuffled partner; lambda >= 0.5 keeps the original dominant."""

    alpha: float = 0.4

    name = "mixup"
    summary = "blend pairs of training images and their labels, lambda ~ Beta(0.4, 0.4), max(l, 1-l)"
    source = "Zhang et al., mixup: Beyond Empirical Risk Minimization (arXiv:1710.09412); fastai MixUp"
    priority = Priority.AUGMENT
    order = 50
    colour = "#d62728"
    claims = frozenset({"batch"})
    report = ReportSection(
        title="Mixup",
        intro=(
            "Blend each training image with another one, and their one-hot labels with the same weights (λ ~ "
            "Beta(0.4, 0.4), max(λ, 1 - λ)). The book warns that it needs many more epochs to pay off, and does "
            "not run it."
        ),
        chapter_step=4,
        build=report_section,
    )

    def validate(self) -> None:
        if self.alpha <= 0:
            raise ConfigError(f"mixup.alpha = {self.alpha!r} is out of range: it must be positive.")

    def before_batch(self, s: TrainState) -> None:
        assert s.x is not None and s.y is not None
        s.x, s.y = mix_batch(s.x, s.y, self.alpha)
