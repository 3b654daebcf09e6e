"""Resolved training configuration: one frozen dataclass per cell, flattened for MLflow params.

Hyperparameters come from four layers, later ones winning: the defaults here (fastbook chapter 7's baseline
recipe), the profile (``profiles.py``), the grid file's ``[defaults]`` and the cell's own overrides, and finally
the command line. Techniques carry their own hyperparameters (``tech.<name>.<field>``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from sota_ablate.data.augment import AugmentConfig
from sota_ablate.data.noise import NOISE_LEVELS

# ``lr = "find"``: the cell's lr is the lr finder's suggestion, found before it trains (``lr_find.py``).
LR_FIND = "find"


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of one training run (fastai defaults; chapter 7 baseline: 5 epochs at 224, bs 64, lr 3e-3).

    Attributes:
        model: registered model name (``xresnet18``, ``xresnet34``, ``xresnet50``).
        n_out: number of outputs; None (default) = the number of classes in the data (10 for Imagenette).
            The chapter's executed notebook ran 1000 (fastbook#254 changed it to 10); set 1000 for book parity.
        epochs: epochs of the main fit_one_cycle (for ``progressive``: the fine_tune epochs at ``size``).
        size: final training and validation image size in pixels.
        batch_size: batch size (train and valid, as fastai's dataloaders).
        lr: lr_max of fit_one_cycle, or ``"find"``: the lr finder's suggestion for this cell and seed (its
            valley), found just before the cell trains; the config hash keeps ``"find"``, not the number.
        wd: decoupled weight decay (fastai's Adam default), not applied to norm layers and biases.
        pct_start, div, div_final, moms: fit_one_cycle's schedule.
        eps, sqr_mom: fastai Adam's eps and beta2.
        seed: seed for init, data order, augmentation and mixup.
        label_noise: percent of training labels that are wrong (0, 1, 5, 25 or 50): taken from the dataset's
            ``noisy_imagenette.csv`` column ``noisy_labels_<n>`` when it has one, else seeded symmetric noise
            (``data/noise.py``). Validation labels stay clean. A recipe key, so a grid can sweep it.
    """

    model: str = "xresnet50"
    n_out: int | None = None
    epochs: int = 5
    size: int = 224
    batch_size: int = 64
    lr: float | str = field(default=3e-3, metadata={"words": (LR_FIND,)})  # a number or "find"
    wd: float = 0.01
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95)
    eps: float = 1e-5
    sqr_mom: float = 0.99
    seed: int = 0
    label_noise: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self, where: str = "") -> None:
        """Raise ConfigError for values no training run can use (``where``: where they came from, e.g. ``--set``)."""
        checks: list[tuple[str, bool, str]] = [
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("size", self.size >= 8, "an integer >= 8 (pixels)"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("lr", self.lr == LR_FIND or self.lr > 0, f'a positive number or "{LR_FIND}"'),
            ("wd", self.wd >= 0, "a number >= 0"),
            ("pct_start", 0 < self.pct_start < 1, "a number in (0, 1)"),
            ("div", self.div > 0, "a positive number"),
            ("div_final", self.div_final > 0, "a positive number"),
            ("n_out", self.n_out is None or self.n_out >= 2, "an integer >= 2 (or unset: the number of classes)"),
            ("eps", 0 < self.eps < 1, "a number in (0, 1), like 1e-5"),
            ("sqr_mom", 0 <= self.sqr_mom < 1, "a number in [0, 1), like 0.99"),
            ("moms", len(self.moms) == 3 and all(0 <= m < 1 for m in self.moms), "three numbers in [0, 1)"),
            ("label_noise", self.label_noise in NOISE_LEVELS, f"one of {', '.join(map(str, NOISE_LEVELS))} (percent)"),
            ("augment.min_scale", 0 < self.augment.min_scale <= 1, "a number in (0, 1]"),
            ("augment.min_zoom", 0 < self.augment.min_zoom <= self.augment.max_zoom, "in (0, augment.max_zoom]"),
            ("augment.max_rotate", 0 <= self.augment.max_rotate <= 180, "a number of degrees in [0, 180]"),
            ("augment.max_warp", 0 <= self.augment.max_warp < 1, "a number in [0, 1)"),
            ("augment.max_lighting", 0 <= self.augment.max_lighting < 1, "a number in [0, 1)"),
            ("augment.p_affine", 0 <= self.augment.p_affine <= 1, "a probability in [0, 1]"),
            ("augment.p_lighting", 0 <= self.augment.p_lighting <= 1, "a probability in [0, 1]"),
        ]
        src = f" (from {where})" if where else ""
        check_finite(self, src)
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{key} = {_get(self, key)!r}{src} is out of range: it must be {allowed}.")


def check_finite(obj: Any, src: str = "", prefix: str = "") -> None:
    """Raise ConfigError for a NaN or infinite number anywhere in the (nested) dataclass ``obj``."""
    for key, value in flatten(obj).items():
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{prefix}{key} = {value!r}{src} is not a finite number.")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dataclasses into ``{"a.b": value}`` (tuples kept as tuples)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def apply_overrides(obj: Any, overrides: dict[str, Any], where: str = "") -> Any:
    """Return a copy of a (nested) frozen dataclass with dotted-key overrides applied and type-checked.

    Args:
        obj: the dataclass instance.
        overrides: ``{"lr": 1e-3, "augment.max_rotate": 0}``.
        where: a description of where the overrides came from, for error messages.

    Raises:
        ConfigError: an unknown key (with the closest known key) or a value of the wrong type.
    """
    import difflib

    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            known = sorted(flatten(obj))
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            src = f" in {where}" if where else ""
            raise ConfigError(f"unknown setting {key!r}{src}.{hint} Known settings: {', '.join(known)}.")
        words = names[head].metadata.get("words", ())  # the strings a number field also takes (lr = "find")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, str) and value in words:
            direct[head] = value
        else:
            current = getattr(obj, head)
            try:
                direct[head] = _coerce(key, names[head].default if current in words else current, value, where)
            except ConfigError as err:
                also = " or ".join(f'"{w}"' for w in words)
                raise ConfigError(f"{err} It also takes {also}." if words else str(err)) from None
    for head, sub in nested.items():
        direct[head] = apply_overrides(getattr(obj, head), sub, where)
    return dataclasses.replace(obj, **direct)


def _coerce(key: str, current: Any, value: Any, where: str) -> Any:
    """Check and convert ``value`` to the type of ``current`` (int -> float is allowed)."""
    src = f" in {where}" if where else ""
    expected = type(current)
    if value is None:
        return value
    if current is None:
        if isinstance(value, int | float | str | bool):
            return value
        raise ConfigError(f"{key} = {value!r}{src} has the wrong type.")
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, tuple):
        if isinstance(value, list | tuple) and len(value) == len(current):
            return tuple(_coerce(key, c, v, where) for c, v in zip(current, value, strict=True))
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{key} = {value!r}{src} has the wrong type: expected {expected.__name__} like {current!r}.")


def config_hash(payload: dict[str, Any]) -> str:
    """A stable short hash of a JSON-able dict (sorted keys), used to recognise a cell+seed across reruns."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scale_epoch_count(epochs: int, scale: float) -> int:
    """``round(epochs * scale)``, at least 1."""
    return max(1, round(epochs * scale))
