"""Batched augmentation: exact references for the deterministic paths, fastai's distributions for the random ones."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from sota_ablate.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    normalize,
    sample_params,
    train_transform,
    valid_transform,
)
from sota_ablate.data.augment import _warp_coefficients

OFF = AugmentConfig(min_scale=1.0, do_flip=False, p_affine=0.0, p_lighting=0.0)
N = 4096


def canvas(height: int, width: int, side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One random uint8 image of ``height x width`` at the top left of a ``side`` canvas (edge-replicated)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, 3, height, width), generator=g, dtype=torch.uint8)
    out = F.pad(image.float(), (0, side - width, 0, side - height), mode="replicate").to(torch.uint8)
    return out, torch.tensor([[height, width]], dtype=torch.int32)


def ramp(side: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A square image whose red channel is 8 * x: its values reveal the sampled x coordinates."""
    x = torch.arange(side, dtype=torch.float32) * 8
    image = torch.zeros(batch, 3, side, side)
    image[:, 0] = x
    image[:, 1] = x.flip(0)
    return image.to(torch.uint8), torch.full((batch, 2), side, dtype=torch.int32)


def fastai_reference(image: torch.Tensor, theta: torch.Tensor, coeffs: torch.Tensor | None = None) -> torch.Tensor:
    """fastai's affine step on a square float image: affine_grid, optional perspective, reflection grid_sample."""
    grid = F.affine_grid(theta, list(image.shape), align_corners=True)
    if coeffs is not None:
        b, h, w, _ = grid.shape
        points = torch.cat([grid.reshape(b, -1, 2), torch.ones(b, h * w, 1)], dim=-1)
        matrix = torch.cat([coeffs, torch.ones(b, 1)], dim=1).view(b, 3, 3)
        mapped = points @ matrix.transpose(1, 2)
        grid = (mapped[..., :2] / mapped[..., 2:]).view(b, h, w, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


# --------------------------------------------------------------------------------------------------------------
# Deterministic paths


def _warp(qx, qy, warp_x, warp_y):  # type: ignore[no-untyped-def]
    """fastai's perspective warp applied to coordinates with the coefficients ``augment`` computes."""
    h = [c.reshape(-1, *([1] * (qx.dim() - 1))) for c in _warp_coefficients(warp_x, warp_y)]
    den = h[6] * qx + h[7] * qy + 1
    return (h[0] * qx + h[1] * qy + h[2]) / den, (h[3] * qx + h[4] * qy + h[5]) / den


def test_valid_is_the_centre_crop_resized() -> None:
    images, sizes = canvas(20, 30, 30)  # landscape 30 x 20: centre square at x = 5
    out = valid_transform(images, sizes, 16, presize=20)
    crop = images[:, :, :20, 5:25].float() / 255
    reference = F.interpolate(crop, size=(16, 16), mode="bilinear", align_corners=True)
    assert torch.allclose(out, reference, atol=1e-5)

    portrait, sizes = canvas(31, 20, 31)  # portrait 20 x 31: centre square at y = floor(11 / 2) = 5
    out = valid_transform(portrait, sizes, 12, presize=20)
    reference = F.interpolate(
        portrait[:, :, 5:25, :20].float() / 255, size=(12, 12), mode="bilinear", align_corners=True
    )
    assert torch.allclose(out, reference, atol=1e-5)


def test_valid_pre_shrinks_with_area_like_fastai() -> None:
    # A smooth image (so that half-pixel conventions do not matter), downscaled 64 -> 8: area first, then bilinear.
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
    smooth = torch.stack([xx * 2.5, yy * 3.5, (xx + yy) * 1.5]).clamp(0, 255)[None]
    images = F.pad(smooth, (0, 0, 0, 32), mode="replicate").to(torch.uint8)
    sizes = torch.tensor([[64, 96]], dtype=torch.int32)
    out = valid_transform(images, sizes, 8, presize=64)
    crop = images[:, :, :64, 16:80].float() / 255
    reference = F.interpolate(
        F.interpolate(crop, scale_factor=0.25, mode="area"), size=(8, 8), mode="bilinear", align_corners=True
    )
    assert (out - reference).abs().mean() < 0.01

    # One-pixel stripes: the area pre-shrink averages them to grey, where a plain bilinear resize would alias.
    stripes = (torch.arange(96) % 2 * 255).expand(1, 3, 96, 96).to(torch.uint8).contiguous()
    out = valid_transform(stripes, sizes, 8, presize=64)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.02)
    naive = F.interpolate(stripes[:, :, :64, 16:80].float() / 255, size=(8, 8), mode="bilinear", align_corners=True)
    assert (naive - 0.5).abs().max() > 0.4


def test_train_with_everything_off_equals_valid() -> None:
    images, sizes = canvas(24, 24, 24)
    images, sizes = images.expand(8, -1, -1, -1), sizes.expand(8, -1)
    for size in (24, 16, 5):  # no shrink, and an area pre-shrink (24 / (2 * 5) > 1)
        torch.manual_seed(0)
        assert torch.allclose(
            train_transform(images, sizes, size, OFF), valid_transform(images, sizes, size), atol=1e-6
        )


