"""label_smoothing: Rethinking the Inception Architecture (Szegedy et al. 2016, arXiv:1512.00567).

fastai's ``LabelSmoothingCrossEntropy(eps=0.1)``: loss = (eps/C) sum_k -log p_k + (1 - eps) NLL, i.e. cross-entropy
against targets (1 - eps) one_hot + eps / C (0.91 / 0.01 for 10 classes), equal to
``F.cross_entropy(..., label_smoothing=eps)``. It is the loss for training AND validation, as in fastai, so
valid_loss is not comparable with cells without it (accuracy is).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor

from sota_ablate import schema
from sota_ablate.config import ConfigError
from sota_ablate.report import illustrations, predictions, stats
from sota_ablate.report.formatting import format_points
from sota_ablate.report.result_plots import plot_reliability
from sota_ablate.techniques.base import TECHNIQUES, Priority, ReportSection, SectionContext, Technique
from sota_ablate.train.state import TrainState, soft_cross_entropy


def smooth_targets(targets: Tensor, eps: float) -> Tensor:
    """(1 - eps) * targets + eps / C."""
    return targets * (1 - eps) + eps / targets.size(-1)


def label_smoothing_cross_entropy(logits: Tensor, targets: Tensor, eps: float) -> Tensor:
    return soft_cross_entropy(logits, smooth_targets(targets, eps))


def report_section(ctx: SectionContext) -> None:
    """The report's figure: one image's one-hot and smoothed targets over the book's 10 classes (0.01 ... 0.91 at
    the cell's eps), the true class a church as in the book."""
    eps = float(ctx.param(schema.tech_param(LabelSmoothing.name, "eps"), LabelSmoothing.eps))
    classes = sorted(ctx.class_names)
    labels = [ctx.class_names[c] for c in classes]
    index = classes.index(illustrations.CHURCH)
    ctx.figure(
        "label_smoothing_target.png",
        lambda: illustrations.label_smoothing_figure(eps, labels, index),
        "one-hot vs smoothed target vector",
        f"The target for one image: one-hot vs smoothed with ε = {eps:g} over {len(labels)} classes.",
    )
    calibration_section(ctx)


def calibration_section(ctx: SectionContext) -> None:
    """The chapter's claim that label smoothing makes the model less over-confident, measured: expected calibration
    error (15 bins) with vs without, from the per-image predictions, with bootstrap intervals, and the reliability
    diagram of both cells."""
    if ctx.reference is None:
        return
    with_cell = ctx.data.cell_predictions(ctx.cell)
    without = ctx.data.cell_predictions(ctx.reference)
    result = predictions.compare_calibration(with_cell, without)
    if result is None:
        ctx.note(f"Calibration not measured: {predictions.NO_PREDICTIONS}.")
        return

    def estimate(e: stats.Estimate) -> str:
        interval = f" [{format_points(e.ci_low)}, {format_points(e.ci_high)}]" if e.has_ci else ""
        return f"{format_points(e.value)}{interval}"

    d = result.difference
    if d.has_ci and (d.ci_low > 0 or d.ci_high < 0):
        finding = "better calibrated" if d.ci_high < 0 else "worse calibrated"
        finding = f"the interval of the difference excludes zero: `{ctx.cell}` is {finding}"
    else:
        finding = "the interval of the difference includes zero: no detectable change in calibration"
    ctx.sentence(
        f"Calibration (expected calibration error, 15 equal-width confidence bins, in points, mean over seeds "
        f"{', '.join(map(str, result.seeds))}; 95% bootstrap intervals over validation images): `{ctx.cell}` "
        f"{estimate(result.ece_with)} vs `{ctx.reference}` {estimate(result.ece_without)}, difference "
        f"{estimate(d)}; {finding}."
    )
    curves = [
        (cell, r, colour)
        for cell, preds, colour in ((ctx.cell, with_cell, LabelSmoothing.colour), (ctx.reference, without, "#222222"))
        if (r := predictions.pooled_reliability(preds)) is not None
    ]
    ctx.figure(
        "label_smoothing_reliability.png",
        lambda: plot_reliability(curves, f"reliability: {ctx.cell} vs {ctx.reference} (every seed's images)"),
        "reliability diagram with and without label smoothing",
        "Accuracy against confidence per bin, every seed's validation images together: on the diagonal a model is "
        "as confident as it is right; below it, over-confident. Bottom: images per bin.",
    )


@TECHNIQUES.register("label_smoothing")
@dataclass(frozen=True)
class LabelSmoothing(Technique):
    """Cross-entropy against smoothed targets."""

    eps: float = 0.1

    name = "label_smoothing"
    summary = "cross-entropy against (1 - eps) one-hot + eps / C targets, eps 0.1"
    source = "Szegedy et al., Rethinking the Inception Architecture (arXiv:1512.00567); fastai LabelSmoothingCE"
    priority = Priority.LOSS_TARGETS
    order = 60
    colour = "#9467bd"
    claims = frozenset({"loss"})
    report = ReportSection(
        title="Label smoothing",
        intro=(
            "Train against targets of 1 - ε + ε/N for the true class and ε/N elsewhere (0.91 and 0.01 for ε = 0.1 "
            "and 10 classes) instead of 1 and 0: less over-confident, more robust to mislabelled images. Like "
            "mixup, the book says, it needs longer training to pay off; it does not run it."
        ),
        chapter_step=5,
        build=report_section,
    )

    def validate(self) -> None:
        if not 0 <= self.eps < 1:
            raise ConfigError(f"label_smoothing.eps = {self.eps!r} is out of range: it must be in [0, 1).")

    def setup(self, s: TrainState) -> None:
        s.loss_fn = partial(label_smoothing_cross_entropy, eps=self.eps)
