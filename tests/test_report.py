"""The report generator: pure parts on hand-made data, then a real smoke grid in a temporary MLflow store."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sota_ablate.cli import main
from sota_ablate.report import caveats, formatting, illustrations, prose, published, stats, tables
from sota_ablate.report import collect as collect_mod
from sota_ablate.report.collect import GridData, ReportError, cast_param, run_state
from sota_ablate.report.generate import generate_report
from sota_ablate.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
CELLS = ["baseline", "fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing", "all"]
STAGES_1 = [{"name": "train", "epochs": 2, "size": 32, "batch_size": 8}]


# ---------------------------------------------------------------------------------------------------------------
# Pure parts on hand-made data


def test_cast_param():
    assert cast_param("3") == 3 and cast_param("0.001") == 0.001 and cast_param("1e-3") == 0.001
    assert cast_param("[0, 1]") == [0, 1] and cast_param("true") is True
    assert cast_param("official") == "official" and cast_param("none") == "none"
    assert cast_param(None) is None and cast_param(float("nan")) is None
    assert cast_param('[{"name": "train", "epochs": 5}]') == [{"name": "train", "epochs": 5}]


def test_run_state():
    assert run_state("FINISHED", "true") == "complete"
    assert run_state("FINISHED", None) == "incomplete"  # no completion tag: not trusted
    assert run_state("RUNNING", None) == "running"
    assert run_state("FAILED", None) == "failed" and run_state("KILLED", None) == "killed"


def _row(cell, seed, techniques, acc, state="complete", stages=None, **extra):
    return {
        "run_id": f"{cell}-{seed}" if state != "missing" else None,
        "cell": cell,
        "seed": seed,
        "techniques": techniques,
        "state": state,
        "failure": "boom" if state == "failed" else "",
        "metrics.final_accuracy": acc,
        "metrics.wall_time_s": 10.0,
        "metrics.mean_epoch_time_s": 5.0,
        "metrics.mean_images_per_s": 100.0,
        "params.stages": stages or STAGES_1,
        "params.train.epochs": 2,
        "params.train.size": 32,
        "params.train.batch_size": 8,
        "params.train.model": "xresnet18",
        "params.train.n_out": 10,
        "params.device": "cpu",
        "params.dtype": "float32",
        "params.data.split": "official",
        "params.data.source": "folder",
        "params.data.path": "/data",
        "params.data.train_per_class": "all",
        "params.data.valid_per_class": "all",
        **extra,
    }


def _history(accs):
    return pd.DataFrame(
        {
            "train_loss": [1.5 - 0.1 * i for i in range(len(accs))],
            "valid_loss": [1.4 - 0.1 * i for i in range(len(accs))],
            "accuracy": accs,
            "epoch_time_s": [65.0] * len(accs),
            "train_time_s": [60.0] * len(accs),
            "image_size": [32.0] * len(accs),
        },
        index=pd.RangeIndex(len(accs), name="epoch"),
    )


@pytest.fixture
def handmade() -> GridData:
    rows = [
        _row("baseline", 0, "none", 0.80),
        _row("baseline", 1, "none", 0.82),
        _row("baseline", 2, "none", 0.84),
        _row("normalize", 0, "normalize", 0.83),
        _row("normalize", 1, "normalize", 0.86),
        _row("normalize", 2, "normalize", 0.88),
        _row("mixup", 0, "mixup", 0.70, stages=[{"name": "train", "epochs": 15, "size": 32, "batch_size": 8}]),
        _row("mixup", 1, "mixup", None, state="failed"),
        _row("mixup", 2, "mixup", None, state="missing"),
        _row("fp16", 0, "fp16", None, state="missing"),
        _row("fp16", 1, "fp16", None, state="missing"),
        _row("fp16", 2, "fp16", None, state="missing"),
    ]
    runs = pd.DataFrame(rows)
    runs.loc[runs["cell"] == "fp16", ["techniques", "params.dtype"]] = [None, None]
    parents = pd.DataFrame(
        [
            {
                "run_id": "parent",
                "tags.profile": "quick",
                "params.profile": "quick",
                "params.data.n_train": 100,
                "params.data.n_valid": 50,
            }
        ]
    )
    hist = {r["run_id"]: _history([0.5, r["metrics.final_accuracy"]]) for r in rows if r["state"] == "complete"}
    return GridData("toy", parents, runs, ["baseline", "fp16", "normalize", "mixup"], [0, 1, 2], hist)


def test_cell_summary_numbers(handmade):
    summaries = {s.cell: s for s in tables.cell_summary(handmade, "baseline")}
    base, norm, mix, fp16 = (summaries[c] for c in ("baseline", "normalize", "mixup", "fp16"))
    assert (
        base.accuracy.n == 3 and base.accuracy.mean == pytest.approx(0.82) and base.accuracy.std == pytest.approx(0.02)
    )
    assert base.difference is None and base.complete and base.status == "complete"
    assert norm.difference.method == "paired" and norm.difference.delta == pytest.approx(0.11 / 3)
    expected = stats.paired_difference([0.83, 0.86, 0.88], [0.80, 0.82, 0.84])
    assert (norm.difference.ci_low, norm.difference.ci_high) == (expected.ci_low, expected.ci_high)
    assert mix.accuracy.n == 1 and mix.difference.method == "none" and mix.difference.delta == pytest.approx(-0.12)
    assert not mix.complete and mix.status == "1/3 seeds; 1 failed, 1 missing"
    assert fp16.status == "missing" and fp16.accuracy.n == 0 and fp16.recipe == "-"
    assert mix.recipe == "15x32px bs8" and mix.epochs == 15 and base.recipe == "2x32px bs8"


def test_summary_markdown_marks_best_and_incomplete(handmade):
    summaries = tables.cell_summary(handmade, "baseline")
    text = tables.summary_markdown(summaries, "baseline")
    lines = {re.match(r"\| \**`(\w+)`", line).group(1): line for line in text.splitlines()[2:]}
    assert "**`normalize`**" in lines["normalize"] and "**0.8567 ± 0.0252 (n=3)**" in lines["normalize"]
    assert "0.8200 ± 0.0200 (n=3)" in lines["baseline"] and "(reference)" in lines["baseline"]
    assert "+3.67 pts [" in lines["normalize"]
    assert "⚠ missing" in lines["fp16"] and "⚠ 1/3 seeds; 1 failed, 1 missing" in lines["mixup"]
    assert "0.8252 (book, 5 ep)" in lines["baseline"] and "0.8245 (book, 5 ep)" in lines["normalize"]  # 2 epochs
    assert "10.0 s" in lines["baseline"] and "| 100 |" in lines["baseline"]


def test_epoch_table_fastai_format():
    hist = _history([0.401792, 0.825243])
    text = tables.epoch_table_markdown(hist, STAGES_1)
    assert text.splitlines()[0] == "| epoch | train_loss | valid_loss | accuracy | time |"
    assert "| 1 | 1.400000 | 1.300000 | 0.825243 | 01:05 |" in text
    stages = [
        {"name": "small", "epochs": 1, "size": 24, "batch_size": 8},
        {"name": "fine_tune_frozen", "epochs": 1, "size": 32, "batch_size": 8},
    ]
    hist["image_size"] = [24.0, 32.0]
    staged = tables.epoch_table_markdown(hist, stages)
    assert "| stage | size |" in staged and "| small | 24 |" in staged and "| fine_tune_frozen | 32 |" in staged
    assert tables.stage_recipe([*stages, {"name": "fine_tune", "epochs": 4, "size": 32, "batch_size": 8}]) == (
        "1x24px bs8 -> 1+4x32px bs8"
    )


def test_published_numbers_are_shipped():
    assert published.published_final("fastbook-ch7", "baseline") == pytest.approx(0.825243)
    assert published.published_final("fastbook-ch7", "progressive_224") == pytest.approx(0.863331)
    assert published.published_final("fastbook-ch7", "progressive_tta") == pytest.approx(0.8737863898277283)
    assert published.published_text(frozenset({"mixup"})) == "0.8764 (repl.)"
    assert published.published_text(frozenset({"normalize", "mixup"})) == "-"
    assert published.published_text(frozenset({"mixup"}), 15) == "0.8764 (repl.)"
    assert published.published_text(frozenset(), 40) == "0.8252 (book, 5 ep); 0.8204 (repl., 5 ep)"
    assert published.published_text(frozenset({"progressive"}), 10).startswith("0.8633 (book); ")
    readme = ROOT / "sota_ablate" / "resources" / "README.md"
    assert "07_sizing_and_tta" in readme.read_text() and "000_c02ea65f3b71f318.txt" in readme.read_text()


def test_effect_sentences():
    ci = stats.compare({0: 0.90, 1: 0.91, 2: 0.92}, {0: 0.80, 1: 0.80, 2: 0.81})
    text = prose.effect_sentence("mixup", "baseline", 0.91, 0.8033, ci)
    assert "**+10.67 points**" in text and "95% CI [" in text and "paired by seed, n = 3" in text
    assert "excludes zero: a gain" in text
    single = prose.effect_sentence("mixup", "baseline", 0.9, 0.8, stats.compare({0: 0.9}, {0: 0.8}))
    assert "+10.00 points" in single and "no confidence interval" in single
    assert "No comparison" in prose.effect_sentence("mixup", "baseline", float("nan"), 0.8, None)


def test_honesty_notes(handmade):
    summaries = tables.cell_summary(handmade, "baseline")
    notes = " ".join(caveats.honesty_notes(handmade, summaries, "baseline"))
    assert "Partial grid" in notes and "`fp16` (missing)" in notes
    assert "Budgets differ" in notes and "`mixup` (15x32px bs8)" in notes
    assert "Fewer than 3 seeds" in notes  # mixup has 1
    assert "Not full-size Imagenette" in notes and "Scaled down" in notes
    assert "official split" not in notes.lower() and "bfloat16" not in notes
    handmade.runs["params.data.split"] = "chapter"
    handmade.runs["params.dtype"] = "bfloat16"
    notes = " ".join(caveats.honesty_notes(handmade, summaries, "baseline"))
    assert "Not the official split" in notes and "CPU bfloat16 stood in for CUDA fp16" in notes


def test_target_vectors():
    smooth = illustrations.smoothed_target(10, 0.1, 4)
    assert smooth[4] == pytest.approx(0.91) and all(v == pytest.approx(0.01) for i, v in enumerate(smooth) if i != 4)
    assert sum(smooth) == pytest.approx(1.0)
    assert illustrations.mixed_target(10, 4, 7, 0.3) == [0, 0, 0, 0, 0.3, 0, 0, pytest.approx(0.7), 0, 0]


def test_batch_stats_before_and_after_normalize():
    import torch

    from sota_ablate.data import IMAGENET_MEAN, IMAGENET_STD

    x = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) + torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * torch.randn(
        16, 3, 64, 64, generator=torch.Generator().manual_seed(0)
    )
    s = illustrations.batch_stats(x)
    assert s.mean_before == pytest.approx(IMAGENET_MEAN, abs=0.01) and s.std_before == pytest.approx(
        IMAGENET_STD, abs=0.01
    )
    assert s.mean_after == pytest.approx((0, 0, 0), abs=0.02) and s.std_after == pytest.approx((1, 1, 1), abs=0.02)


def test_find_dataset(tmp_path):
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    assert illustrations.find_dataset(tmp_path / "d", {})[0] == tmp_path / "d"
    assert (
        illustrations.find_dataset(None, {"data.source": "folder", "data.path": str(tmp_path / "d")})[0]
        == tmp_path / "d"
    )
    folder, why = illustrations.find_dataset(None, {"data.source": "folder", "data.path": str(tmp_path / "gone")})
    assert folder is None and "not on this machine" in why
    (tmp_path / "root" / "imagenette2-160" / "train").mkdir(parents=True)
    recorded = {"data.source": "imagenette", "data.path": str(tmp_path / "root"), "data.variant": "160px"}
    assert illustrations.find_dataset(None, recorded)[0] == tmp_path / "root" / "imagenette2-160"


# ---------------------------------------------------------------------------------------------------------------
# A real smoke grid in a temporary store: seed 0 of every cell, then seed 1 of five cells (a second grid run)

SEED1_CELLS = ["baseline", "normalize", "tta", "mixup", "label_smoothing"]


def _grid_args(folder: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "run-grid", "--profile", "smoke", "--grid", str(ROOT / "ablations" / "chapter.toml"),
        "--data", str(folder), "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
        "--cache-dir", str(tmp / "cache"), "--experiment", "rep", "--device", "cpu", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two grid runs; the full report (both aggregated); then one run deleted and one failed; partial reports."""
    from tests.conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("report")
    folder = make_image_folder(tmp / "images")
    assert main(_grid_args(folder, tmp, "--seeds", "0")) == 0
    assert main(_grid_args(folder, tmp, "--seeds", "1", "--cells", ",".join(SEED1_CELLS))) == 0
    uri = f"sqlite:///{tmp}/mlflow.db"
    tracker = Tracker(uri, "rep")
    full = generate_report(tracker, all_seeds=True, out_dir=tmp / "full")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["rep"])
    client = MlflowClient(uri)
    parents = runs[runs["tags.sota_ablate.role"] == "grid"].sort_values("start_time")
    latest_parent = parents.iloc[-1]["run_id"]
    children = runs[runs["tags.mlflow.parentRunId"] == latest_parent]
    mixup = children[children["tags.cell"] == "mixup"].iloc[0]["run_id"]
    smoothing = children[children["tags.cell"] == "label_smoothing"].iloc[0]["run_id"]
    client.delete_run(mixup)  # as if never run
    client.delete_tag(smoothing, "sota_ablate.complete")
    client.set_tag(smoothing, "sota_ablate.failure", "RuntimeError: simulated")
    client.set_terminated(smoothing, "FAILED")
    partial = generate_report(tracker, out_dir=tmp / "partial", log_to_mlflow=False)
    partial_all = generate_report(tracker, all_seeds=True, out_dir=tmp / "partial_all", log_to_mlflow=False)
    return {
        "tmp": tmp,
        "uri": uri,
        "tracker": tracker,
        "runs": runs,
        "full": full,
        "partial": partial,
        "partial_all": partial_all,
        "first_parent": parents.iloc[0]["run_id"],
        "latest_parent": latest_parent,
    }


