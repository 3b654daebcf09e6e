"""CutMix on numbers: fastai's box and lambda correction, the pasted region, the mixed targets, its per-epoch
metric, its report section, and one epoch of training with it."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sota_ablate.config import ConfigError, TrainConfig
from sota_ablate.data import ImageData, ImageSet
from sota_ablate.techniques import check_compatible, create_techniques, get_technique, technique_names
from sota_ablate.techniques.cutmix import (
    FIGURE,
    Box,
    CutMix,
    _section,
    cut_batch,
    cutmix_box,
    expected_kept_share,
    kept_share,
    paste_box,
    rand_box,
)
from sota_ablate.train.loop import fit
from sota_ablate.train.state import TrainState, build_state
from tests.conftest import WNIDS, make_image_folder


def batch(n: int = 8, n_classes: int = 5, h: int = 17, w: int = 23, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, generator=g)
    y = F.one_hot(torch.randint(0, n_classes, (n,), generator=g), n_classes).float()
    return x, y


# ---------------------------------------------------------------------------------------------------------------
# The box and lambda


def test_box_follows_fastai_rand_bbox_on_known_draws() -> None:
    # lam 0.64: sides round(10 * 0.6) = 6, three pixels either side of the centre
    assert cutmix_box(10, 10, 0.64, 5, 5) == Box(2, 2, 8, 8)
    assert kept_share(Box(2, 2, 8, 8), 10, 10) == pytest.approx(0.64)
    # clipped at the corner: only a 3 x 3 box is pasted, so 91 % of the image is kept
    box = cutmix_box(10, 10, 0.64, 0, 0)
    assert box == Box(0, 0, 3, 3) and kept_share(box, 10, 10) == pytest.approx(0.91)
    # odd sides: round(10 * 0.5) = 5, halved by floor -> width 4 (fastai and the paper's code)
    assert cutmix_box(10, 10, 0.75, 5, 5) == Box(3, 3, 7, 7)
    # non-square: x is the width (columns), y the height (rows)
    assert cutmix_box(20, 10, 0.75, 10, 5) == Box(5, 3, 15, 7)
    # lambda 1: nothing pasted; lambda 0 with a centred box: everything pasted
    assert cutmix_box(10, 10, 1.0, 4, 6).area == 0
    assert kept_share(cutmix_box(10, 10, 0.0, 5, 5), 10, 10) == 0.0


def test_rand_box_draws_the_centre_x_then_y_from_the_cpu_rng() -> None:
    torch.manual_seed(3)
    cx, cy = int(torch.randint(0, 23, (1,))), int(torch.randint(0, 17, (1,)))
    torch.manual_seed(3)
    assert rand_box(23, 17, 0.5) == cutmix_box(23, 17, 0.5, cx, cy)
    g = torch.Generator().manual_seed(3)
    assert rand_box(23, 17, 0.5, generator=g) == cutmix_box(23, 17, 0.5, cx, cy)


def paper_cut(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """fastai's ``CutMix.before_batch`` transcribed (draw order: lambda, permutation, cx, cy), for the replay."""
    bs, _, h, w = x.shape
    lam = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample((1,))
    shuffle = torch.randperm(bs)
    cut_rat = torch.sqrt(1.0 - lam)
    cut_w, cut_h = int(torch.round(w * cut_rat)), int(torch.round(h * cut_rat))
    cx, cy = int(torch.randint(0, w, (1,))), int(torch.randint(0, h, (1,)))
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    out = x.clone()
    out[..., y1:y2, x1:x2] = x[shuffle][..., y1:y2, x1:x2]
    lam_kept = 1 - (x2 - x1) * (y2 - y1) / (w * h)
    return out, lam_kept * y + (1 - lam_kept) * y[shuffle], lam_kept