def test_affine_and_warp_match_fastais_resample() -> None:
    """Flip, rotate, zoom and warp at full size (no crop): fastai's affine_grid + perspective + reflection."""
    side = 32
    images, sizes = canvas(side, side, side, seed=3)
    images, sizes = images.expand(6, -1, -1, -1), sizes.expand(6, -1)
    torch.manual_seed(1)
    aug = AugmentConfig(min_scale=1.0, p_affine=1.0, max_rotate=30.0, max_zoom=1.3, p_lighting=0.0)
    params = sample_params(6, aug)
    params.flip = torch.tensor([True, False, True, False, True, False])
    out = train_transform(images, sizes, side, aug, params=params)

    s = 1 / params.zoom
    tx, ty = (1 - s) * (2 * params.zoom_x - 1), (1 - s) * (2 * params.zoom_y - 1)
    eye = torch.eye(3).repeat(6, 1, 1)
    flip, rotate, zoom = eye.clone(), eye.clone(), eye.clone()
    flip[:, 0, 0] = torch.where(params.flip, -1.0, 1.0)
    c, n = params.angle.cos(), params.angle.sin()
    rotate[:, 0, 0], rotate[:, 0, 1], rotate[:, 1, 0], rotate[:, 1, 1] = c, n, -n, c
    zoom[:, 0, 0], zoom[:, 1, 1], zoom[:, 0, 2], zoom[:, 1, 2] = s, s, tx, ty
    theta = (flip @ rotate @ zoom)[:, :2]
    coeffs = find_coeffs(params.warp_x, params.warp_y)
    reference = fastai_reference(images.float() / 255, theta, coeffs)
    assert torch.allclose(out, reference, atol=2e-4)


def find_coeffs(warp_x: torch.Tensor, warp_y: torch.Tensor) -> torch.Tensor:
    """fastai's ``find_coeffs(orig_pts, targ_pts)`` for the warp corners, solved with torch.linalg.solve."""
    orig = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]).expand(len(warp_x), 4, 2)
    x, y = warp_x, warp_y
    targ = torch.stack([torch.stack([-1 - y, -1 - x], -1), torch.stack([-1 + y, 1 + x], -1),
                        torch.stack([1 + y, -1 + x], -1), torch.stack([1 - y, 1 - x], -1)], dim=1)  # fmt: skip
    rows = []
    for i in range(4):
        (ux, uy), (vx, vy) = targ[:, i].unbind(-1), orig[:, i].unbind(-1)
        one, zero = torch.ones_like(ux), torch.zeros_like(ux)
        rows.append(torch.stack([ux, uy, one, zero, zero, zero, -vx * ux, -vx * uy], -1))
        rows.append(torch.stack([zero, zero, zero, ux, uy, one, -vy * ux, -vy * uy], -1))
    return torch.linalg.solve(torch.stack(rows, 1), orig.reshape(-1, 8, 1))[..., 0]


def test_warp_maps_the_moved_corners_back() -> None:
    wx, wy = torch.tensor([0.2, -0.1, 0.0]), torch.tensor([0.05, 0.2, 0.0])
    for (cx, cy), (tx, ty) in [
        ((-1, -1), (-1 - wy, -1 - wx)),
        ((1, 1), (1 - wy, 1 - wx)),
        ((1, -1), (1 + wy, -1 + wx)),
    ]:
        x, y = _warp(tx[:, None, None], ty[:, None, None], wx, wy)
        assert torch.allclose(x.flatten(), torch.full((3,), float(cx)), atol=1e-5)
        assert torch.allclose(y.flatten(), torch.full((3,), float(cy)), atol=1e-5)


def test_constant_image_stays_constant_under_geometry() -> None:
    """Reflection padding and the edge-replicated canvas: no black borders, whatever the draw."""
    images = torch.full((64, 3, 40, 40), 200, dtype=torch.uint8)
    sizes = torch.tensor([[24, 40], [40, 24]] * 32, dtype=torch.int32)  # landscape and portrait in the canvas
    aug = replace(AugmentConfig(), p_affine=1.0, max_rotate=45.0, max_zoom=1.5, p_lighting=0.0)
    torch.manual_seed(0)
    for size in (24, 8):
        out = train_transform(images, sizes, size, aug, presize=24)
        assert torch.allclose(out, torch.full_like(out, 200 / 255), atol=1e-4)


def test_output_dtype_shape_range_and_seed() -> None:
    images, sizes = canvas(30, 40, 40)
    images, sizes = images.expand(16, -1, -1, -1).contiguous(), sizes.expand(16, -1)
    torch.manual_seed(5)
    first = train_transform(images, sizes, 20, AugmentConfig(), presize=30)
    torch.manual_seed(5)
    second = train_transform(images, sizes, 20, AugmentConfig(), presize=30)
    assert first.shape == (16, 3, 20, 20) and first.dtype == torch.float32
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    assert torch.equal(first, second)  # torch.manual_seed makes it reproducible
    assert not torch.equal(first[0], first[1])  # per-image draws


# --------------------------------------------------------------------------------------------------------------
# Distributions (fastai's aug_transforms defaults)