def _summary_rows(readme: Path) -> dict[str, str]:
    text = readme.read_text()
    table = text.split("## Summary", 1)[1].split("\n\n")[1]
    return {re.match(r"\| \**`(\w+)`", line).group(1): line for line in table.splitlines()[2:]}


def _by_seed(runs: pd.DataFrame, cell: str, column: str) -> dict[int, float]:
    rows = runs[runs["tags.cell"] == cell]
    return {int(r["tags.seed"]): float(r[column]) for _, r in rows.iterrows()}


def test_report_files_and_links(store):
    readme = store["full"]
    assert readme == store["tmp"] / "full" / "chapter" / "README.md"
    text = readme.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    expected = {
        "accuracy_by_epoch.png", "loss_curves.png", "final_accuracy.png", "accuracy_vs_wall_time.png",
        "confusion_matrix_best.png", "normalization_batch_stats.png", "progressive_resizing.png",
        "tta_accuracy_and_time.png", "mixup_example.png", "label_smoothing_target.png", "verdict_forest.png",
        "cost_vs_effect.png", "label_smoothing_reliability.png",
    }  # fmt: skip
    assert set(links) == expected
    for link in links:
        assert not Path(link).is_absolute() and (readme.parent / link).stat().st_size > 1000
    assert {p.name for p in readme.parent.glob("*.png")} == expected
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    chapter = ["Imagenette baseline", "Normalization", "Progressive resizing", "Test time augmentation", "Mixup",
               "Label smoothing"]  # fmt: skip
    assert [t for t in titles if t in chapter] == chapter
    assert titles[0] == "Verdict" and titles.index("Read this first: caveats") < titles.index("Summary")
    assert titles.index("What each technique is worth") < titles.index("Imagenette baseline")
    assert titles.index("Label smoothing") < titles.index("All techniques combined") < titles.index("Provenance")


