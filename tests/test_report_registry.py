"""The report knows techniques only through the registry: a technique registered at test time (with a report
section, a colour, a per-epoch metric of its own) gets its section, colour, effect row and epoch-table column with
no edit to the report's modules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from sota_ablate import schema
from sota_ablate.report import effects, keys, palette, tables
from sota_ablate.report.canvas import pyplot
from sota_ablate.report.collect import GridData
from sota_ablate.report.markdown import Report, Section, render
from sota_ablate.report.sections import TechniqueContext, build_sections, chapter_steps, technique_colours
from sota_ablate.report.writer import FigureWriter
from sota_ablate.techniques import TECHNIQUES, ReportSection, SectionContext, Technique, technique_names
from tests import test_architecture as architecture

STAGES = [{"name": "train", "epochs": 2, "size": 32, "batch_size": 8}]


def _toy_section(ctx: SectionContext) -> None:
    def figure():
        fig, ax = pyplot().subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        return fig

    accs = ctx.values(keys.FINAL_ACCURACY)
    ctx.sentence(f"Toy sentence: {len(accs)} seeds, reference {ctx.reference}, alpha {ctx.param('tech.toy.alpha')}.")
    ctx.illustration("Toy illustration.")
    ctx.figure("toy_figure.png", figure, "toy alt", "Toy caption.")
    ctx.note(f"Toy note: {ctx.dataset_note}.")


@dataclass(frozen=True)
class Toy(Technique):
    alpha: float = 0.5

    name = "toy"
    order = 45
    colour = "#123456"
    epoch_metric_keys = ("toy_metric",)
    report = ReportSection(title="Toy technique (a test)", intro="What the toy does.", build=_toy_section)


@pytest.fixture
def toy(monkeypatch):
    TECHNIQUES.entries()  # discover the real ones first
    monkeypatch.setitem(TECHNIQUES._entries, "toy", Toy)  # removed again after the test
    return Toy


def _history(accs: list[float]) -> pd.DataFrame:
    n = len(accs)
    return pd.DataFrame(
        {
            keys.TRAIN_LOSS: [1.0] * n,
            keys.VALID_LOSS: [1.1] * n,
            keys.ACCURACY: accs,
            keys.EPOCH_TIME: [2.0] * n,
            keys.TRAIN_TIME: [1.5] * n,
            keys.IMAGE_SIZE: [32.0] * n,
            "toy_metric": [0.25 * (i + 1) for i in range(n)],
        },
        index=pd.RangeIndex(n, name="epoch"),
    )


def _grid() -> GridData:
    rows, hist = [], {}
    for cell, techniques, accs in (("baseline", "none", [0.50, 0.52, 0.51]), ("toy", "toy", [0.60, 0.63, 0.61])):
        for seed, acc in enumerate(accs):
            run_id = f"{cell}-{seed}"
            rows.append(
                {
                    "run_id": run_id,
                    "cell": cell,
                    "seed": seed,
                    "techniques": techniques,
                    "state": "complete",
                    keys.FINAL_ACCURACY: acc,
                    keys.WALL_TIME: 10.0,
                    keys.param(schema.STAGES): STAGES,
                    keys.param(schema.train_param("epochs")): 2,
                    keys.param(schema.tech_param("toy", "alpha")): 0.5 if cell == "toy" else None,
                    keys.param(schema.EPOCH_METRIC_KEYS): schema.epoch_metric_keys(
                        ["toy_metric"] if cell == "toy" else []
                    ),
                }
            )
            hist[run_id] = _history([0.4, acc])
    return GridData(
        "toy_grid", pd.DataFrame([{"run_id": "parent"}]), pd.DataFrame(rows), ["baseline", "toy"], [0, 1, 2], hist
    )


def test_a_registered_technique_gets_its_section_colour_effect_and_epoch_column(toy, tmp_path: Path):
    assert "toy" in technique_names()
    data = _grid()
    assert palette.cell_colours(data, technique_colours()) == {"baseline": palette.BASELINE, "toy": "#123456"}
    (effect,) = effects.technique_effects(data)
    assert effect.technique == "toy" and effect.context == "alone: `toy` vs `baseline`"
    assert "| `toy` | alone: `toy` vs `baseline` |" in effects.effects_markdown([effect])
    summaries = tables.cell_summary(data, "baseline")
    chapter = build_sections(data, summaries, "baseline", FigureWriter(tmp_path), None, "no dataset here", {})
    titles = [s.title for s in chapter.sections]
    assert titles[0] == "Imagenette baseline" and "Toy technique (a test)" in titles
    assert "Other cells" not in titles  # the toy cell has its own section
    section = chapter.sections[titles.index("Toy technique (a test)")]
    assert section.cell == "toy" and section.intro == "What the toy does."
    assert section.effect[0].startswith("`toy` reached 0.6133 vs 0.5100 for `baseline`")
    assert "Toy sentence: 3 seeds, reference baseline, alpha 0.5." in section.effect
    assert section.illustration == ["Toy illustration."] and section.notes == ["Toy note: no dataset here."]
    assert [f.path for f in section.figures] == ["toy_figure.png"] and (tmp_path / "toy_figure.png").stat().st_size
    header = section.table.splitlines()[0]
    assert header == "| epoch | train_loss | valid_loss | accuracy | toy_metric | time |"  # the technique's own metric
    assert "| 1 | 1.000000 | 1.100000 | 0.600000 | 0.500000 | 00:02 |" in section.table
    baseline_table = chapter.sections[0].table.splitlines()[0]
    assert "toy_metric" not in baseline_table
    report = Report("t", [], tables.summary_markdown(summaries, "baseline"), [], [], [], chapter.sections, [])
    text = render(report)
    assert re.search(r"^## Toy technique \(a test\)$", text, flags=re.M)
    absent = text.split("## Chapter steps not in this grid", 1)[1]
    assert "Toy technique" not in absent and "Normalization" in absent


def test_section_order_follows_the_chapter_then_the_registry_order(toy):
    titles = [s.title.split(" (")[0] for s in chapter_steps()]
    chapter = ["Imagenette baseline", "Normalization", "Progressive resizing", "Test time augmentation", "Mixup",
               "Label smoothing"]  # fmt: skip
    assert titles[: len(chapter)] == chapter and titles[-1] == "All techniques combined"
    rest = titles[len(chapter) : -1]
    assert rest.index("Mixed precision") < rest.index("Toy technique")  # no chapter_step: by order (10 < 45)


def test_technique_context_implements_the_protocol(tmp_path: Path):
    data = GridData("g", pd.DataFrame([{"run_id": "p"}]), pd.DataFrame([{"run_id": "r", "cell": "c", "seed": 0,
                    "techniques": "none", "state": "complete", keys.FINAL_ACCURACY: 0.5}]), ["c"], [0], {})  # fmt: skip
    ctx = TechniqueContext(data, Section("S", cell="c"), FigureWriter(tmp_path), None, tmp_path, "here", {"a": "A"})
    assert not ctx.used_dataset
    protocol = {n for n in vars(SectionContext) if not n.startswith("_")} | set(SectionContext.__annotations__)
    assert protocol == {"cell", "reference", "dataset", "dataset_note", "class_names", "data", "values", "param",
                        "figure", "sentence", "illustration", "note"}  # fmt: skip
    for member in protocol:
        assert hasattr(ctx, member)
    assert ctx.used_dataset  # reading ``dataset`` is what marks it used
    assert ctx.values(keys.FINAL_ACCURACY) == {0: 0.5} and ctx.param("missing", 3) == 3
    assert ctx.cell == "c" and ctx.reference is None and ctx.class_names == {"a": "A"}


def test_report_modules_a_technique_imports_never_import_the_registry():
    """The registry imports every technique module on first use: a report module that a technique's file imports
    must not import the registry (nor the report modules that do), or the two would import each other."""
    edges = architecture.graph()
    used = {t for name in edges if name.startswith("sota_ablate.techniques.") for t in edges[name]}
    report_modules = sorted(m for m in used if m.startswith("sota_ablate.report"))
    assert "sota_ablate.report.illustrations" in report_modules  # the check sees the techniques' imports
    for module in report_modules:
        seen, todo = set(), [module]
        while todo:
            for dep in edges.get(todo.pop(), set()) - seen:
                seen.add(dep)
                todo.append(dep)
        forbidden = seen & {"sota_ablate.techniques", "sota_ablate.report.tables", "sota_ablate.report.collect"}
        assert not forbidden, f"{module} imports {sorted(forbidden)}"
