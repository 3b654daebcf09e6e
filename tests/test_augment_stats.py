"""The augmentation's random draws follow fastai's ``aug_transforms(size, min_scale=0.75)`` distributions.

The reference values are fastai's documented defaults (docs/fastai-semantics.md §5.4; fastai itself is not
needed): flip p 0.5; rotate U(-10°, 10°), zoom U(1, 1.1) with uniform centres, each warp magnitude U(-0.2, 0.2),
each applied independently with p_affine 0.75; random-resized-crop area U(0.75, 1) with ratio 1 at a uniform
position; brightness U(0.4, 0.6) and contrast exp(U(ln 0.8, -ln 0.8)), each with p_lighting 0.75. Every draw is
per image (``batch=False``).

Each distribution is checked twice: on the parameters ``sample_params`` draws (many draws, exact tests), and as
seen in the transformed images (coordinate-ramp images whose pixel values reveal where each output pixel was
sampled, and grey images whose output values reveal the lighting). The seeds are fixed, so the tests are
deterministic; the bounds are 5 binomial standard deviations for rates and the 0.1 % Kolmogorov-Smirnov
critical value for distributions.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from sota_ablate.data import AugmentConfig, sample_params, train_transform, valid_transform

N_PARAMS = 20_000  # parameter draws
N_IMAGES = 4096  # transformed images
OFF = AugmentConfig(min_scale=1.0, do_flip=False, p_affine=0.0, p_lighting=0.0)  # the identity


def assert_rate(mask: torch.Tensor, p: float) -> None:
    """The fraction of True in ``mask`` is ``p`` within 5 binomial standard deviations."""
    n = mask.numel()
    rate = mask.float().mean().item()
    assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9, f"rate {rate:.4f}, expected {p} (n={n})"


def assert_uniform(samples: torch.Tensor, low: float, high: float) -> None:
    """Kolmogorov-Smirnov test of ``samples`` against U(low, high) at the 0.1 % level (critical 1.95 / sqrt(n))."""
    x = torch.sort(samples.double().flatten()).values
    n = x.numel()
    assert n > 100
    cdf = ((x - low) / (high - low)).clamp(0, 1)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = max((i / n - cdf).max().item(), (cdf - (i - 1) / n).max().item())
    assert d < 1.95 / math.sqrt(n), f"KS distance {d:.4f} from U({low}, {high}) with n={n}"


@pytest.fixture(scope="module")
def params() -> object:
    torch.manual_seed(0)
    return sample_params(N_PARAMS, AugmentConfig())


# --------------------------------------------------------------------------------------------------------------
# The parameters


def test_flip_rate(params) -> None:
    assert_rate(params.flip, 0.5)


def test_rotate_rate_and_angle(params) -> None:
    rotated = params.angle != 0
    assert_rate(rotated, 0.75)
    assert_uniform(params.angle[rotated] * 180 / math.pi, -10.0, 10.0)


def test_zoom_rate_scale_and_centre(params) -> None:
    zoomed = params.zoom != 1
    assert_rate(zoomed, 0.75)
    assert_uniform(params.zoom[zoomed], 1.0, 1.1)
    assert_uniform(params.zoom_x, 0.0, 1.0)  # centres are always drawn (fastai's Zoom draws col_pct, row_pct)
    assert_uniform(params.zoom_y, 0.0, 1.0)


def test_warp_rates_and_magnitudes(params) -> None:
    wx, wy = params.warp_x != 0, params.warp_y != 0
    assert_rate(wx, 0.75)
    assert_rate(wy, 0.75)
    assert_rate(wx & wy, 0.75**2)  # x and y are masked independently (fastai's _WarpCoord)
    assert_uniform(params.warp_x[wx], -0.2, 0.2)
    assert_uniform(params.warp_y[wy], -0.2, 0.2)


def test_crop_scale_and_position(params) -> None:
    """RandomResizedCropGPU(size, min_scale=0.75, ratio=(1, 1)): area fraction U(0.75, 1), uniform position."""
    assert_uniform(params.crop_area, 0.75, 1.0)
    assert_uniform(params.crop_x, 0.0, 1.0)
    assert_uniform(params.crop_y, 0.0, 1.0)
    assert_uniform(params.square_x, 0.0, 1.0)  # Resize's random square along the long side
    assert_uniform(params.square_y, 0.0, 1.0)


def test_lighting_rates_and_values(params) -> None:
    bright, contrast = params.brightness != 0.5, params.contrast != 1
    assert_rate(bright, 0.75)
    assert_rate(contrast, 0.75)
    assert_uniform(params.brightness[bright], 0.4, 0.6)
    assert_uniform(torch.log(params.contrast[contrast]), math.log(0.8), -math.log(0.8))


def test_transforms_are_applied_independently(params) -> None:
    """Each transform has its own mask: every pair is applied together with probability p_a * p_b."""
    masks = {
        "flip": (params.flip, 0.5),
        "rotate": (params.angle != 0, 0.75),
        "zoom": (params.zoom != 1, 0.75),
        "warp_x": (params.warp_x != 0, 0.75),
        "warp_y": (params.warp_y != 0, 0.75),
        "brightness": (params.brightness != 0.5, 0.75),
        "contrast": (params.contrast != 1, 0.75),
    }
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert_rate(masks[a][0] & masks[b][0], masks[a][1] * masks[b][1])


def test_draws_are_per_image() -> None:
    """fastai's ``batch=False``: one draw per image, never one per batch."""
    torch.manual_seed(1)
    p = sample_params(64, AugmentConfig())
    for values in (p.angle, p.zoom, p.warp_x, p.crop_area, p.crop_x, p.brightness, p.contrast):
        assert values.unique().numel() > 8
    assert 0 < p.flip.sum().item() < 64