def test_summary_holds_the_logged_numbers(store):
    runs = store["runs"]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    rows = _summary_rows(store["full"])
    assert set(rows) == set(CELLS)
    for cell in CELLS:
        accs = list(_by_seed(children, cell, "metrics.final_accuracy").values())
        assert len(accs) == (2 if cell in SEED1_CELLS else 1)
        s = stats.summarize(accs)
        expected = f"{s.mean:.4f} ± {s.std:.4f} (n=2)" if s.n == 2 else f"{s.mean:.4f} (n=1)"
        assert expected in rows[cell], (cell, rows[cell])
        assert ("complete" if s.n == 2 else "⚠ 1/2 seeds; 1 missing") in rows[cell]
    for cell in ("tta", "all"):
        tta = list(_by_seed(children, cell, "metrics.tta_accuracy").values())
        assert f"{stats.mean(tta):.4f}" in rows[cell].split("|")[7]
    base = _by_seed(children, "baseline", "metrics.final_accuracy")
    for cell, method in (("normalize", "paired"), ("fp16", "none")):
        diff = stats.compare(_by_seed(children, cell, "metrics.final_accuracy"), base)
        assert diff.method == method and formatting.format_difference(diff) in rows[cell]
    assert "bfloat16" in rows["fp16"] and "float32" in rows["baseline"]


