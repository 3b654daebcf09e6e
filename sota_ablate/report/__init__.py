"""The report generator: a grid's MLflow runs -> a markdown report in fastbook chapter 7's order.

Modules, each with one job (this ``__init__`` imports none of them, so importing one imports only what it needs):

- ``generate``: the orchestration (``generate_report``): collect -> sections -> render -> files -> MLflow.
- ``collect``: read a grid back from MLflow (``GridData``); ``keys``: the column names it uses.
- ``stats``: means, std and Student-t intervals (scipy); ``effects``: what each technique is worth.
- ``tables``: the per-cell summary and epoch tables; ``published``: the chapter's printed numbers;
  ``formatting``: number and table formatting; ``palette``: every cell's colour.
- ``sections``: the chapter's sections (the ``SectionContext`` a technique's ``ReportSection.build`` gets);
  ``overview``: the parts around them (overview, summary notes, figures at a glance, effects, provenance).
- ``prose``: the sentences; ``caveats``: the caveats that apply to a grid; ``dataset``: which dataset it ran on.
- ``markdown``: the document model and its renderer; ``writer``: saves figures next to the README.
- ``result_plots``: figures of results; ``illustrations``: the chapter's illustrative figures from real images;
  ``canvas``: pyplot and PNG saving.

``python -m sota_ablate report`` is its command line.
"""