def test_other_settings_are_followed() -> None:
    aug = AugmentConfig(
        min_scale=0.35, max_rotate=30.0, max_zoom=1.5, max_warp=0.4, max_lighting=0.4, p_affine=0.5, p_lighting=0.3
    )
    torch.manual_seed(2)
    p = sample_params(N_PARAMS, aug)
    assert_uniform(p.crop_area, 0.35, 1.0)
    rotated = p.angle != 0
    assert_rate(rotated, 0.5)
    assert_uniform(p.angle[rotated] * 180 / math.pi, -30.0, 30.0)
    assert_rate(p.zoom != 1, 0.5)
    assert_uniform(p.zoom[p.zoom != 1], 1.0, 1.5)
    assert_rate(p.warp_x != 0, 0.5)
    assert_uniform(p.warp_x[p.warp_x != 0], -0.4, 0.4)
    bright = p.brightness != 0.5
    assert_rate(bright, 0.3)
    assert_uniform(p.brightness[bright], 0.3, 0.7)
    contrast = p.contrast != 1
    assert_rate(contrast, 0.3)
    assert_uniform(torch.log(p.contrast[contrast]), math.log(0.6), -math.log(0.6))


def test_everything_off_is_neutral() -> None:
    torch.manual_seed(3)
    p = sample_params(1000, OFF)
    assert not p.flip.any()
    assert (p.angle == 0).all() and (p.zoom == 1).all() and (p.warp_x == 0).all() and (p.warp_y == 0).all()
    assert (p.crop_area == 1).all() and (p.brightness == 0.5).all() and (p.contrast == 1).all()


# --------------------------------------------------------------------------------------------------------------
# As seen in the images