@pytest.mark.parametrize("seed", range(6))
def test_cut_batch_equals_fastai_cutmix_callback(seed: int) -> None:
    """fastai's own ``CutMix`` callback on a stand-in learner, replayed from the same seed: identical images,
    targets and corrected lambda (fastai mixes the losses with it; we mix the one-hot targets)."""
    fastai_mixup = pytest.importorskip("fastai.callback.mixup")
    x, y = batch(seed=seed)
    learn = SimpleNamespace(xb=(x.clone(),), yb=(y.clone(),), loss_func=None)
    learn.x, learn.y = learn.xb[0], learn.yb[0]
    cb = fastai_mixup.CutMix(alpha=1.0)
    cb.learn = learn
    cb.stack_y = False  # soft targets: fastai mixes yb itself
    torch.manual_seed(100 + seed)
    cb.before_batch()
    torch.manual_seed(100 + seed)
    xm, ym, lam = cut_batch(x, y, 1.0)
    assert torch.equal(xm, learn.xb[0])
    assert torch.allclose(ym, learn.yb[0], atol=1e-6)
    assert lam == pytest.approx(float(cb.lam), abs=1e-6)
    torch.manual_seed(100 + seed)
    px, py, plam = paper_cut(x, y, 1.0)  # and the transcription, which needs no fastai
    assert torch.equal(xm, px) and torch.allclose(ym, py, atol=1e-6) and lam == pytest.approx(plam)


def test_fastai_draws_one_lambda_per_batch() -> None:
    """fastai's CutMix samples ``(1,)``: one lambda and one box for the whole batch (mixup: one per sample)."""
    x, y = batch(n=16, h=32, w=32)
    torch.manual_seed(0)
    _, ym, lam = cut_batch(x, y, 1.0)
    own = (ym * y).sum(dim=1)  # each sample's weight on its own class
    partner = ym.sum(dim=1) - own
    assert torch.allclose(ym.sum(dim=1), torch.ones(16))
    assert all(math.isclose(v, lam, abs_tol=1e-6) or math.isclose(v, 1.0, abs_tol=1e-6) for v in own.tolist())
    assert (partner <= 1 - lam + 1e-6).all()


# ---------------------------------------------------------------------------------------------------------------
# The pasted batch


def test_box_holds_the_partner_and_the_rest_is_unchanged() -> None:
    n, c = 6, 6
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 12, 12).clone()  # image i is all i
    y = F.one_hot(torch.arange(n), c).float()  # distinct classes: own and partner weights are readable
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    box = Box(x1=2, y1=3, x2=8, y2=7)  # 6 x 4 of 12 x 12
    xm, ym, lam = paste_box(x, y, perm, box)
    assert lam == pytest.approx(1 - 24 / 144)
    inside = torch.zeros(12, 12, dtype=torch.bool)
    inside[3:7, 2:8] = True
    for i in range(n):
        assert torch.equal(xm[i][:, inside], x[perm[i]][:, inside])
        assert torch.equal(xm[i][:, ~inside], x[i][:, ~inside])
        assert ym[i, i].item() == pytest.approx(lam) and ym[i, perm[i]].item() == pytest.approx(1 - lam)
    assert torch.allclose(ym.sum(dim=1), torch.ones(n))
    assert torch.equal(x[:, :, 3, 2], torch.arange(n, dtype=torch.float32).view(n, 1).expand(n, 3))  # input intact


def test_targets_sum_to_one_and_weigh_the_kept_share() -> None:
    x, y = batch(n=32, n_classes=10, h=24, w=24, seed=1)
    for seed in range(20):
        torch.manual_seed(seed)
        xm, ym, lam = cut_batch(x, y, 1.0)
        assert 0.0 <= lam <= 1.0
        assert torch.allclose(ym.sum(dim=1), torch.ones(32), atol=1e-6)
        # a one-hot sample's own class gets lam, its partner's 1 - lam (or all of it when the classes agree)
        own = (ym * y).sum(dim=1)
        assert all(math.isclose(v, lam, abs_tol=1e-6) or math.isclose(v, 1.0, abs_tol=1e-6) for v in own.tolist())
        changed = (xm != x).any(dim=1)  # [B, H, W]: pixels that changed are all inside one shared box
        assert changed.sum().item() <= (1 - lam) * 24 * 24 * 32 + 1e-6


