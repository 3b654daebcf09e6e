"""Profiles: the scale a grid runs at (model, image sizes, dataset and subset), independent of the grid.

Grid files describe recipes in the chapter's terms (epochs, lr, which techniques); a profile decides how big
everything is. Precedence: code defaults < profile < grid ``[defaults]`` < cell < command line.

- ``chapter``: the book: xresnet50, 224 px (progressive from 128 px, bs 128), Resize(460) presize, full-size
  Imagenette (``imagenette2``), all 9,469 / 3,925 images. Needs a GPU (about an hour for the chapter grid).
- ``quick``: sized for a 2-core CPU (the 8-cell chapter grid in under 15 minutes): xresnet18 at 64 px
  (progressive from 40 px), the same batch sizes and epochs as the chapter, presize 131 px (= 460 * 64/224,
  the chapter's presize ratio), a fixed subset of 100 training and 50 validation images per class
  (1,000 / 500), the ``160px`` Imagenette archive when downloading.
- ``smoke``: tiny, for tests: xresnet18 at 32 px (progressive from 24 px), every stage 1 epoch, 4 train and
  2 valid images per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sota_ablate.config import ConfigError


@dataclass(frozen=True)
class Profile:
    """Overrides for ``TrainConfig`` (``train``), technique hyperparameters and ``DataConfig`` (``data``)."""

    name: str
    description: str
    train: dict[str, Any] = field(default_factory=dict)
    techniques: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    epochs_scale: float = 1.0
    progress_bar: bool = True


PROFILES: dict[str, Profile] = {
    "chapter": Profile(
        name="chapter",
        description="fastbook chapter 7 as the book ran it: xresnet50, 224 px, full-size Imagenette (GPU)",
        train={"model": "xresnet50", "size": 224, "batch_size": 64},
        techniques={"progressive": {"initial_size": 128, "initial_batch_size": 128}},
        data={"variant": "full", "presize": 460},
    ),
    "quick": Profile(
        name="quick",
        description=(
            "2-core CPU scale: xresnet18 at 64 px (progressive from 40 px), 100 train + 50 valid images per "
            "class, presize 131 px, the chapter's batch sizes (the grid sets the epochs)"
        ),
        train={"model": "xresnet18", "size": 64, "batch_size": 64},
        techniques={"progressive": {"initial_size": 40, "initial_batch_size": 128}},
        data={"variant": "160px", "presize": 131, "train_per_class": 100, "valid_per_class": 50},
    ),
    "smoke": Profile(
        name="smoke",
        description="tiny, for tests: xresnet18 at 32 px, 1 epoch, 4 train + 2 valid images per class",
        train={"model": "xresnet18", "size": 32, "batch_size": 8, "epochs": 1},
        techniques={
            "progressive": {"initial_size": 24, "initial_batch_size": 8, "initial_epochs": 1},
            "tta": {"n": 2},
        },
        data={"variant": "160px", "presize": 48, "train_per_class": 4, "valid_per_class": 2},
        epochs_scale=0.01,  # every epoch count becomes 1
        progress_bar=False,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; use one of: {', '.join(PROFILES)}") from None


def default_profile(cuda_available: bool) -> tuple[str, str]:
    """(profile name, why) for ``run-grid`` without ``--profile``."""
    if cuda_available:
        return "chapter", "a CUDA device is available"
    return "quick", "no CUDA device: the chapter profile would take days on a CPU"
