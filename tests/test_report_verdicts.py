"""The report's verdicts and statistics on known values: one comparison rule (summary and effects agree),
identical cells never give a zero-width "verdict", budget-confounded and equivalence verdicts, the minimum
detectable effect, the bootstrap, P(A > B), ECE, and the predictions artifact (and its absence)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from sota_ablate.report import effects, predictions, stats, synthesis, tables, verdicts
from sota_ablate.report.collect import GridData
from sota_ablate.report.comparison import cell_delta, images_seen

STAGES = [{"name": "train", "epochs": 2, "size": 32, "batch_size": 8}]
LONG = [{"name": "train", "epochs": 6, "size": 32, "batch_size": 8}]
PROGRESSIVE = [
    {"name": "progressive_small", "epochs": 1, "size": 16, "batch_size": 16},
    {"name": "fine_tune", "epochs": 1, "size": 32, "batch_size": 8},
]


def _grid(cells, tta=None, stages=None, steps=None) -> GridData:
    rows = []
    for cell, (techniques, accs) in cells.items():
        for seed, acc in enumerate(accs):
            rows.append(
                {
                    "run_id": f"{cell}-{seed}",
                    "cell": cell,
                    "seed": seed,
                    "techniques": techniques,
                    "state": "complete",
                    "metrics.final_accuracy": acc,
                    "metrics.tta_accuracy": (tta or {}).get(cell, [math.nan] * len(accs))[seed],
                    "metrics.wall_time_s": 10.0,
                    "params.stages": (stages or {}).get(cell, STAGES),
                    "params.total_steps": (steps or {}).get(cell, 8),
                    "params.data.n_train": 36,
                    "params.train.epochs": 2,
                }
            )
    return GridData("toy", pd.DataFrame([{"run_id": "parent"}]), pd.DataFrame(rows), list(cells), [0, 1, 2], {})


def _diff(low: float, high: float, delta: float | None = None) -> stats.Difference:
    return stats.Difference((low + high) / 2 if delta is None else delta, low, high, 3, "paired", 2.0, 0.01)


# --- verdicts ----------------------------------------------------------------------------------------------------


def test_verdicts_with_a_band():
    assert verdicts.verdict(_diff(0.01, 0.05)).kind == verdicts.HELPS
    assert verdicts.verdict(_diff(-0.05, -0.02)).kind == verdicts.HURTS
    equivalent = verdicts.verdict(_diff(-0.004, 0.008))
    assert equivalent.kind == verdicts.EQUIVALENT and equivalent.text == "no effect larger than ±1 point"
    assert verdicts.verdict(_diff(-0.004, 0.008), band=0.005).kind == verdicts.INCONCLUSIVE
    assert verdicts.verdict(_diff(-0.02, 0.03)).kind == verdicts.INCONCLUSIVE
    assert "by less than 1 point" in verdicts.verdict(_diff(0.002, 0.006)).text


def test_budgets_that_differ_are_confounded_whatever_the_interval():
    v = verdicts.verdict(_diff(0.05, 0.15), longer=True)
    assert v.kind == verdicts.CONFOUNDED and "confounded by the longer schedule" in v.text and "`fair`" in v.text
    data = _grid({"baseline": ("none", [0.50, 0.52, 0.51]), "mixup": ("mixup", [0.60, 0.63, 0.61])},
                 stages={"mixup": LONG})  # fmt: skip
    (e,) = effects.technique_effects(data)
    assert e.accuracy.significant and e.longer is True and e.verdict().kind == verdicts.CONFOUNDED
    assert "**helps**" not in effects.effects_markdown([e])
    assert "helps" not in synthesis.recommendation([("toy", e)], 0.01)


def test_identical_cells_give_no_zero_width_verdict():
    # tta trains like the baseline: plain accuracies equal on every seed. It is compared on its TTA accuracy
    same = [0.50, 0.52, 0.54]
    data = _grid({"baseline": ("none", same), "tta": ("tta", same)}, tta={"tta": [0.53, 0.53, 0.56]})
    (e,) = effects.technique_effects(data)
    assert e.metric == "tta_accuracy vs accuracy"
    assert e.accuracy.delta == pytest.approx(0.02)
    # without a TTA accuracy logged: not compared at all, never +0.00 [+0.00, +0.00]
    data = _grid({"baseline": ("none", same), "tta": ("tta", same)})
    (e,) = effects.technique_effects(data)
    assert e.reason and e.verdict().kind == verdicts.UNKNOWN and "[+0.00, +0.00]" not in effects.effects_markdown([e])
    # a trained technique that changed nothing: the degenerate interval is named, not called evidence
    data = _grid({"baseline": ("none", same), "fp16": ("fp16", same)})
    (e,) = effects.technique_effects(data)
    assert e.verdict().kind == verdicts.IDENTICAL
    table = effects.effects_markdown([e])
    assert "[+0.00, +0.00]" not in table and "identical on every seed" in table


def test_summary_delta_and_effects_table_agree_on_the_same_pair():
    full = "normalize,progressive,tta"
    data = _grid(
        {
            "all": (full, [0.52, 0.53, 0.53]),
            "no_progressive": ("normalize,tta", [0.57, 0.58, 0.58]),
            "no_tta": ("normalize,progressive", [0.52, 0.53, 0.53]),
        },
        tta={"all": [0.54, 0.54, 0.545], "no_progressive": [0.60, 0.61, 0.605]},
    )
    found = {e.technique: e for e in effects.technique_effects(data)}
    prog = found["progressive"]
    assert prog.metric == "accuracy"  # progressive has no metric of its own: plain accuracy on both sides
    delta = cell_delta(data, "no_progressive", "all")
    assert delta.diff is not None and delta.diff.delta == pytest.approx(-prog.accuracy.delta)
    assert (delta.diff.ci_low, delta.diff.ci_high) == pytest.approx((-prog.accuracy.ci_high, -prog.accuracy.ci_low))
    assert prog.accuracy.delta == pytest.approx(-0.05)
    tta = found["tta"]
    assert tta.metric == "tta_accuracy vs accuracy" and tta.accuracy.delta == pytest.approx(
        stats.mean([0.02, 0.01, 0.015])
    )
    summary = {s.cell: s for s in tables.cell_summary(data, "all")}
    assert summary["no_tta"].difference.delta == pytest.approx(-tta.accuracy.delta)


def test_budget_columns_say_what_is_and_is_not_equal():
    assert images_seen(PROGRESSIVE, 36) == 1 * 32 + 1 * 32  # 36 // 16 * 16 and 36 // 8 * 8
    data = _grid({"baseline": ("none", [0.5, 0.52, 0.51]), "progressive": ("progressive", [0.5, 0.5, 0.52])},
                 stages={"progressive": PROGRESSIVE}, steps={"progressive": 6})  # fmt: skip
    (e,) = effects.technique_effects(data)
    assert e.equal_budget
    epochs, steps, images = effects.budget_cells(e)
    assert epochs == "equal (2)" and steps == "8 → 6" and images == "equal (64)"


def test_minimum_detectable_effect_formula_and_sentence():
    sd, n = 0.02, 3
    expected = (scipy.stats.t.ppf(0.975, 2) + scipy.stats.t.ppf(0.8, 2)) * sd / math.sqrt(3)
    assert stats.minimum_detectable_effect(sd, n) == pytest.approx(expected)
    assert math.isnan(stats.minimum_detectable_effect(sd, 1))
    d = stats.paired_difference([0.60, 0.62, 0.65], [0.59, 0.60, 0.61])
    assert d.sd == pytest.approx(np.std([0.01, 0.02, 0.04], ddof=1))
    sentence = verdicts.mde_sentence([d])
    mde = stats.minimum_detectable_effect(d.sd, 3)
    assert sentence.startswith(f"With 3 seeds this grid detects effects of about **{100 * mde:.1f} points**")
    assert "power 80 %" in sentence
    assert verdicts.mde_sentence([]).startswith("No minimum detectable effect")


# --- statistics on known values ---------------------------------------------------------------------------------


def test_probability_of_improvement_counts_ties_as_half():
    a, b = [0.6, 0.5, 0.7], [0.5, 0.55, 0.4]
    # pairs: 0.6 beats 0.5, 0.55, 0.4 (3); 0.5 ties 0.5 (0.5), beats 0.4 (1); 0.7 beats all (3): 7.5 / 9
    p = stats.probability_of_improvement(a, b)
    assert p.value == pytest.approx(7.5 / 9)
    assert p.has_ci and 0 <= p.ci_low <= p.value <= p.ci_high <= 1
    assert stats.probability_of_improvement(a, b) == p  # seeded: the same interval every time


def test_bootstrap_resamples_images_jointly_and_is_seeded():
    rng = np.random.default_rng(1)
    per_seed = [rng.integers(-1, 2, 200).astype(float) for _ in range(3)]
    est = stats.bootstrap_mean(per_seed)
    assert est.value == pytest.approx(np.mean(per_seed))
    # the reference: scipy's paired bootstrap on the same samples with the same generator
    ref = scipy.stats.bootstrap(tuple(per_seed), lambda *xs, axis=-1: np.mean([np.mean(x, axis=axis) for x in xs], axis=0),
                                paired=True, vectorized=True, n_resamples=stats.BOOTSTRAP_RESAMPLES,
                                method="percentile", rng=np.random.default_rng(stats.BOOTSTRAP_SEED))  # fmt: skip
    assert (est.ci_low, est.ci_high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert stats.bootstrap_mean(per_seed) == est


def test_expected_calibration_error_known_example():
    # 4 images: two at confidence 0.9 (one right), two at 0.6 (both right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # bin of 0.9: accuracy 0.5, confidence 0.9 -> 0.4; bin of 0.6: accuracy 1.0, confidence 0.6 -> 0.4
    assert predictions.expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert predictions.expected_calibration_error(perfect, np.array([0, 1])) == pytest.approx(0.0)


# --- the predictions artifact -----------------------------------------------------------------------------------


def _npz(labels, plain, tta=None) -> bytes:
    arrays = {"labels": np.array(labels, dtype=np.int16), "paths": np.array([f"val/{i}.JPEG" for i in range(len(labels))]),
              "classes": np.array(["a", "b"]), "plain": np.array(plain, dtype=np.float16)}  # fmt: skip
    if tta is not None:
        arrays["tta"] = np.array(tta, dtype=np.float16)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_reading_predictions_and_their_absence(tmp_path):
    p = predictions.parse_predictions(_npz([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], tta=[[0.7, 0.3]] * 3))
    assert p.classes == ("a", "b") and list(p.labels) == [0, 1, 1]
    assert list(p.correct()) == [True, True, False] and list(p.correct("tta")) == [True, False, False]
    assert p.correct("cutmix") is None

    class NoArtifact:
        class client:
            @staticmethod
            def download_artifacts(run_id, path, dst):
                raise OSError("no such artifact")

    assert predictions.read_predictions(NoArtifact(), "run") is None
    assert predictions.read_predictions(object(), "run") is None

    class WithArtifact:
        class client:
            @staticmethod
            def download_artifacts(run_id, path, dst):
                out = tmp_path / path
                out.write_bytes(_npz([0, 1], [[0.9, 0.1], [0.2, 0.8]]))
                return str(out)

    assert list(predictions.read_predictions(WithArtifact(), "run").labels) == [0, 1]


def test_per_image_comparison_and_calibration_degrade_without_predictions():
    data = _grid({"baseline": ("none", [0.5, 0.5, 0.5]), "label_smoothing": ("label_smoothing", [0.6, 0.6, 0.6])})
    assert data.cell_predictions("baseline") == {}
    assert predictions.compare_images({}, {}, "plain", "plain") is None
    assert predictions.compare_calibration({}, {}) is None
    a = {s: predictions.parse_predictions(_npz([0, 1, 1, 0], [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]]))
         for s in range(3)}  # fmt: skip
    b = {s: predictions.parse_predictions(_npz([0, 1, 1, 0], [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.4, 0.6]]))
         for s in range(3)}  # fmt: skip
    image = predictions.compare_images(a, b, "plain", "plain")
    assert image is not None and image.seeds == (0, 1, 2) and image.n_images == 4
    assert image.difference.value == pytest.approx(0.5)  # two of four images right only with a
    assert dict(image.class_changes) == pytest.approx({"a": 0.5, "b": 0.5})
    cal = predictions.compare_calibration(a, b)
    assert cal is not None and cal.ece_with.value == pytest.approx(
        predictions.expected_calibration_error(a[0].probabilities["plain"], a[0].labels)
    )


def test_budget_sentence_says_what_differs_at_equal_epochs():
    from types import SimpleNamespace

    from sota_ablate.report.prose import budget_sentence

    ref = SimpleNamespace(cell="baseline", recipe="10x64px bs64", epochs=10, steps=150, images=9600)
    prog = SimpleNamespace(
        cell="progressive", recipe="5x40px bs128 -> 1+4x64px bs64", epochs=10, steps=115, images=8320
    )
    text = budget_sentence(prog, ref)
    assert "Budgets differ" not in text and "Same number of epochs (10)" in text
    assert "115 vs 150 optimizer steps" in text and "8,320 vs 9,600 training images" in text
    longer = SimpleNamespace(cell="mixup", recipe="15x64px bs64", epochs=15, steps=225, images=14400)
    assert budget_sentence(longer, ref).startswith("Budgets differ: `mixup` trained 15x64px bs64 (15 epochs)")