def test_deterministic_under_a_seed() -> None:
    x, y = batch()
    torch.manual_seed(11)
    a = cut_batch(x, y, 1.0)
    torch.manual_seed(11)
    b = cut_batch(x, y, 1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    c = cut_batch(x, y, 1.0)
    assert not (torch.equal(a[0], c[0]) and a[2] == c[2])


def test_mean_kept_share_is_above_a_half_as_the_report_estimates() -> None:
    """Beta(1, 1) has mean 0.5; clipping and the floor-halved sides paste less: the report's estimate agrees with
    the box the training draws, and leaves the torch RNG alone."""
    torch.manual_seed(0)
    lams = torch.distributions.Beta(1.0, 1.0).sample((4000,))
    kept = [kept_share(rand_box(224, 224, lam), 224, 224) for lam in lams]
    mean = sum(kept) / len(kept)
    state = torch.get_rng_state()
    estimate = expected_kept_share(1.0)
    assert torch.equal(state, torch.get_rng_state())
    assert 0.65 < estimate < 0.71 and abs(mean - estimate) < 0.02
    assert expected_kept_share(1.0, side=128) == pytest.approx(estimate, abs=0.01)
    assert expected_kept_share(1.0) == estimate  # seeded


# ---------------------------------------------------------------------------------------------------------------
# The technique


def test_cutmix_is_registered_with_its_declarations() -> None:
    assert "cutmix" in technique_names()
    names = technique_names()
    assert names.index("mixup") < names.index("cutmix")
    cls = get_technique("cutmix")
    assert cls is CutMix and cls.summary and cls.source and cls.report is not None
    assert cls.defaults() == {"alpha": 1.0}
    assert cls.claims == frozenset({"batch"}) and cls.epoch_metric_keys == ("cutmix_lambda",)
    others = [get_technique(n).colour for n in names if n != "cutmix"]
    assert cls.colour not in others
    assert cls.report.chapter_step is None and cls.report.build is _section


def test_alpha_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"cutmix\.alpha = 0\.0 is out of range"):
        create_techniques(["cutmix"], {"cutmix": {"alpha": 0.0}})
    (tech,) = create_techniques(["cutmix"], {"cutmix": {"alpha": 0.5}})
    assert tech.hyperparameters() == {"alpha": 0.5}


def test_mixup_and_cutmix_cannot_share_a_cell() -> None:
    for names in (["mixup", "cutmix"], ["cutmix", "mixup"]):
        with pytest.raises(ConfigError) as err:
            create_techniques(names)
        msg = str(err.value)
        assert "'mixup'" in msg and "'cutmix'" in msg and "batch" in msg and "keep one of them" in msg
    check_compatible(["cutmix", "label_smoothing", "fp16", "normalize", "tta", "progressive"])


def test_epoch_metrics_are_the_mean_corrected_lambda_and_reset() -> None:
    (tech,) = create_techniques(["cutmix"])
    s = TrainState.__new__(TrainState)
    tech.setup(s)
    x, y = batch()
    lams = []
    torch.manual_seed(5)
    for _ in range(4):
        s.x, s.y = x.clone(), y.clone()
        tech.before_batch(s)
        assert s.x.shape == x.shape and s.y.shape == y.shape
        lams.append(kept_share_of(s.y, y))
    assert tech.epoch_metrics(s)["cutmix_lambda"] == pytest.approx(sum(lams) / 4, abs=1e-6)
    assert tech.epoch_metrics(s) == {}  # reset: no batches since
    s.x, s.y = x.clone(), y.clone()
    tech.before_batch(s)
    assert tech.epoch_metrics(s)["cutmix_lambda"] == pytest.approx(kept_share_of(s.y, y), abs=1e-6)
    assert tech == CutMix() and hash(tech) == hash(CutMix())  # the running mean is not a hyperparameter


def kept_share_of(mixed: torch.Tensor, one_hot: torch.Tensor) -> float:
    """The batch's lambda from its mixed targets: the smallest own-class weight (1 for self-paired samples)."""
    return float((mixed * one_hot).sum(dim=1).min())


def tiny_data(n_train: int = 16, n_valid: int = 4, side: int = 20) -> ImageData:
    g = torch.Generator().manual_seed(0)

    def make(n: int) -> ImageSet:
        images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
        sizes = torch.full((n, 2), side, dtype=torch.int32)
        labels = torch.randint(0, 3, (n,), generator=g)
        return ImageSet(images=images, sizes=sizes, labels=labels, paths=[""] * n, presize=side)

    return ImageData(make(n_train), make(n_valid), ["a", "b", "c"], {"source": "synthetic"})


