"""progressive: progressive resizing (fastbook ch. 7; Howard, fast.ai DAWNBench 2018).

Train ``initial_epochs`` at ``initial_size`` (batch ``initial_batch_size``) with fit_one_cycle at the recipe's
lr, then fastai's ``fine_tune(epochs, fine_tune_lr)`` at the recipe's size and batch size, with the model carried
over and the SAME train/valid split. fine_tune on a single parameter group freezes nothing (see
fastai-semantics §3): it resets the optimizer state, runs ``freeze_epochs`` of one-cycle at lr ``fine_tune_lr``
(div 25, pct_start 0.99), resets the state again, and runs ``epochs`` at ``fine_tune_lr / 2`` (div 5,
pct_start 0.3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sota_ablate.config import ConfigError, TrainConfig, scale_epoch_count
from sota_ablate.report.palette import cell_colours
from sota_ablate.report.result_plots import plot_progressive
from sota_ablate.techniques.base import TECHNIQUES, Priority, ReportSection, SectionContext, Technique
from sota_ablate.train.state import Stage


def report_section(ctx: SectionContext) -> None:
    """The report's figure: accuracy by epoch across the size switch, next to the reference cell."""
    if ctx.data.cell_rows(ctx.cell).empty:
        return
    colours = cell_colours(ctx.data, {name: t.colour for name, t in TECHNIQUES.entries().items()})
    ctx.figure(
        "progressive_resizing.png",
        lambda: plot_progressive(ctx.data, ctx.cell, ctx.reference, colours),
        "accuracy by epoch across the size switch",
        "Validation accuracy by epoch; the dashed line marks the switch to the full size.",
    )


@TECHNIQUES.register("progressive")
@dataclass(frozen=True)
class Progressive(Technique):
    """Small images first, then fine_tune at full size."""

    initial_size: int = 128
    initial_batch_size: int = 128
    initial_epochs: int = 4
    fine_tune_lr: float = 1e-3
    freeze_epochs: int = 1
    fine_tune_div: float = 5.0
    fine_tune_pct_start: float = 0.3

    name = "progressive"
    summary = "train at a small size, then fastai fine_tune at the full size (same split, model carried over)"
    source = "fastbook ch. 7 'Progressive Resizing'; fastai fine_tune; Howard, DAWNBench 2018"
    priority = Priority.SCHEDULE
    order = 30
    colour = "#ff7f0e"
    claims = frozenset({"schedule"})
    report = ReportSection(
        title="Progressive resizing",
        intro=(
            "Train at a small size first (fast epochs), then `fine_tune` at the full size: the size switch is "
            "also a form of augmentation. The book reached 0.8633 this way, its best number without TTA."
        ),
        chapter_step=2,
        build=report_section,
        timing=True,
    )

    def validate(self) -> None:
        for key, value, low in [
            ("initial_size", self.initial_size, 8),
            ("initial_batch_size", self.initial_batch_size, 1),
            ("initial_epochs", self.initial_epochs, 1),
            ("freeze_epochs", self.freeze_epochs, 0),
        ]:
            if value < low:
                raise ConfigError(f"progressive.{key} = {value!r} is out of range: it must be >= {low}.")
        if self.fine_tune_lr <= 0:
            raise ConfigError(f"progressive.fine_tune_lr = {self.fine_tune_lr!r} must be positive.")
        if not 0 < self.fine_tune_pct_start < 1:
            raise ConfigError(f"progressive.fine_tune_pct_start = {self.fine_tune_pct_start!r}: use (0, 1).")

    def scale_epochs(self, scale: float) -> Progressive:
        return dataclasses.replace(self, initial_epochs=scale_epoch_count(self.initial_epochs, scale))

    def epoch_parts(self, epochs: int) -> tuple[int, ...]:
        """(small, frozen, fine-tune) epochs."""
        return (self.initial_epochs, self.freeze_epochs, epochs)

    def with_epoch_parts(self, parts: tuple[int, ...]) -> tuple[Progressive, int]:
        small, frozen, fine_tune = parts
        return dataclasses.replace(self, initial_epochs=small, freeze_epochs=frozen), fine_tune

    def plan(self, stages: list[Stage], cfg: TrainConfig) -> list[Stage]:
        if self.initial_size >= cfg.size:
            raise ConfigError(
                f"progressive.initial_size = {self.initial_size} is not smaller than the recipe's size = {cfg.size}: "
                "progressive resizing starts small; lower progressive.initial_size (e.g. "
                f"progressive.initial_size={max(8, cfg.size * 5 // 8)}) or raise size."
            )
        small = Stage(
            name="progressive_small",
            epochs=self.initial_epochs,
            size=self.initial_size,
            batch_size=self.initial_batch_size,
            lr_max=cfg.lr,
            div=cfg.div,
            div_final=cfg.div_final,
            pct_start=cfg.pct_start,
        )
        plan = [small]
        if self.freeze_epochs:
            plan.append(
                Stage(
                    name="fine_tune_frozen",
                    epochs=self.freeze_epochs,
                    size=cfg.size,
                    batch_size=cfg.batch_size,
                    lr_max=self.fine_tune_lr,
                    div=25.0,
                    div_final=cfg.div_final,
                    pct_start=0.99,
                    reset_optimizer=True,
                )
            )
        plan.append(
            Stage(
                name="fine_tune",
                epochs=cfg.epochs,
                size=cfg.size,
                batch_size=cfg.batch_size,
                lr_max=self.fine_tune_lr / 2,
                div=self.fine_tune_div,
                div_final=cfg.div_final,
                pct_start=self.fine_tune_pct_start,
                reset_optimizer=True,
            )
        )
        return plan
