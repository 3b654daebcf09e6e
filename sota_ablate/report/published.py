"""The chapter's printed numbers and their replication, shipped as package data
(``sota_ablate/resources/published_results.csv``, see its README), and which cell each one is the counterpart of.

The technique sets below are those of the published recipes (facts about the book and its replication, not a
list of this project's techniques): a cell is compared with a published recipe when it uses the same techniques.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pandas as pd

from sota_ablate.report.formatting import pipe_table

BOOK = "fastbook-ch7"
REPLICATION = "000_c02ea65f3b71f318.txt"
SOURCE_LABEL = {BOOK: "book", REPLICATION: "repl."}
# the replication's closing recipe: every technique of the chapter, plus fp16
CLOSING_RECIPE = frozenset({"fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing"})

# cell technique set -> (source, recipe) rows of published_results.csv whose last epoch is the cell's counterpart
PUBLISHED_RECIPES: dict[frozenset[str], tuple[tuple[str, str], ...]] = {
    frozenset(): ((BOOK, "baseline"), (REPLICATION, "baseline_fp32")),
    frozenset({"fp16"}): ((REPLICATION, "baseline_fp16"),),
    frozenset({"normalize"}): ((BOOK, "normalize"), (REPLICATION, "normalize_fp16")),
    frozenset({"progressive"}): ((BOOK, "progressive_224"), (REPLICATION, "progressive_224_fp16")),
    frozenset({"tta"}): ((BOOK, "progressive_tta"), (REPLICATION, "progressive_tta_fp16")),
    frozenset({"mixup"}): ((REPLICATION, "mixup_15ep_128_fp16"),),
    frozenset({"label_smoothing"}): ((REPLICATION, "label_smoothing_15ep_128_fp16"),),
    CLOSING_RECIPE: ((REPLICATION, "all_224_fp16"),),
}
PUBLISHED_RECIPE_TEXT = {
    "baseline": "after 5 epochs at 224 px",
    "baseline_fp32": "after 5 epochs at 224 px",
    "baseline_fp16": "after 5 epochs at 224 px, fp16",
    "normalize": "after 5 epochs at 224 px",
    "normalize_fp16": "after 5 epochs at 224 px, fp16",
    "progressive_224": "after 4 epochs at 128 px, then fine_tune 1 + 5 at 224 px",
    "progressive_224_fp16": "after 4 epochs at 128 px, then fine_tune 1 + 5 at 224 px, fp16",
    "progressive_tta": "with TTA on the progressive-resizing model",
    "progressive_tta_fp16": "with TTA on the progressive-resizing model, fp16",
    "mixup_15ep_128_fp16": "after 15 epochs at 128 px, fp16",
    "label_smoothing_15ep_128_fp16": "after 15 epochs at 128 px, fp16",
    "all_224_fp16": "after 15 epochs at 128 px, then fine_tune 1 + 10 at 224 px, fp16 (no TTA)",
}
# the total training epochs of each published recipe (all stages), to say when a cell trained a different number
PUBLISHED_EPOCHS = {
    "baseline": 5, "baseline_fp32": 5, "baseline_fp16": 5, "normalize": 5, "normalize_fp16": 5,
    "progressive_224": 10, "progressive_224_fp16": 10, "progressive_tta": 10, "progressive_tta_fp16": 10,
    "mixup_15ep_128_fp16": 15, "label_smoothing_15ep_128_fp16": 15, "all_224_fp16": 26,
}  # fmt: skip
# technique -> ((source, recipe with it), (source, recipe without it)): the published effect of switching it on, where
# the two recipes differ by that technique only (the book's TTA was applied to its progressive model)
PUBLISHED_EFFECTS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "fp16": ((REPLICATION, "baseline_fp16"), (REPLICATION, "baseline_fp32")),
    "normalize": ((BOOK, "normalize"), (BOOK, "baseline")),
    "progressive": ((BOOK, "progressive_224"), (BOOK, "baseline")),
    "tta": ((BOOK, "progressive_tta"), (BOOK, "progressive_224")),
}
PUBLISHED_EFFECT_NOTES = {
    "progressive": "4 + 1 + 5 epochs vs 5: not at equal budget",
    "tta": "on the progressive model",
    "fp16": "the replication, not the book",
}
# what the published numbers of a technique set need said about them
PUBLISHED_CAVEATS = {
    frozenset({"tta"}): "Both applied TTA to the progressive-resizing model, not to the baseline recipe.",
}
# the book's epoch tables printed for a technique set (recipes of BOOK)
PRINTED_TABLES: dict[frozenset[str], tuple[str, ...]] = {
    frozenset(): ("baseline",),
    frozenset({"normalize"}): ("normalize",),
    frozenset({"progressive"}): ("progressive_128", "progressive_224_frozen", "progressive_224"),
}
# the summary table's footnote on its published column
PUBLISHED_NOTE = (
    "published: the chapter's printed number (book) and its fp16 replication (repl.), for the same "
    "techniques (`, N ep`: the published recipe trained N epochs, not the cell's number); see "
    "`sota_ablate/resources/README.md`. The book's TTA number is on the progressive model."
)


@cache
def published_results() -> pd.DataFrame:
    """The chapter's printed numbers and their replication (see ``sota_ablate/resources/README.md``)."""
    text = resources.files("sota_ablate").joinpath("resources/published_results.csv").read_text(encoding="utf-8")
    return pd.read_csv(io.StringIO(text))


