"""normalize: per-channel normalisation with ImageNet statistics (fastai ``Normalize.from_stats(*imagenet_stats)``).

Applied last in the batch pipeline, after augmentation and lighting, on training, validation and TTA batches
alike. Without it the model sees inputs in [0, 1] (the chapter's baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from sota_ablate.config import ConfigError
from sota_ablate.data import IMAGENET_MEAN, IMAGENET_STD, normalize
from sota_ablate.techniques.base import TECHNIQUES, Priority, Technique
from sota_ablate.train.state import TrainState


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

    def validate(self) -> None:
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"normalize.std = {self.std!r}: every std must be positive.")

    def setup(self, s: TrainState) -> None:
        s.normalize = partial(normalize, mean=self.mean, std=self.std)
