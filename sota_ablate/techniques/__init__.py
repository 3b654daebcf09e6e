"""The technique registry: every module of this package is discovered on first use (``base.TECHNIQUES``).

Everything else asks the registry, never a list of its own: ``technique_names`` (in each technique's declared
``order``), ``ordered``/``label`` for technique sets, ``create_techniques`` for a cell's instances (refusing
techniques that claim the same part of the training step).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from sota_ablate.config import ConfigError, apply_overrides, check_finite
from sota_ablate.techniques.base import TECHNIQUES, Priority, ReportSection, SectionContext, Technique


def get_technique(name: str) -> type[Technique]:
    return TECHNIQUES.get(name)


def technique_names() -> list[str]:
    """Every registered technique, in declared order (ties: by name)."""
    entries = TECHNIQUES.entries()
    return sorted(entries, key=lambda n: (entries[n].order, n))


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in the registry's order; names that are not registered (old runs) last, sorted."""
    entries = TECHNIQUES.entries()
    names = set(names)
    known = sorted((n for n in names if n in entries), key=lambda n: (entries[n].order, n))
    return known + sorted(n for n in names if n not in entries)


def label(names: Iterable[str]) -> str:
    """The ``techniques`` tag of a cell: its techniques comma-separated in order; ``none`` for the baseline."""
    return ",".join(ordered(names)) or "none"


def check_compatible(names: Iterable[str]) -> None:
    """Raise ConfigError when two of ``names`` claim the same part of the training step (e.g. mixup and cutmix
    both replace the training batch). Unknown names are ``create_techniques``' to report."""
    entries = TECHNIQUES.entries()
    classes = [entries[n] for n in ordered(set(names)) if n in entries]
    for a, b in itertools.combinations(classes, 2):
        shared = a.claims & b.claims
        if shared:
            raise ConfigError(
                f"techniques {a.name!r} and {b.name!r} cannot be combined: both take over the training step's "
                f"{' and '.join(sorted(shared))} (the second would silently undo the first); keep one of them in "
                "this cell."
            )


def create_techniques(
    names: Iterable[str], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Technique]:
    """Instantiate techniques by name with per-technique hyperparameter overrides, sorted by priority.

    Raises:
        UnknownNameError: an unknown technique (the message lists the known ones).
        ConfigError: techniques that cannot be combined, an unknown hyperparameter or an out-of-range value.
    """
    overrides = overrides or {}
    names = list(names)
    out: list[Technique] = []
    for name in names:
        cls = TECHNIQUES.get(name)
        tech = apply_overrides(cls(), dict(overrides.get(name, {})), where=f"technique {name!r}")
        check_finite(tech, prefix=f"{name}.")
        tech.validate()
        out.append(tech)
    for name in overrides:
        TECHNIQUES.get(name)  # an override for an unknown technique is an error too
    check_compatible(names)
    return sorted(out, key=lambda t: t.priority)


__all__ = [
    "TECHNIQUES",
    "Priority",
    "ReportSection",
    "SectionContext",
    "Technique",
    "check_compatible",
    "create_techniques",
    "get_technique",
    "label",
    "ordered",
    "technique_names",
]
