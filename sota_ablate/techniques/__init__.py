"""The technique registry. Importing a technique module runs its ``@TECHNIQUES.register`` decorator."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sota_ablate.techniques.base import TECHNIQUES, Priority, Technique

TECHNIQUE_ORDER = ("fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing")


def load_all() -> None:
    """Import every technique module (explicitly, by name) so the registry is filled."""
    from sota_ablate.techniques import (  # noqa: F401
        fp16,
        label_smoothing,
        mixup,
        normalize,
        progressive,
        tta,
    )


def get_technique(name: str) -> type[Technique]:
    load_all()
    return TECHNIQUES.get(name)


def technique_names() -> list[str]:
    load_all()
    return [n for n in TECHNIQUE_ORDER if n in TECHNIQUES] + [n for n in TECHNIQUES.names() if n not in TECHNIQUE_ORDER]


def create_techniques(
    names: Iterable[str], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Technique]:
    """Instantiate techniques by name with per-technique hyperparameter overrides, sorted by priority.

    Raises:
        UnknownNameError: an unknown technique (the message lists the known ones).
        ConfigError: an unknown hyperparameter or an out-of-range value.
    """
    from sota_ablate.config import apply_overrides

    overrides = overrides or {}
    load_all()
    out: list[Technique] = []
    for name in names:
        cls = TECHNIQUES.get(name)
        tech = apply_overrides(cls(), dict(overrides.get(name, {})), where=f"technique {name!r}")
        tech.validate()
        out.append(tech)
    for name in overrides:
        TECHNIQUES.get(name)  # an override for an unknown technique is an error too
    return sorted(out, key=lambda t: t.priority)


__all__ = [
    "TECHNIQUES",
    "TECHNIQUE_ORDER",
    "Priority",
    "Technique",
    "create_techniques",
    "get_technique",
    "technique_names",
]