def coordinate_ramp(side: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Square images whose red channel is 8 * x and green channel 8 * y: output values give the sampled point."""
    assert 8 * (side - 1) <= 255
    ramp = torch.arange(side, dtype=torch.float32) * 8
    image = torch.zeros(batch, 3, side, side)
    image[:, 0] = ramp[None, :]
    image[:, 1] = ramp[:, None]
    return image.to(torch.uint8), torch.full((batch, 2), side, dtype=torch.int32)


def sampled_coordinates(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) pixel coordinates of the square that each output pixel sampled."""
    return out[:, 0] * 255 / 8, out[:, 1] * 255 / 8


def test_crop_scale_seen_in_the_images() -> None:
    """The width each crop spans (from the ramp) gives its area: U(0.75, 1), square, at a uniform position."""
    side = 32
    images, sizes = coordinate_ramp(side, N_IMAGES)
    torch.manual_seed(4)
    out = train_transform(images, sizes, 16, replace(OFF, min_scale=0.75))
    x, y = sampled_coordinates(out)
    width = x[:, 0, -1] - x[:, 0, 0] + 1  # align_corners: the crop's end pixel centres are sampled
    height = y[:, -1, 0] - y[:, 0, 0] + 1
    assert torch.allclose(width, height, atol=1e-3)  # ratio (1, 1)
    assert_uniform((width / side) ** 2, 0.75, 1.0)
    slack = side - width
    inside = slack > 1
    assert_uniform(x[:, 0, 0][inside] / slack[inside], 0.0, 1.0)


def test_flip_rate_seen_in_the_images() -> None:
    images, sizes = coordinate_ramp(16, N_IMAGES)
    torch.manual_seed(5)
    out = train_transform(images, sizes, 16, replace(OFF, do_flip=True))
    x, _ = sampled_coordinates(out)
    flipped = x[:, 0, 0] > x[:, 0, -1]
    assert_rate(flipped, 0.5)
    plain = valid_transform(images[:1], sizes[:1], 16)
    assert torch.allclose(out[flipped][:1], plain.flip(-1), atol=1e-5)


def test_rotation_rate_and_angle_seen_in_the_images() -> None:
    """Rotation alone: the angle read off the sampled coordinates at the centre is U(-10°, 10°) for 75 %."""
    images, sizes = coordinate_ramp(32, N_IMAGES)
    torch.manual_seed(6)
    out = train_transform(images, sizes, 32, replace(OFF, p_affine=0.75, max_zoom=1.0, max_warp=0.0))
    x, _ = sampled_coordinates(out)
    c = 16  # away from the reflected corners
    angle = torch.rad2deg(torch.atan2(x[:, c + 1, c] - x[:, c - 1, c], x[:, c, c + 1] - x[:, c, c - 1]))
    rotated = angle.abs() > 1e-3
    assert_rate(rotated, 0.75)
    assert_uniform(angle[rotated], -10.0, 10.0)


def test_zoom_rate_and_scale_seen_in_the_images() -> None:
    """Zoom alone: the span of sampled x is (side - 1) / zoom, zoom U(1, 1.1) for 75 % of the images."""
    side = 32
    images, sizes = coordinate_ramp(side, N_IMAGES)
    torch.manual_seed(7)
    out = train_transform(images, sizes, side, replace(OFF, p_affine=0.75, max_rotate=0.0, max_warp=0.0))
    x, y = sampled_coordinates(out)
    span_x, span_y = x[:, 0, -1] - x[:, 0, 0], y[:, -1, 0] - y[:, 0, 0]
    assert torch.allclose(span_x, span_y, atol=1e-3)  # zoom keeps the aspect
    zoom = (side - 1) / span_x
    zoomed = zoom > 1 + 1e-4
    assert_rate(zoomed, 0.75)
    assert_uniform(zoom[zoomed], 1.0, 1.1)
    # The zoomed window lies inside the square and its position is uniform over the free range.
    left = x[:, 0, 0][zoomed]
    free = (side - 1) - span_x[zoomed]
    assert (left >= -1e-3).all() and (left <= free + 1e-3).all()
    assert_uniform(left / free, 0.0, 1.0)


def test_warp_rate_seen_in_the_images() -> None:
    """Warp alone: an image is warped (its sampling grid is not affine) unless both magnitudes were masked out."""
    images, sizes = coordinate_ramp(32, N_IMAGES)
    for seed, p_affine in ((8, 0.75), (9, 0.5)):
        torch.manual_seed(seed)
        aug = replace(OFF, p_affine=p_affine, max_rotate=0.0, max_zoom=1.0)
        out = train_transform(images, sizes, 32, aug)
        x, y = sampled_coordinates(out)
        curvature = torch.zeros(N_IMAGES)
        for coord in (x, y):  # second differences along both axes vanish exactly for an affine grid
            curvature = torch.maximum(
                curvature, (coord[:, :, 2:] - 2 * coord[:, :, 1:-1] + coord[:, :, :-2]).abs().amax((1, 2))
            )
            curvature = torch.maximum(curvature, (coord[:, 2:] - 2 * coord[:, 1:-1] + coord[:, :-2]).abs().amax((1, 2)))
        assert_rate(curvature > 2e-3, 1 - (1 - p_affine) ** 2)


def test_lighting_seen_in_the_images() -> None:
    """Two grey halves give each image's brightness and contrast: ``logit(out) = (logit(v) + logit(b)) * c``."""
    images = torch.zeros(N_IMAGES, 3, 16, 16, dtype=torch.uint8)
    images[..., :8], images[..., 8:] = 200, 60
    sizes = torch.full((N_IMAGES, 2), 16, dtype=torch.int32)
    torch.manual_seed(10)
    out = train_transform(images, sizes, 16, replace(OFF, p_lighting=0.75))
    logit = lambda v: torch.log(v / (1 - v))  # noqa: E731
    la, lb = logit(out[:, 0, 4, 2].double()), logit(out[:, 0, 4, 13].double())
    va, vb = math.log(200 / 55), math.log(60 / 195)
    contrast = (la - lb) / (va - vb)
    brightness = torch.sigmoid(la / contrast - va)
    changed_c = (contrast - 1).abs() > 1e-4
    changed_b = (brightness - 0.5).abs() > 1e-4
    assert_rate(changed_c, 0.75)
    assert_rate(changed_b, 0.75)
    assert_rate(changed_b & changed_c, 0.75**2)
    assert_uniform(torch.log(contrast[changed_c]), math.log(0.8), -math.log(0.8))
    assert_uniform(brightness[changed_b], 0.4, 0.6)
