"""One validator per command-line option: argparse ``type=`` callables that convert the text or refuse it.

Each ``Validator`` is bound to the option it checks, so its message names that option, the bad value and the fix
(``--seeds '0,0' repeats seed 0: use distinct integers >= 0, e.g. --seeds 0,1,2``); ``cli.Parser`` prints it as
the CLI's one ``error:`` paragraph (exit status 2) before anything is loaded or trained. Options that argparse
checks itself (flags, ``choices=``) need none; every other option has one (``tests/test_validation.py`` checks
the parser). Values that need more than the text (an unknown cell or setting, a missing data folder) are checked
later, still before training, by the code that knows them (``grid.py``, ``config.py``, ``data/``).

This module imports nothing heavy: the parser is built for ``--help`` too.
"""

from __future__ import annotations

import argparse
import math
import re
import tomllib
from collections.abc import Callable
from typing import Any, NoReturn

# Grid and cell names end up in file and folder names (reports/<grid>/, run names): no separators, no "..".
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+@-]{0,99}")
SETTING_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids: uuid4 hex


class Validator:
    """The ``type=`` of one option: ``convert(text)`` returns the value or raises ``ValueError(why)``; the error
    argparse reports is ``<option> <value or why>``."""

    def __init__(self, option: str, convert: Callable[[str], Any], help_text: str) -> None:
        self.option = option
        self.convert = convert
        self.help_text = help_text  # what a good value looks like, for the message
        self.__name__ = f"{option} value"  # argparse names the type in its fallback message

    def __call__(self, text: str) -> Any:
        try:
            return self.convert(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{self.option} {err}: {self.help_text}") from None

    def __repr__(self) -> str:
        return f"Validator({self.option!r})"


def _bad(why: str) -> NoReturn:
    raise ValueError(why)


def _text(text: str) -> str:
    """Refuse empty text, surrounding spaces and control characters (a pasted newline, a NUL)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        _bad(f"{text!r} contains a control character")
    if not text.strip():
        _bad(f"{text!r} is empty")
    if text != text.strip():
        _bad(f"{text!r} has leading or trailing spaces")
    return text


def _number(text: str, integer: bool) -> float | int:
    try:
        value: float | int = int(text) if integer else float(text)
    except ValueError:
        _bad(f"{text!r} is not {'an integer' if integer else 'a number'}")
    if not math.isfinite(value):
        _bad(f"{value} is not a finite number")
    return value


def number(option: str, lo: float, hi: float = math.inf, *, lo_open: bool = False, integer: bool = False,
           example: str) -> Validator:  # fmt: skip
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), an integer with ``integer``."""
    low = f"> {lo:g}" if lo_open else f">= {lo:g}"
    what = f"{'an integer' if integer else 'a number'} {low}" + (f" and <= {hi:g}" if math.isfinite(hi) else "")

    def convert(text: str) -> float | int:
        value = _number(text.strip(), integer)
        if value < lo or (lo_open and value == lo) or value > hi:
            _bad(str(value))
        return value

    return Validator(option, convert, f"use {what}, e.g. {option} {example}")


def seed_list(option: str) -> Validator:
    """Comma-separated distinct integers >= 0 (spaces allowed), at least one."""

    def convert(text: str) -> list[int]:
        parts = [s for s in text.replace(" ", "").split(",") if s]
        if not parts:
            _bad(f"{text!r} names no seed")
        try:
            seeds = [int(s) for s in parts]
        except ValueError:
            _bad(f"{text!r} is not a list of integers")
        if min(seeds) < 0:
            _bad(f"{text!r} has a negative seed")
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            _bad(f"{text!r} repeats seed {', '.join(map(str, repeated))}")
        return seeds

    return Validator(option, convert, f"use distinct integers >= 0, e.g. {option} 0,1,2")


def _name(text: str) -> str:
    if not SAFE_NAME.fullmatch(text):
        _bad(f"{text!r} is not a plain name")
    return text


NAME_HELP = "use letters, digits and _ . + @ - (starting with a letter or digit, at most 100 characters)"


def name(option: str, example: str) -> Validator:
    """One grid or cell name (``SAFE_NAME``)."""
    return Validator(option, _name, f"{NAME_HELP}, e.g. {option} {example}")


def name_list(option: str, example: str) -> Validator:
    """Comma-separated distinct names (spaces around them allowed), at least one."""

    def convert(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            _bad(f"{text!r} names no cell")
        for n in names:
            if not SAFE_NAME.fullmatch(n):
                _bad(f"{text!r}: {n!r} is not a plain name ({NAME_HELP})")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            _bad(f"{text!r} repeats {', '.join(repeated)}")
        return names

    return Validator(option, convert, f"use distinct comma-separated names, e.g. {option} {example}")


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML (``1e-3``, ``true``, ``[0.9, 0.8, 0.9]``, ``"text"``), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def setting(option: str) -> Validator:
    """``KEY=VALUE`` with a dotted key (``lr``, ``augment.max_rotate``) and a TOML or text value; returns
    ``(key, value)``. Whether the key exists and the value fits it (type, range, a finite number) is checked by the
    recipe's own validation (``config.py``: ``apply_overrides``, ``TrainConfig.validate``), as for grid files."""

    def convert(text: str) -> tuple[str, Any]:
        key, sep, raw = text.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            _bad(f"{text!r} is not KEY=VALUE")
        if not SETTING_KEY.fullmatch(key):
            _bad(f"{text!r}: {key!r} is not a setting name")
        if not raw:
            _bad(f"{text!r} has no value")
        return key, parse_value(raw)

    return Validator(option, convert, f"use KEY=VALUE, e.g. {option} lr=1e-3 or {option} augment.max_rotate=0")


class UniqueSettings(argparse.Action):
    """``action=`` of a repeatable ``KEY=VALUE`` option (values from ``setting``): the ``(key, value)`` pairs in
    order, a key given twice refused (it would silently replace the first)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        key, value = values
        items = list(getattr(namespace, self.dest, None) or [])
        for k, v in items:
            if k == key:
                raise argparse.ArgumentError(
                    self, f"{key} is given twice ({v!r} and {value!r}): give each setting once"
                )
        setattr(namespace, self.dest, [*items, (key, value)])


def path(option: str, example: str) -> Validator:
    """A file or folder path (not empty, no control characters); whether it exists is the user's code's business."""
    return Validator(option, _text, f"use a path, e.g. {option} {example}")


def text(option: str, example: str) -> Validator:
    """A free-form name such as an MLflow experiment (not empty, no control characters or surrounding spaces)."""
    return Validator(option, _text, f"use e.g. {option} {example}")


def model_name(option: str, example: str) -> Validator:
    """A name in MLflow's model registry: text without ``/`` or ``:`` (they separate a model URI's parts)."""

    def convert(text: str) -> str:
        _text(text)
        if any(c in text for c in "/:"):
            _bad(f"{text!r} contains '/' or ':'")
        return text

    return Validator(option, convert, f"use a model name without '/' or ':', e.g. {option} {example}")


def tracking_uri(option: str) -> Validator:
    """An MLflow store URI; a sqlite URI needs three slashes and a file (``sqlite:///mlflow.db``)."""

    def convert(uri: str) -> str:
        _text(uri)
        if uri.startswith("sqlite:") and (not uri.startswith("sqlite:///") or uri == "sqlite:///"):
            _bad(f"{uri!r} is not a sqlite file URI")
        return uri

    return Validator(option, convert, f"use e.g. {option} sqlite:///mlflow.db or {option} http://127.0.0.1:5000")


# torch's device types (``torch.device`` accepts these, with an optional ``:index``), without importing torch.
DEVICE = re.compile(r"auto|(cpu|cuda|mps|xpu|xla|meta|hpu|mtia|npu|ipu|privateuseone)(:\d+)?")


def device(option: str) -> Validator:
    """``auto`` or a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``); availability is checked later."""

    def convert(text: str) -> str:
        if not DEVICE.fullmatch(text):
            _bad(f"{text!r} is not a device")
        return text

    return Validator(option, convert, f"use auto, cpu, cuda or cuda:N, e.g. {option} cpu")


def run_id(option: str) -> Validator:
    """An MLflow run id (32 hexadecimal characters)."""

    def convert(text: str) -> str:
        if not RUN_ID.fullmatch(text.strip()):
            _bad(f"{text!r} is not a run id")
        return text.strip()

    return Validator(option, convert, "use the 32-character id of the run, as the MLflow UI shows it")


def address(option: str, example: str) -> Validator:
    """A server address such as ``auto`` or ``ray://host:port`` (no spaces)."""

    def convert(text: str) -> str:
        if any(c.isspace() for c in _text(text)):
            _bad(f"{text!r} contains a space")
        return text

    return Validator(option, convert, f"use e.g. {option} {example}")


def validator_of(action: argparse.Action) -> Validator | None:
    """The option's validator, or None (flags and ``choices=`` options need none)."""
    return action.type if isinstance(action.type, Validator) else None