def test_epoch_table_holds_the_logged_history(store):
    runs = store["runs"]
    client = MlflowClient(store["uri"])
    base0 = runs[(runs["tags.cell"] == "baseline") & (runs["tags.seed"] == "0")].iloc[0]["run_id"]
    text = store["full"].read_text()
    section = text.split("## Imagenette baseline", 1)[1].split("\n## ", 1)[0]
    assert f"run `{base0[:8]}`" in section
    for key in ("train_loss", "valid_loss", "accuracy"):
        (metric,) = client.get_metric_history(base0, key)
        assert f"{metric.value:.6f}" in section
    progressive = text.split("## Progressive resizing", 1)[1].split("\n## ", 1)[0]
    assert "| stage | size |" in progressive and "| 24 |" in progressive and "| 32 |" in progressive


def test_report_logged_to_the_grid_run(store):
    client = MlflowClient(store["uri"])
    logged = {a.path for a in client.list_artifacts(store["latest_parent"], "report")}
    assert "report/README.md" in logged and "report/accuracy_by_epoch.png" in logged
    assert not client.list_artifacts(store["first_parent"], "report")  # only the primary grid run gets it


def test_regenerating_is_idempotent(store):
    folder = store["partial"].parent
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "stale.png").write_bytes(b"a figure this grid no longer has")
    again = generate_report(store["tracker"], out_dir=store["tmp"] / "partial", log_to_mlflow=False)
    assert again == store["partial"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_partial_grid_marks_missing_and_failed_cells(store):
    rows = _summary_rows(store["partial"])
    assert set(rows) == set(SEED1_CELLS)
    assert "⚠ missing" in rows["mixup"] and "⚠ failed" in rows["label_smoothing"]
    assert "| - |" in rows["mixup"] and "complete" in rows["baseline"]
    assert "`mixup` | mixup |" in rows["mixup"]  # techniques of a cell without runs: from the logged grid file
    text = store["partial"].read_text()
    assert "**partial**: 3 of 5 cell runs complete" in text
    mixup_section = text.split("## Mixup", 1)[1].split("\n## ", 1)[0]
    assert "`mixup` has no run yet (missing)" in mixup_section and "This grid has no cell" not in mixup_section
    assert "is **failed**: RuntimeError: simulated" in text
    assert "**Partial grid.**" in text and "One seed per cell" in text
    rows_all = _summary_rows(store["partial_all"])
    assert "(n=1)" in rows_all["mixup"] and "⚠ 1/2 seeds; 1 missing" in rows_all["mixup"]
    assert "⚠ 1/2 seeds; 1 failed" in rows_all["label_smoothing"] and "(n=2)" in rows_all["baseline"]


def test_report_cli(store, capsys):
    out = store["tmp"] / "cli"
    args = ["report", "--tracking-uri", store["uri"], "--experiment", "rep", "--out", str(out), "--no-log"]
    assert main([*args, "--run-id", store["first_parent"]]) == 0
    assert "report:" in capsys.readouterr().out
    assert set(_summary_rows(out / "chapter" / "README.md")) == set(CELLS)
    assert main([*args[:3], "--experiment", "nope", "--out", str(out)]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert main([*args, "--run-id", "0" * 32]) == 2
    assert "is not a grid run" in capsys.readouterr().err


def test_no_grid_run_is_a_clear_error(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "empty")
    tracker.experiment_id()  # exists, but holds no grid run
    with pytest.raises(ReportError, match="no grid run"):
        collect_mod.collect_grid(tracker)
