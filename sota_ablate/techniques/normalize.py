"""normalize: per-channel normalisation with ImageNet statistics (fastai ``Normalize.from_stats(*imagenet_stats)``).

Applied last in the batch pipeline, after augmentation and lighting, on training, validation and TTA batches
alike. Without it the model sees inputs in [0, 1] (the chapter's baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from sota_ablate import schema
from sota_ablate.config import ConfigError
from sota_ablate.data import IMAGENET_MEAN, IMAGENET_STD, normalize
from sota_ablate.report import illustrations
from sota_ablate.techniques.base import TECHNIQUES, Priority, ReportSection, SectionContext, Technique
from sota_ablate.train.state import TrainState


def report_section(ctx: SectionContext) -> None:
    """The report's illustration: one real training batch's per-channel mean and std before and after normalising
    (at the cell's size and batch size), as a table and a figure next to the numbers the book printed."""
    if ctx.dataset is None:
        ctx.note(f"Batch statistics figure skipped: {ctx.dataset_note}.")
        return
    size = int(ctx.param(schema.train_param("size"), 224) or 224)
    batch_size = int(ctx.param(schema.train_param("batch_size"), 64) or 64)
    presize = int(ctx.data.parent_param(schema.data_param("presize"), 460) or 460)
    try:
        batch = illustrations.real_batch(ctx.dataset, batch_size=batch_size, size=size, presize=presize)
        stats = illustrations.batch_stats(batch)
    except Exception as err:
        ctx.note(f"batch statistics not computed: {type(err).__name__}: {err}")
        return
    ctx.illustration(illustrations.batch_stats_markdown(stats))
    ctx.figure(
        "normalization_batch_stats.png",
        lambda: illustrations.normalization_figure(stats),
        "per-channel batch mean and std before and after normalization",
        "One real batch: per-channel mean and std before (grey) and after (blue) normalisation; black ticks: "
        "the book's printed values.",
    )


@TECHNIQUES.register("normalize")
@dataclass(frozen=True)
class Normalize(Technique):
    """x <- (x - mean) / std per channel, after augmentation."""

    mean: tuple[float, float, float] = tuple(IMAGENET_MEAN)  # type: ignore[assignment]
    std: tuple[float, float, float] = tuple(IMAGENET_STD)  # type: ignore[assignment]

    name = "normalize"
    summary = "normalise inputs with ImageNet mean/std after augmentation"
    source = "fastbook ch. 7 'Normalization'; fastai Normalize.from_stats(*imagenet_stats)"
    priority = Priority.NORMALIZE
    order = 20
    colour = "#1f77b4"
    claims = frozenset({"input_scaling"})
    report = ReportSection(
        title="Normalization",
        intro=(
            "Normalising each channel to mean 0 and std 1 (with the ImageNet statistics) matters most for "
            "pretrained models; trained from scratch, the book saw no gain (0.8252 without, 0.8245 with)."
        ),
        chapter_step=1,
        build=report_section,
    )

    def validate(self) -> None:
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"normalize.std = {self.std!r}: every std must be positive.")

    def setup(self, s: TrainState) -> None:
        s.normalize = partial(normalize, mean=self.mean, std=self.std)
