"""Every command-line option has one validator (``sota_ablate/validate.py``), and every validator refuses bad
values with one ``error:`` paragraph naming the option and the fix, before anything is created."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sota_ablate import validate
from sota_ablate.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _needs_validator(action: argparse.Action) -> bool:
    """Flags (no value) and ``choices=`` options are checked by argparse itself."""
    return bool(action.option_strings) and action.nargs != 0 and action.choices is None


# (command, option, bad value, a fragment of the message). Every option with a validator needs a row here.
BAD = [
    ("run-grid", "--tracking-uri", "", "'' is empty"),
    ("run-grid", "--tracking-uri", "sqlite://mlflow.db", "not a sqlite file URI"),
    ("run-grid", "--experiment", " ", "is empty"),
    ("run-grid", "--experiment", "exp\n", "control character"),
    ("run-grid", "--grid", "", "is empty"),
    ("run-grid", "--seeds", "one", "--seeds 'one' is not a list of integers"),
    ("run-grid", "--seeds", "0,0", "repeats seed 0"),
    ("run-grid", "--seeds", ",", "names no seed"),
    ("run-grid", "--seeds", "-1", "negative seed"),
    ("run-grid", "--epochs-scale", "0", "--epochs-scale 0.0: use a number > 0"),
    ("run-grid", "--epochs-scale", "nan", "--epochs-scale nan is not a finite number"),
    ("run-grid", "--epochs-scale", "-inf", "not a finite number"),
    ("run-grid", "--epochs-scale", "1e9", "<= 100"),
    ("run-grid", "--epochs-scale", "fast", "'fast' is not a number"),
    ("run-grid", "--set", "lr", "is not KEY=VALUE"),
    ("run-grid", "--set", "=1", "is not KEY=VALUE"),
    ("run-grid", "--set", "lr=", "has no value"),
    ("run-grid", "--set", "../lr=1", "is not a setting name"),
    ("run-grid", "--data", "", "is empty"),
    ("run-grid", "--data-root", "\x00", "control character"),
    ("run-grid", "--cache-dir", " ", "is empty"),
    ("run-grid", "--device", "gpu", "'gpu' is not a device"),
    ("run-grid", "--checkpoint-dir", "", "is empty"),
    ("run-grid", "--cells", ",", "--cells ',' names no cell"),
    ("run-grid", "--cells", "baseline,baseline", "repeats baseline"),
    ("run-grid", "--cells", "../etc", "is not a plain name"),
    ("run-grid", "--ray-address", "ray://a b", "contains a space"),
    ("run-grid", "--cpus-per-cell", "0", "use a number > 0"),
    ("run-grid", "--gpus-per-cell", "-1", "use a number >= 0"),
    ("run-grid", "--max-retries", "1.5", "is not an integer"),
    ("run-grid", "--max-retries", "-1", "an integer >= 0"),
    ("run-grid", "--precision", "0", "--precision 0.0: use a number > 0"),
    ("run-grid", "--max-seeds", "2", "--max-seeds 2: use an integer >= 3"),
    ("run-grid", "--register-model", "a/b", "contains '/' or ':'"),
    ("run-grid", "--gpu-memory-gib", "0", "use a number > 0"),
    ("run-grid", "--cells-per-gpu", "0", "use an integer >= 1"),
    ("run", "--cell", "a/b", "is not a plain name"),
    ("lr-find", "--cell", "a/b", "is not a plain name"),
    ("lr-find", "--seed", "-1", "use an integer >= 0"),
    ("lr-find", "--start-lr", "0", "use a number > 0"),
    ("lr-find", "--end-lr", "nan", "not a finite number"),
    ("lr-find", "--num-it", "3", "use an integer >= 6"),
    ("ui", "--port", "70000", "--port 70000: use an integer >= 0 and <= 65535"),
    ("report", "--run-id", "latest", "is not a run id"),
    ("report", "--band", "0", "--band 0.0: use a number > 0"),
    ("report", "--band", "inf", "not a finite number"),
    ("report", "--out", "", "is empty"),
]


def test_every_option_has_a_validator() -> None:
    missing = []
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if not _needs_validator(action):
                continue
            v = validate.validator_of(action)
            if v is None or v.option not in action.option_strings:
                missing.append(f"{command} {action.option_strings[0]}")
    assert not missing, (
        f"options without a validator: {', '.join(missing)}. Give each one type=validate.<kind>('--option', ...) "
        "(sota_ablate/validate.py: number, seed_list, name, name_list, setting, path, text, tracking_uri, "
        "device, run_id, address; or a new one there), or choices=[...]; then add its bad values to BAD in "
        "tests/test_validation.py."
    )


def test_every_validated_option_is_tried_with_bad_values() -> None:
    validated = {
        a.option_strings[0]
        for p in _subparsers().values()
        for a in p._actions
        if _needs_validator(a) and validate.validator_of(a) is not None
    }
    tried = {option for _, option, _, _ in BAD}
    assert validated <= tried, f"add bad values of {', '.join(sorted(validated - tried))} to BAD"


@pytest.mark.parametrize(("command", "option", "value", "fragment"), BAD)
def test_bad_values_are_one_error_line(
    command: str, option: str, value: str, fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([command, f"{option}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option}") and fragment in err, err
    assert "e.g." in err or "use" in err, err  # the fix, not only the complaint
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())  # nothing created: no store, no checkpoints


def test_argparse_own_errors_have_the_same_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run-grid", "--profile", "huge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --profile: invalid choice: 'huge'") and "--help" in err, err
    assert main(["run"]) == 2  # a missing required option
    assert "--cell" in capsys.readouterr().err


def test_set_given_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run-grid", "--set", "lr=1e-3", "--set", "lr=2e-3"]) == 2
    assert capsys.readouterr().err.startswith("error: --set: lr is given twice (0.001 and 0.002)")


def test_good_values_parse_as_before() -> None:
    argv = ["run-grid", "--seeds", "2, 0,1", "--cells", "baseline, mixup", "--set", "lr=1e-3", "--set",
            "moms=[0.9, 0.8, 0.9]", "--set", "model=xresnet18", "--epochs-scale", "0.5", "--device", "cpu",
            "--max-retries", "0", "--gpus-per-cell", "0"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert args.seeds == [2, 0, 1] and args.cells == ["baseline", "mixup"]
    assert args.set == [("lr", 1e-3), ("moms", [0.9, 0.8, 0.9]), ("model", "xresnet18")]
    assert args.epochs_scale == 0.5 and args.device == "cpu" and args.max_retries == 0 and args.gpus_per_cell == 0
    assert (args.grid, args.experiment, args.tracking_uri) == ("chapter", "sota_ablate", None)
    report = build_parser().parse_args(["report", "--band", "2", "--run-id", "a8b9e0d28fe441a78a458c43fd3aa16a"])
    assert report.band == 2.0 and report.out == "reports"
    assert build_parser().parse_args(["ui", "--port", "0"]).port == 0
