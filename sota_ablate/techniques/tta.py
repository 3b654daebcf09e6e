"""tta: test-time augmentation (fastbook ch. 7; fastai ``Learner.tta(n=4, beta=0.25)``).

After training: ``n`` passes over the validation set with the TRAINING augmentation (random square crop,
flip/rotate/zoom/warp, random-resized crop, lighting, then normalisation if on; never mixup), softmax
probabilities averaged, then one plain centre-crop pass; the prediction is ``(1 - beta) * mean_aug + beta *
plain`` (0.75 / 0.25). Logged as ``tta_accuracy`` next to the plain ``accuracy``, with its inference time.
"""

from __future__ import annotations

from dataclasses import dataclass

from sota_ablate.config import ConfigError
from sota_ablate.techniques.base import TECHNIQUES, Priority, Technique
from sota_ablate.train.state import TrainState


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

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError(f"tta.n = {self.n!r} is out of range: it must be >= 1.")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"tta.beta = {self.beta!r} is out of range: it must be in [0, 1].")

    def after_fit(self, s: TrainState) -> None:
        from sota_ablate.train.evaluate import evaluate_tta

        s.final_metrics.update(evaluate_tta(s, n=self.n, beta=self.beta))
