"""A small name -> object registry (after fvcore's ``Registry`` and timm's ``list_models``).

Every technique and model is registered under one snake_case name, and that name is used everywhere: the
registry key, the CLI token, the MLflow tag and the report column.

A registry made with ``discover="package.name"`` imports every module of that package the first time it is
asked anything (timm's and detectron2's plugin pattern, without a list of modules to keep in step): adding a
technique is adding one file to ``sota_ablate/techniques/``. Nothing is imported before that first question.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; the message lists the known names and the closest match."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to objects. Duplicate names are an error; unknown names list the known ones."""

    def __init__(self, kind: str, discover: str | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._package = discover
        self._discovered = discover is None

    def _discover(self) -> None:
        """Import every module of the ``discover`` package once (modules whose name starts with ``_`` and the
        package's ``base`` module are skipped: they register nothing)."""
        if self._discovered or self._package is None:
            return
        self._discovered = True
        package = importlib.import_module(self._package)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{self._package}.{info.name}")

    def entries(self) -> dict[str, T]:
        """Every registered name and object (after discovery)."""
        self._discover()
        return dict(self._entries)

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("mixup")`` (or no name: the object's ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._entries:
                raise KeyError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._discover()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = ", ".join(sorted(self._entries))
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}."

    def names(self, pattern: str = "*") -> list[str]:
        self._discover()
        return sorted(k for k in self._entries if fnmatch.fnmatch(k, pattern))

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._discover()
        return len(self._entries)