def test_parameter_distributions() -> None:
    torch.manual_seed(0)
    p = sample_params(N, AugmentConfig())
    assert abs(p.flip.float().mean().item() - 0.5) < 0.03
    rotated = p.angle != 0
    assert abs(rotated.float().mean().item() - 0.75) < 0.03
    assert p.angle.abs().max().item() <= math.radians(10) + 1e-6
    assert abs(p.angle[rotated].abs().mean().item() - math.radians(5)) < 0.005  # U(-10, 10) degrees
    zoomed = p.zoom != 1
    assert abs(zoomed.float().mean().item() - 0.75) < 0.03
    assert p.zoom.min().item() >= 1 and p.zoom.max().item() <= 1.1
    for warp in (p.warp_x, p.warp_y):
        assert abs((warp != 0).float().mean().item() - 0.75) < 0.03 and warp.abs().max().item() <= 0.2
    assert p.crop_area.min().item() >= 0.75 and p.crop_area.max().item() <= 1
    assert abs(p.crop_area.mean().item() - 0.875) < 0.005
    assert abs((p.brightness != 0.5).float().mean().item() - 0.75) < 0.03
    assert p.brightness.min().item() >= 0.4 and p.brightness.max().item() <= 0.6
    assert abs((p.contrast != 1).float().mean().item() - 0.75) < 0.03
    assert p.contrast.min().item() >= 0.8 - 1e-6 and p.contrast.max().item() <= 1.25 + 1e-6


def test_flip_rate_seen_in_the_images() -> None:
    images, sizes = ramp(16, N)
    torch.manual_seed(0)
    out = train_transform(images, sizes, 16, replace(OFF, do_flip=True))
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]  # the red ramp decreases left to right
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    valid = valid_transform(images[:1], sizes[:1], 16)
    assert torch.allclose(out[flipped][:1], valid.flip(-1), atol=1e-6)
    assert torch.allclose(out[~flipped][:1], valid, atol=1e-6)


def test_random_resized_crop_area_seen_in_the_images() -> None:
    """The ramp reveals each crop's width: area = (width / side)^2 must be U(0.75, 1), mean 0.875."""
    side = 32
    images, sizes = ramp(side, N)
    torch.manual_seed(0)
    out = train_transform(images, sizes, 16, replace(OFF, min_scale=0.75))
    red = out[:, 0] * 255 / 8  # the x coordinate sampled, in square pixels
    width = red[:, :, -1] - red[:, :, 0] + 1  # crop side in pixels (align_corners: centres of its end pixels)
    assert torch.allclose(width, width[:, :1].expand_as(width), atol=1e-3)  # square, no rotation
    area = (width[:, 0] / side) ** 2
    assert area.min().item() >= 0.75 - 1e-3 and area.max().item() <= 1 + 1e-3
    assert abs(area.mean().item() - 0.875) < 0.005
    left = red[:, 0, 0] / (side - width[:, 0]).clamp(min=1e-3)  # position as a fraction of the slack
    assert abs(left[width[:, 0] < side - 2].mean().item() - 0.5) < 0.03  # uniform position


def test_rotation_rate_seen_in_the_images() -> None:
    images, sizes = ramp(16, N)
    torch.manual_seed(0)
    out = train_transform(images, sizes, 16, replace(OFF, p_affine=0.75, max_warp=0.0, max_zoom=1.0))
    red = out[:, 0] * 255 / 8
    tilted = (red[:, 0, :] - red[:, -1, :]).abs().amax(dim=1) > 1e-3  # a rotated ramp varies along y
    assert abs(tilted.float().mean().item() - 0.75) < 0.03


def test_lighting_rate_and_effect() -> None:
    images = torch.full((N, 3, 8, 8), 200, dtype=torch.uint8)  # away from 0.5, so that contrast shows
    sizes = torch.full((N, 2), 8, dtype=torch.int32)
    torch.manual_seed(0)
    out = train_transform(images, sizes, 8, replace(OFF, p_lighting=0.75))
    changed = (out[:, 0, 0, 0] - 200 / 255).abs() > 1e-5
    assert abs(changed.float().mean().item() - (1 - 0.25**2)) < 0.02  # brightness or contrast, each p 0.75
    torch.manual_seed(0)
    p = sample_params(4, replace(OFF, p_lighting=1.0))
    out = train_transform(images[:4], sizes[:4], 8, replace(OFF, p_lighting=1.0), params=p)
    logit = math.log(200 / 55)
    expected = torch.sigmoid((logit + torch.log(p.brightness / (1 - p.brightness))) * p.contrast)
    assert torch.allclose(out[:, 1, 3, 3], expected, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Normalize


def test_normalize() -> None:
    x = torch.rand(2, 3, 4, 4)
    out = normalize(x)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(out, (x - mean) / std)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert torch.allclose(normalize(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), x * 2 - 1)


@pytest.mark.parametrize("bad", [(3, 1, 8, 8), (2, 3, 8)])
def test_bad_shapes_are_rejected(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="images must be"):
        valid_transform(torch.zeros(bad, dtype=torch.uint8), torch.zeros(bad[0], 2, dtype=torch.int32), 4)
