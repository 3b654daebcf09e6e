"""Data for sota_ablate: Imagenette (or a local folder) decoded once into a uint8 cache, resident on the device,
augmented in whole batches with fastai's chapter 7 semantics (``Resize(460)`` + ``aug_transforms``).

Modules: ``config`` (DataConfig), ``sources`` (listing, download, split), ``cache`` (the uint8 cache, with
``checksum`` for content hashes and self-checks, ``staging`` for its locked temporary folders and ``workers`` for
its decode processes), ``augment`` (batched on-device transforms), ``loader`` (device-resident sets and batch
iterators). Importing the package does no work beyond importing these modules.
"""

from __future__ import annotations

from sota_ablate.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    AugmentParams,
    normalize,
    sample_params,
    train_transform,
    valid_transform,
)
from sota_ablate.data.config import DataConfig
from sota_ablate.data.errors import DataError
from sota_ablate.data.loader import (
    ImageData,
    ImageSet,
    load_data,
    steps_per_epoch,
    train_batches,
    train_loader,
    tta_batches,
    valid_batches,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "AugmentParams",
    "DataConfig",
    "DataError",
    "ImageData",
    "ImageSet",
    "load_data",
    "normalize",
    "sample_params",
    "steps_per_epoch",
    "train_batches",
    "train_loader",
    "train_transform",
    "tta_batches",
    "valid_batches",
    "valid_transform",
]
