"""Our batched augmentation against fastai's own transforms, with the same random draws forced on both.

``test_augment.py`` checks the maths against references written from fastai's formulas; here the reference
is fastai itself (``fastai.vision.augment``: ``Flip``, ``Rotate``, ``Zoom``, ``Warp``, ``Brightness``,
``Contrast``, ``RandomResizedCropGPU``), so a misread formula, a sign or an axis swap cannot hide. fastai is a
test and benchmark dependency only (the ``test`` and ``bench`` extras), never a runtime one; without it these
tests are skipped.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from sota_ablate.data.augment import AugmentConfig, AugmentParams, train_transform, valid_transform

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # fastai's import warns about torch.jit.script on recent torch
    fa = pytest.importorskip("fastai.vision.augment")
    fastai_torch_core = pytest.importorskip("fastai.torch_core")
    fastcore_transform = pytest.importorskip("fasttransform")

B, PRESIZE, SIZE = 12, 131, 64


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random uint8 images at the presize (bilinear upsampling of 12 x 12 noise): natural-image-like
    spectra, so that differences of geometry show and resampling details do not dominate."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(B, 3, 12, 12, generator=g)
    x = F.interpolate(small, size=(PRESIZE, PRESIZE), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8), torch.full((B, 2), PRESIZE, dtype=torch.int32)


def draws(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def u(low: float, high: float) -> torch.Tensor:
        return torch.rand(B, generator=g) * (high - low) + low

    return {
        "flip": torch.rand(B, generator=g) < 0.5,
        "degrees": u(-10, 10),
        "zoom": u(1.0, 1.1),
        "zoom_x": u(0, 1),
        "zoom_y": u(0, 1),
        "warp_x": u(-0.2, 0.2),
        "warp_y": u(-0.2, 0.2),
        "brightness": u(0.4, 0.6),
        "contrast": torch.exp(u(math.log(0.8), -math.log(0.8))),
    }


def ours(images: tuple[torch.Tensor, torch.Tensor], **kw: torch.Tensor) -> torch.Tensor:
    """Our train_transform with explicit draws; everything not given is neutral (crop = the whole square)."""
    z, o = torch.zeros(B), torch.ones(B)
    params = {
        "square_x": z, "square_y": z, "flip": z.bool(), "angle": z, "zoom": o, "zoom_x": z + 0.5,
        "zoom_y": z + 0.5, "warp_x": z, "warp_y": z, "crop_area": o, "crop_x": z, "crop_y": z,
        "brightness": z + 0.5, "contrast": o,
    }  # fmt: skip
    params.update(kw)
    x8, sizes = images
    return train_transform(x8, sizes, SIZE, AugmentConfig(), presize=PRESIZE, params=AugmentParams(**params))


def fastai(images: tuple[torch.Tensor, torch.Tensor], tfms: list) -> torch.Tensor:
    """fastai's batch pipeline (combined the way ``aug_transforms`` combines it) in training mode."""
    pipe = fastcore_transform.Pipeline(fa.setup_aug_tfms(tfms), split_idx=0)
    out = pipe(fastai_torch_core.TensorImage(images[0].float() / 255))
    return torch.Tensor(out).as_subclass(torch.Tensor).float()


def assert_close(a: torch.Tensor, b: torch.Tensor, mean: float = 0.002, worst: float = 0.01) -> None:
    diff = (a - b).abs()
    assert diff.mean().item() < mean and diff.max().item() < worst, (diff.mean().item(), diff.max().item())


