"""tta: test-time augmentation (fastbook ch. 7; fastai ``Learner.tta(n=4, beta=0.25)``).

After training: ``n`` passes over the validation set with the TRAINING augmentation (random square crop,
flip/rotate/zoom/warp, random-resized crop, lighting, then normalisation if on; never mixup), softmax
probabilities averaged, then one plain centre-crop pass; the prediction is ``(1 - beta) * mean_aug + beta *
plain`` (0.75 / 0.25). Logged as ``tta_accuracy`` next to the plain ``accuracy``, with its inference time.
"""

from __future__ import annotations

from dataclasses import dataclass

from sota_ablate.config import ConfigError
from sota_ablate.report import keys, stats
from sota_ablate.report.prose import evaluation_sentence
from sota_ablate.report.result_plots import EvaluationBars, plot_evaluation, validation_pass_times
from sota_ablate.techniques.base import TECHNIQUES, Priority, ReportSection, SectionContext, Technique
from sota_ablate.train.evaluate import evaluate_tta
from sota_ablate.train.state import TrainState


def report_section(ctx: SectionContext) -> None:
    """The report's sentences and figure: for every cell with ``tta``, TTA vs the plain accuracy of the same models
    and the inference time against one plain validation pass."""
    judged, (_, _, time_key) = keys.metric(TTA.judged_by or ""), TTA.final_metric_keys
    cells = [c for c in ctx.data.cells if TTA.name in ctx.data.technique_set(c) and ctx.values(judged, c)]
    bars = []
    for cell in cells:
        valid_times = validation_pass_times(ctx.data, cell)
        plain, tta, tta_time = (ctx.values(k, cell) for k in (keys.FINAL_ACCURACY, judged, keys.metric(time_key)))
        mean_time = stats.mean(list(tta_time.values()))
        ctx.sentence(evaluation_sentence("TTA", cell, plain, tta, mean_time, stats.mean(valid_times)))
        bars.append(
            EvaluationBars(cell, list(plain.values()), list(tta.values()), valid_times, list(tta_time.values()))
        )
    if not cells:
        ctx.note("No cell logged a TTA accuracy yet.")
        return
    ctx.figure(
        "tta_accuracy_and_time.png",
        lambda: plot_evaluation(bars, "TTA", TTA.colour),
        "plain vs TTA accuracy and inference time",
        "Left: plain vs TTA accuracy of the same models. Right: one plain validation pass vs all TTA passes.",
    )


@TECHNIQUES.register("tta")
@dataclass(frozen=True)
class TTA(Technique):
    """Average predictions over augmented copies of each validation image."""

    n: int = 4
    beta: float = 0.25

    name = "tta"
    summary = "test-time augmentation: 0.75 * mean of 4 augmented passes + 0.25 * centre crop (softmax)"
    source = "fastbook ch. 7 'Test Time Augmentation'; fastai Learner.tta"
    priority = Priority.EVALUATION
    order = 40
    colour = "#2ca02c"
    trains = False  # TTA changes inference only: judged by its TTA accuracy
    judged_by = "tta_accuracy"
    final_metric_keys = ("tta_accuracy", "tta_plain_accuracy", "tta_time_s")
    report = ReportSection(
        title="Test time augmentation",
        intro=(
            "Average the predictions over augmented copies of each validation image (fastai `learn.tta()`: 4 "
            "augmented passes, 0.75/0.25 with the centre crop): no retraining, only extra inference time. The "
            "book applied it to the progressive-resizing model; here every cell with `tta` logs its plain and TTA "
            "accuracy from the same model."
        ),
        chapter_step=3,
        build=report_section,
    )

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError(f"tta.n = {self.n!r} is out of range: it must be >= 1.")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"tta.beta = {self.beta!r} is out of range: it must be in [0, 1].")

    def after_fit(self, s: TrainState) -> None:
        metrics, probabilities = evaluate_tta(s, n=self.n, beta=self.beta)
        s.final_metrics.update(metrics)
        s.outputs[self.name] = probabilities  # per-image, in the cell run's predictions artifact
