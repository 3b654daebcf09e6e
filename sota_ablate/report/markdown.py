"""The report as a document: ``Report`` and its ``Section``s (plain strings, tables and relative figure paths,
built by ``sections`` and ``overview``) and ``render``, which turns one into GitHub markdown."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FigureRef:
    """A figure file next to the README (relative path) with its alt text and caption."""

    path: str
    alt: str
    caption: str = ""


@dataclass
class Section:
    """One chapter section: its cell's epoch table, the measured effect and its figures."""

    title: str
    intro: str = ""
    cell: str | None = None
    table: str = ""
    table_caption: str = ""
    effect: list[str] = field(default_factory=list)
    figures: list[FigureRef] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    book: str = ""
    illustration: list[str] = field(default_factory=list)
    collapsed: bool = False  # the table goes into a collapsed <details> block (epoch tables)


@dataclass
class Report:
    title: str
    overview: list[str]
    summary_table: str
    summary_notes: list[str]
    honesty: list[str]
    glance: list[FigureRef]
    sections: list[Section]
    provenance: list[str]
    opening: Section | None = None  # the verdict, right under the overview


def _figure(fig: FigureRef) -> str:
    text = f"![{fig.alt}]({fig.path})"
    return f"{text}\n\n*{fig.caption}*" if fig.caption else text


def details(summary: str, body: str) -> str:
    """A collapsed block: ``<details><summary>summary</summary> body </details>`` (GitHub renders markdown inside)."""
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def render_section(section: Section, level: int = 2) -> list[str]:
    """One section as markdown lines."""
    out = ["", f"{'#' * level} {section.title}", ""]
    if section.intro:
        out += [section.intro, ""]
    if section.table:
        if section.collapsed:
            out += [details(section.table_caption or "table", section.table), ""]
        else:
            if section.table_caption:
                out += [section.table_caption, ""]
            out += [section.table, ""]
    for line in section.effect:
        out += [line, ""]
    if section.book:
        out += [section.book, ""]
    for line in section.illustration:
        out += [line, ""]
    for fig in section.figures:
        out += [_figure(fig), ""]
    for note in section.notes:
        out += [f"> {note}", ""]
    return out


def render(report: Report) -> str:
    """The whole README.md: the verdict first, then the caveats, then the long tables and the sections."""
    out: list[str] = [f"# {report.title}", ""]
    out += [*report.overview, ""]
    if report.opening is not None:
        out += render_section(report.opening)
    out += ["", "## Read this first: caveats", ""]
    out += [f"- {n}" for n in report.honesty] or ["- None apply."]
    out += ["", "## Summary", "", report.summary_table, ""]
    out += [f"- {n}" for n in report.summary_notes]
    if report.glance:
        out += ["", "## Results at a glance", ""]
        for fig in report.glance:
            out += [_figure(fig), ""]
    for section in report.sections:
        out += render_section(section)
    out += ["", "## Provenance", ""]
    out += report.provenance
    return _tidy(out)


def _tidy(out: list[str]) -> str:
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"