def test_affine_and_warp_match_fastai(images) -> None:
    """Flip, rotate, zoom (with its centre) and warp, alone and combined as aug_transforms combines them."""
    d = draws()
    kw = {"size": SIZE, "p": 1.0}
    flip = fa.Flip(draw=d["flip"].float().tolist(), **kw)
    rotate = fa.Rotate(draw=d["degrees"].tolist(), **kw)
    zoom = fa.Zoom(draw=d["zoom"].tolist(), draw_x=d["zoom_x"].tolist(), draw_y=d["zoom_y"].tolist(), **kw)
    warp = fa.Warp(draw_x=d["warp_x"].tolist(), draw_y=d["warp_y"].tolist(), **kw)
    angle = d["degrees"] * math.pi / 180
    zoom_kw = {"zoom": d["zoom"], "zoom_x": d["zoom_x"], "zoom_y": d["zoom_y"]}
    warp_kw = {"warp_x": d["warp_x"], "warp_y": d["warp_y"]}
    assert_close(fastai(images, [flip]), ours(images, flip=d["flip"]))
    assert_close(fastai(images, [rotate]), ours(images, angle=angle))
    assert_close(fastai(images, [zoom]), ours(images, **zoom_kw))
    assert_close(fastai(images, [warp]), ours(images, **warp_kw))
    # aug_transforms' order: Flip, Warp, Rotate, Zoom -> one matrix Flip @ Rotate @ Zoom, then the warp.
    combined = fastai(images, [flip, warp, rotate, zoom])
    assert_close(combined, ours(images, flip=d["flip"], angle=angle, **zoom_kw, **warp_kw))
    # The check has teeth: the opposite rotation is far off.
    assert (combined - ours(images, flip=d["flip"], angle=-angle, **zoom_kw, **warp_kw)).abs().mean() > 0.01


def test_lighting_matches_fastai(images) -> None:
    d = draws(2)
    identity = fa.Zoom(min_zoom=1.0, max_zoom=1.0, p=1.0, size=SIZE)
    tfms = [
        identity,
        fa.Brightness(p=1.0, draw=d["brightness"].tolist()),
        fa.Contrast(p=1.0, draw=d["contrast"].tolist()),
    ]
    assert_close(fastai(images, tfms), ours(images, brightness=d["brightness"], contrast=d["contrast"]))


@pytest.mark.parametrize(("area", "top_left"), [(0.78, (3, 11)), (0.9, (0, 6)), (1.0, (0, 0))])
def test_random_resized_crop_matches_fastai(images, area: float, top_left: tuple[int, int]) -> None:
    """fastai resamples the rotated image at the presize, crops it and resizes the crop; we resample once, so
    only interpolation differs (about 1 % of the range on average), not geometry."""
    d = draws(3)
    side = round(math.sqrt(area * PRESIZE * PRESIZE))
    crop = fa.RandomResizedCropGPU(SIZE, min_scale=0.75, ratio=(1, 1))

    def fixed(b, split_idx=None) -> None:  # the crop fastai would draw, forced
        crop.do, crop.cp_size, crop.tl = True, (side, side), top_left

    crop.before_call = fixed
    rotate = fa.Rotate(draw=d["degrees"].tolist(), p=1.0)  # size=None, as aug_transforms with min_scale < 1
    theirs = fastai(images, [rotate, crop])
    slack = max(PRESIZE - side, 1)
    full = torch.full((B,), 1.0)
    mine = ours(
        images,
        angle=d["degrees"] * math.pi / 180,
        crop_area=full * side * side / PRESIZE**2,
        crop_x=full * top_left[1] / slack,
        crop_y=full * top_left[0] / slack,
    )
    assert_close(theirs, mine, mean=0.01, worst=0.15)
    # Teeth: the crop at the mirrored position is clearly further off (when there is room to move).
    if side < PRESIZE:
        moved = ours(images, angle=d["degrees"] * math.pi / 180, crop_area=full * side * side / PRESIZE**2)
        moved_diff = (theirs - moved).abs().mean().item()
        assert moved_diff > 2 * (theirs - mine).abs().mean().item()


def test_validation_matches_fastai(images) -> None:
    """Validation: RandomResizedCropGPU in valid mode (whole square, area pre-shrink, bilinear)."""
    crop = fa.RandomResizedCropGPU(SIZE, min_scale=0.75, ratio=(1, 1))
    pipe = fastcore_transform.Pipeline([crop], split_idx=1)
    theirs = torch.Tensor(pipe(fastai_torch_core.TensorImage(images[0].float() / 255))).as_subclass(torch.Tensor)
    assert_close(theirs.float(), valid_transform(*images, SIZE, presize=PRESIZE))