def published_final(source: str, recipe: str) -> float | None:
    """The last printed accuracy of ``recipe`` from ``source`` (None when absent)."""
    df = published_results()
    rows = df[(df["source"] == source) & (df["recipe"] == recipe)]
    if rows.empty:
        return None
    rows = rows.sort_values("epoch", na_position="first")
    return float(rows.iloc[-1]["accuracy"])


def published_epochs(source: str, recipe: str) -> pd.DataFrame:
    """The printed epoch rows of ``recipe`` (epoch, train_loss, valid_loss, accuracy, time)."""
    df = published_results()
    return df[(df["source"] == source) & (df["recipe"] == recipe)].sort_values("epoch").reset_index(drop=True)


def published_for(techniques: frozenset[str]) -> list[tuple[str, str, float]]:
    """(source, recipe, final accuracy) of the published counterparts of a cell with these techniques."""
    out = []
    for source, recipe in PUBLISHED_RECIPES.get(frozenset(techniques), ()):
        acc = published_final(source, recipe)
        if acc is not None:
            out.append((source, recipe, acc))
    return out


def published_text(techniques: frozenset[str], epochs: int | None = None) -> str:
    """``0.8252 (book); 0.8204 (repl.)`` for the summary table's published column; ``-`` when none. A cell that
    trained ``epochs`` other than the published recipe's gets them named: ``0.8252 (book, 5 ep)``."""
    items = published_for(techniques)
    if not items:
        return "-"

    def label(source: str, recipe: str) -> str:
        published = PUBLISHED_EPOCHS.get(recipe)
        differs = epochs is not None and published is not None and published != epochs
        return SOURCE_LABEL.get(source, source) + (f", {published} ep" if differs else "")

    return "; ".join(f"{acc:.4f} ({label(src, recipe)})" for src, recipe, acc in items)


def published_epoch_markdown(source: str, *recipes: str) -> str:
    """Published recipes' epoch tables as printed (several recipes: one after the other, with a recipe column)."""
    rows = []
    for recipe in recipes:
        for _, r in published_epochs(source, recipe).iterrows():
            if pd.isna(r["epoch"]):
                continue
            row = [str(int(r["epoch"])), f"{r['train_loss']:.6f}", f"{r['valid_loss']:.6f}", f"{r['accuracy']:.6f}"]
            rows.append([*row, r["time"], *([recipe] if len(recipes) > 1 else [])])
    header = ["epoch", "train_loss", "valid_loss", "accuracy", "time"] + (["recipe"] if len(recipes) > 1 else [])
    return pipe_table(header, rows, align="rrrrr" + "l" * (len(header) - 5))


def book_lines(techniques: frozenset[str]) -> str:
    """The section's "Published: ..." paragraph for a cell with these techniques (with the book's printed epoch
    tables where it printed them); empty when nothing was published for them."""
    items = []
    for source, recipe in PUBLISHED_RECIPES.get(techniques, ()):
        acc = published_final(source, recipe)
        if acc is None:
            continue
        rows = published_epochs(source, recipe)
        epochs = int(rows["epoch"].notna().sum())
        what = f"after {epochs} epochs" if epochs else "(end of training)"
        what = PUBLISHED_RECIPE_TEXT.get(recipe, what)
        items.append(f"{SOURCE_LABEL.get(source, source)} `{recipe}`: {acc:.4f} {what}")
    if not items:
        return ""
    text = "Published: " + "; ".join(items) + "."
    if techniques in PUBLISHED_CAVEATS:
        text += " " + PUBLISHED_CAVEATS[techniques]
    if techniques in PRINTED_TABLES:
        text += " The book printed (on a GPU; xresnet50, full-size Imagenette):\n\n" + published_epoch_markdown(
            BOOK, *PRINTED_TABLES[techniques]
        )
    return text


@dataclass(frozen=True)
class PublishedEffect:
    """A published effect: with minus without (one run each: no interval), and where it comes from."""

    delta: float
    with_accuracy: float
    without_accuracy: float
    source: str
    text: str


def published_effect(technique: str) -> PublishedEffect | None:
    """The published effect of switching ``technique`` on (None when no pair of published recipes isolates it)."""
    pair = PUBLISHED_EFFECTS.get(technique)
    if pair is None:
        return None
    (src_with, with_recipe), (src_without, without_recipe) = pair
    a, b = published_final(src_with, with_recipe), published_final(src_without, without_recipe)
    if a is None or b is None:
        return None
    label = SOURCE_LABEL.get(src_with, src_with)
    note = f"; {PUBLISHED_EFFECT_NOTES[technique]}" if technique in PUBLISHED_EFFECT_NOTES else ""
    return PublishedEffect(a - b, a, b, label, f"{100 * (a - b):+.2f} pts ({label}: {a:.4f} vs {b:.4f}{note})")