def test_one_epoch_of_training_logs_cutmix_lambda() -> None:
    cfg = TrainConfig(model="xresnet18", size=16, batch_size=8, epochs=2)
    torch.manual_seed(0)
    s = build_state(cfg, tiny_data(), torch.device("cpu"))
    records = fit(s, create_techniques(["cutmix"]))
    assert len(records) == 2
    for record in records:
        assert 0.0 < record.extra["cutmix_lambda"] <= 1.0
        assert math.isfinite(record.train_loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cutmix_never_syncs_the_host_on_cuda() -> None:
    cuda = torch.device("cuda")
    x, y = batch(n=16, h=32, w=32)
    x, y = x.to(cuda), y.to(cuda)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(4):
                xm, ym, lam = cut_batch(x, y, 1.0)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert not [w for w in caught if "synchroniz" in str(w.message)]
    assert xm.device.type == "cuda" and ym.device.type == "cuda" and 0 <= lam <= 1


# ---------------------------------------------------------------------------------------------------------------
# The report section


class FakeContext:
    """``SectionContext`` recording what the section adds."""

    def __init__(self, dataset: Path | None, values: dict[int, float] | None = None) -> None:
        self.cell = "cutmix"
        self.reference: str | None = "none"
        self.dataset = dataset
        self.dataset_note = "images from `--data here`" if dataset else "no dataset folder was recorded"
        self.class_names = {WNIDS[0]: "tench", WNIDS[1]: "English springer"}
        self.data: Any = None
        self._values = values or {}
        self.figures: list[tuple[str, Callable[[], Any], str, str]] = []
        self.sentences: list[str] = []
        self.notes: list[str] = []
        self.illustrations: list[str] = []
        self.asked: list[str] = []

    def values(self, column: str, cell: str | None = None) -> dict[int, float]:
        self.asked.append(column)
        return dict(self._values) if column == "metrics.cutmix_lambda" else {}

    def param(self, key: str, default: Any = None, cell: str | None = None) -> Any:
        return {"tech.cutmix.alpha": 1.0}.get(key, default)

    def figure(self, name: str, build: Callable[[], Any], alt: str, caption: str = "") -> None:
        self.figures.append((name, build, alt, caption))

    def sentence(self, text: str) -> None:
        self.sentences.append(text)

    def illustration(self, text: str) -> None:
        self.illustrations.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)


def test_section_adds_the_example_figure_and_the_mean_lambda(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    folder = make_image_folder(tmp_path / "images", n_train=2, n_valid=1)
    ctx = FakeContext(folder, values={0: 0.61, 1: 0.63})
    _section(ctx)
    assert not ctx.notes
    ((name, build, alt, caption),) = ctx.figures
    assert name == FIGURE == "cutmix_example.png"
    assert "tench" in alt and "English springer" in alt and "0.70" in caption
    fig = build()
    try:
        assert len(fig.axes) == 4
        fig.canvas.draw()
        fig.savefig(tmp_path / name)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert (tmp_path / name).stat().st_size > 0
    (sentence,) = ctx.sentences
    assert "0.620" in sentence and "2 seeds" in sentence and f"keeps {expected_kept_share(1.0):.2f}" in sentence
    assert ctx.asked == ["metrics.cutmix_lambda"]


def test_section_without_dataset_notes_why_and_without_runs_says_nothing(tmp_path: Path) -> None:
    ctx = FakeContext(None)
    _section(ctx)
    assert ctx.notes == ["CutMix figure skipped: no dataset folder was recorded"]
    assert not ctx.figures and not ctx.sentences
    one_class = tmp_path / "one"
    (one_class / "train" / WNIDS[0]).mkdir(parents=True)
    ctx = FakeContext(one_class, values={0: float("nan")})
    _section(ctx)
    assert ctx.notes and ctx.notes[0].startswith("CutMix figure skipped: ") and not ctx.figures
    assert not ctx.sentences
