"""Batched, on-device augmentation with fastai's semantics (fastbook chapter 7's ``Resize(460)`` +
``aug_transforms(size, min_scale=0.75)``), as ONE ``F.grid_sample`` per batch.

fastai's pipeline (``fastai2/vision/augment.py``; see docs/fastai-semantics.md §5):

1. ``Resize(460)`` (CPU, per item): the largest square, at a random position along the long side (train) or
   centred (valid), resized to 460 x 460.
2. On the device: ``/255``; one affine resample at 460 px of ``Flip · Rotate · Zoom`` followed by a perspective
   warp of the sampling coordinates, with reflection padding; ``RandomResizedCropGPU(size, min_scale, ratio=1)``
   (with an area pre-shrink when the crop is downscaled by more than 2); lighting (brightness, then contrast,
   on logits).

Here every geometric step is a map of sampling coordinates, composed per image into one grid: output pixel →
random-resized crop of the square → flip · rotate · zoom → warp → reflection into the square (fastai's padding,
done on the normalised coordinates) → the image's canvas in the uint8 cache (``cache.py``). One bilinear
``grid_sample`` (align_corners=True) then reads the cached canvas directly. There are no per-image Python loops
and no host syncs; all randomness comes from the global torch RNG on the images' device.

Deliberate differences from fastai, all second order:

- one resample instead of three (PIL resize to 460, affine at 460, crop + resize): slightly sharper images;
- the cache holds the whole image at short side ``presize``, so the square crop happens on the device;
- fastai draws ONE random-resized crop per batch (Python ``random`` in ``before_call``); here each image gets
  its own (same marginal distribution, more diversity per batch), and its position is continuous, not integer;
- the area pre-shrink uses the nominal factor ``presize / (2 * size)`` for the whole batch and runs on the
  canvas (fastai: per crop, to exactly ``2 * size``), so the final bilinear step downscales by 1.7-2 instead of
  exactly 2 when the crop is smaller than the square.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_LOGIT_EPS = 1e-7  # fastai clamps to [1e-7, 1 - 1e-7] before taking the logit


@dataclass(frozen=True)
class AugmentConfig:
    """fastai's ``aug_transforms`` defaults, with the chapter's ``min_scale=0.75``.

    Attributes:
        min_scale: smallest area fraction of the random-resized crop (``RandomResizedCropGPU``, ratio 1).
        do_flip: horizontal flip with probability 0.5.
        max_rotate: rotation angle ~ U(-max_rotate, max_rotate) degrees, with probability ``p_affine``.
        min_zoom: zoom ~ U(min_zoom, max_zoom), with probability ``p_affine``; centre fractions ~ U(0, 1).
        max_zoom: see ``min_zoom``.
        max_warp: perspective warp magnitude; the x and y magnitudes ~ U(-max_warp, max_warp), each nonzero
            with probability ``p_affine``.
        max_lighting: brightness ~ U(0.5 - max_lighting / 2, 0.5 + max_lighting / 2) and contrast
            ~ exp(U(log(1 - max_lighting), -log(1 - max_lighting))), each with probability ``p_lighting``.
        p_affine: probability of rotate, zoom and each warp component.
        p_lighting: probability of brightness and of contrast.
    """

    min_scale: float = 0.75
    do_flip: bool = True
    max_rotate: float = 10.0
    min_zoom: float = 1.0
    max_zoom: float = 1.1
    max_warp: float = 0.2
    max_lighting: float = 0.2
    p_affine: float = 0.75
    p_lighting: float = 0.75


@dataclass
class AugmentParams:
    """The random draws of one batch, one value per image (all tensors ``[B]`` on the images' device).

    Attributes:
        square_x: position of the ``Resize`` square crop along the width, as a fraction of the slack.
        square_y: the same along the height (only one of the two matters for a given image).
        flip: horizontal flip.
        angle: rotation in radians (0 when not drawn).
        zoom: zoom factor (1 when not drawn); the affine scale is ``1 / zoom``.
        zoom_x: zoom centre fraction along x, ~ U(0, 1).
        zoom_y: zoom centre fraction along y.
        warp_x: perspective magnitude along x (0 when not drawn).
        warp_y: perspective magnitude along y (0 when not drawn).
        crop_area: area fraction of the random-resized crop, ~ U(min_scale, 1); its side is ``sqrt`` of it.
        crop_x: crop position along x, as a fraction of the slack.
        crop_y: crop position along y.
        brightness: fastai's brightness (0.5 = unchanged).
        contrast: fastai's contrast (1 = unchanged).
    """

    square_x: Tensor
    square_y: Tensor
    flip: Tensor
    angle: Tensor
    zoom: Tensor
    zoom_x: Tensor
    zoom_y: Tensor
    warp_x: Tensor
    warp_y: Tensor
    crop_area: Tensor
    crop_x: Tensor
    crop_y: Tensor
    brightness: Tensor
    contrast: Tensor

    def __getitem__(self, index: slice | Tensor) -> AugmentParams:
        """The parameters of a subset of the batch."""
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def sample_params(
    batch: int, aug: AugmentConfig, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> AugmentParams:
    """Draw the per-image augmentation parameters of a batch from the torch RNG of ``device``.

    Args:
        batch: number of images.
        aug: the augmentation settings.
        device: where to draw (and keep) the parameters; the images' device.
        generator: a generator on ``device`` (default: the global one).

    Returns:
        The parameters (see ``AugmentParams``).
    """

    def rand() -> Tensor:
        return torch.rand(batch, device=device, generator=generator)

    def uniform(low: float, high: float) -> Tensor:
        return rand() * (high - low) + low

    def masked(value: Tensor, p: float, neutral: float) -> Tensor:
        return torch.where(rand() < p, value, torch.full_like(value, neutral))

    flip = rand() < (0.5 if aug.do_flip else 0.0)
    angle = masked(uniform(-aug.max_rotate, aug.max_rotate), aug.p_affine, 0.0) * (math.pi / 180)
    zoom = masked(uniform(aug.min_zoom, aug.max_zoom), aug.p_affine, 1.0)
    zoom_x, zoom_y = uniform(0, 1), uniform(0, 1)
    warp_x = masked(uniform(-aug.max_warp, aug.max_warp), aug.p_affine, 0.0)
    warp_y = masked(uniform(-aug.max_warp, aug.max_warp), aug.p_affine, 0.0)
    crop_area = uniform(aug.min_scale, 1.0)
    crop_x, crop_y = uniform(0, 1), uniform(0, 1)
    brightness = masked(uniform(0.5 * (1 - aug.max_lighting), 0.5 * (1 + aug.max_lighting)), aug.p_lighting, 0.5)
    log_c = math.log(1 - aug.max_lighting) if aug.max_lighting < 1 else -math.inf
    contrast = masked(torch.exp(uniform(log_c, -log_c)), aug.p_lighting, 1.0)
    return AugmentParams(
        square_x=uniform(0, 1),
        square_y=uniform(0, 1),
        flip=flip,
        angle=angle,
        zoom=zoom,
        zoom_x=zoom_x,
        zoom_y=zoom_y,
        warp_x=warp_x,
        warp_y=warp_y,
        crop_area=crop_area,
        crop_x=crop_x,
        crop_y=crop_y,
        brightness=brightness,
        contrast=contrast,
    )


def train_transform(
    images_u8: Tensor,
    sizes: Tensor,
    size: int,
    aug: AugmentConfig,
    presize: int | None = None,
    params: AugmentParams | None = None,
    generator: torch.Generator | None = None,
    canvas: tuple[int, int] | None = None,
) -> Tensor:
    """fastai's training pipeline (``Resize`` random square + ``aug_transforms``) on a batch, one resample.

    Args:
        images_u8: ``uint8 [B, 3, H, W]`` canvases, each image at the top left.
        sizes: ``[B, 2]`` height and width of each image in its canvas (short side = ``presize``).
        size: output side in pixels.
        aug: the augmentation settings.
        presize: the cache's short side, which sets the area pre-shrink; default ``min(H, W)`` (exact for
            square data, an over-estimate otherwise).
        params: explicit draws (tests, replay); default ``sample_params(B, aug, images_u8.device, generator)``.
        generator: the generator to draw from (default: the global one of the images' device).
        canvas: ``(H, W)`` of the original canvases when ``images_u8`` is their ``preshrink(..., size)``
            (float16); ``sizes`` still refers to the original canvases.

    Returns:
        ``float32 [B, 3, size, size]`` in [0, 1].
    """
    _check(images_u8, sizes, size)
    if params is None:
        params = sample_params(images_u8.shape[0], aug, images_u8.device, generator)
    warp = aug.max_warp > 0 and aug.p_affine > 0
    out = _resample(images_u8, sizes, size, presize, params, centre=False, warp=warp, canvas=canvas)
    if aug.max_lighting > 0 and aug.p_lighting > 0:
        out = _lighting(out, params.brightness, params.contrast)
    return out


def valid_transform(images_u8: Tensor, sizes: Tensor, size: int, presize: int | None = None) -> Tensor:
    """fastai's validation pipeline: centre square (``Resize``), area pre-shrink, then bilinear to ``size``.

    Args:
        images_u8: ``uint8 [B, 3, H, W]`` canvases, each image at the top left.
        sizes: ``[B, 2]`` height and width of each image in its canvas.
        size: output side in pixels.
        presize: the cache's short side (see ``train_transform``).

    Returns:
        ``float32 [B, 3, size, size]`` in [0, 1]; deterministic.
    """
    _check(images_u8, sizes, size)
    batch, device = images_u8.shape[0], images_u8.device
    zeros, ones = torch.zeros(batch, device=device), torch.ones(batch, device=device)
    identity = AugmentParams(
        square_x=zeros, square_y=zeros, flip=zeros.bool(), angle=zeros, zoom=ones, zoom_x=zeros, zoom_y=zeros,
        warp_x=zeros, warp_y=zeros, crop_area=ones, crop_x=zeros, crop_y=zeros, brightness=zeros + 0.5,
        contrast=ones,
    )  # fmt: skip
    return _resample(images_u8, sizes, size, presize, identity, centre=True, warp=False)


def normalize(x: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """fastai's ``Normalize.from_stats(mean, std)``: ``(x - mean) / std`` per channel of ``[B, C, H, W]``."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------------------------------------------------------
# The composed sampling grid


def _check(images_u8: Tensor, sizes: Tensor, size: int) -> None:
    if images_u8.dim() != 4 or images_u8.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W]; got {tuple(images_u8.shape)}")
    if sizes.shape != (images_u8.shape[0], 2):
        raise ValueError(f"sizes must be [B, 2] (h, w); got {tuple(sizes.shape)} for {images_u8.shape[0]} images")
    if size < 2:
        raise ValueError(f"size must be >= 2 pixels; got {size}")


def shrunk_shape(canvas_h: int, canvas_w: int, size: int, presize: int | None = None) -> tuple[int, int]:
    """The canvas shape after fastai's area pre-shrink for output ``size`` (the canvas' own when none applies).

    fastai (``_grid_sample``) first shrinks with ``mode='area'`` when the crop is downscaled by more than 2; here
    the nominal factor ``presize / (2 * size)`` is used for the whole batch (``presize`` default: the canvas'
    short side).
    """
    nominal = presize if presize is not None else min(canvas_h, canvas_w)
    shrink = nominal / (2 * size)
    if shrink <= 1:
        return canvas_h, canvas_w
    return max(2, int(canvas_h / shrink)), max(2, int(canvas_w / shrink))


def preshrink(images_u8: Tensor, size: int, presize: int | None = None, chunk: int = 256) -> Tensor:
    """The area pre-shrink of ``train_transform`` done once for a whole set, kept in float16.

    The pre-shrink is the same for every draw, so a CPU training set is shrunk once per image size and then
    only sampled (``train_transform(..., canvas=...)``): on two cores the per-batch pooling cost as much as the
    rest of the augmentation. float16 holds the pooled values (0-255) within 0.0625, far below one grey level;
    uint8 would round by up to 0.5.

    Args:
        images_u8: ``uint8 [N, 3, H, W]`` canvases.
        size: the output size it is for.
        presize: the cache's short side (see ``train_transform``).
        chunk: images per float32 working copy.

    Returns:
        ``float16 [N, 3, h, w]`` with ``(h, w) = shrunk_shape(H, W, size, presize)``; ``images_u8`` itself when
        no pre-shrink applies.
    """
    out_h, out_w = shrunk_shape(*images_u8.shape[-2:], size, presize)
    if (out_h, out_w) == tuple(images_u8.shape[-2:]):
        return images_u8
    out = torch.empty((images_u8.shape[0], 3, out_h, out_w), dtype=torch.float16, device=images_u8.device)
    for start in range(0, images_u8.shape[0], chunk):
        out[start : start + chunk] = F.adaptive_avg_pool2d(images_u8[start : start + chunk].float(), (out_h, out_w))
    return out


def _resample(
    images_u8: Tensor,
    sizes: Tensor,
    size: int,
    presize: int | None,
    p: AugmentParams,
    centre: bool,
    warp: bool,
    canvas: tuple[int, int] | None = None,
) -> Tensor:
    """Build each image's grid (output → crop → affine → warp → reflect → canvas) and sample once.

    Everything before the reflection is one homography per image (crop and ``Flip · Rotate · Zoom`` are affine,
    the warp is projective), composed on ``[B]`` coefficients and evaluated on the ``[B, S, S]`` grid as three
    planes; the reflection and the map to the canvas' grid coordinates follow. ``canvas``: the shape of the
    canvases ``sizes`` refers to when ``images_u8`` was already pre-shrunk (``preshrink``).
    """
    device = images_u8.device
    in_h, in_w = images_u8.shape[-2:]
    canvas_h, canvas_w = canvas if canvas is not None else (in_h, in_w)
    heights, widths = sizes[:, 0].to(device, torch.float32), sizes[:, 1].to(device, torch.float32)
    side = torch.minimum(heights, widths)  # the Resize square, in canvas pixels

    # 1. Output pixel (t in [0, 1] along each axis) -> normalised square coordinate, through the random-resized
    #    crop (align_corners): xs = ax + b * t_col, ys = ay + b * t_row.
    t = torch.linspace(0.0, 1.0, size, device=device)
    crop = torch.sqrt(p.crop_area) * side  # crop side in square pixels (ratio 1)
    x0, y0 = p.crop_x * (side - crop), p.crop_y * (side - crop)
    b = 2 * (crop - 1) / (side - 1)
    ax, ay = 2 * x0 / (side - 1) - 1, 2 * y0 / (side - 1) - 1

    # 2. Affine Flip · Rotate · Zoom (fastai's matrix order) composed with the crop: q = P · (t_col, t_row, 1).
    cos, sin = torch.cos(p.angle), torch.sin(p.angle)
    s = 1.0 / p.zoom
    tx, ty = (1 - s) * (2 * p.zoom_x - 1), (1 - s) * (2 * p.zoom_y - 1)
    fx = torch.where(p.flip, -1.0, 1.0)
    m00, m01, m02 = fx * cos * s, fx * sin * s, fx * (cos * tx + sin * ty)
    m10, m11, m12 = -sin * s, cos * s, -sin * tx + cos * ty
    qx = (m00 * b, m01 * b, m00 * ax + m01 * ay + m02)
    qy = (m10 * b, m11 * b, m10 * ax + m11 * ay + m12)

    # 3. Perspective warp of the sampling coordinates (fastai's _WarpCoord), composed the same way.
    if warp:
        h = _warp_coefficients(p.warp_x, p.warp_y)
        nx = tuple(h[0] * u + h[1] * v for u, v in zip(qx, qy, strict=True))
        ny = tuple(h[3] * u + h[4] * v for u, v in zip(qx, qy, strict=True))
        den = tuple(h[6] * u + h[7] * v for u, v in zip(qx, qy, strict=True))
        nx, ny = (nx[0], nx[1], nx[2] + h[2]), (ny[0], ny[1], ny[2] + h[5])
        d = _plane(t, den[0], den[1], den[2] + 1)
        gx, gy = _plane(t, *nx).div_(d), _plane(t, *ny).div_(d)
    else:
        gx, gy = _plane(t, *qx), _plane(t, *qy)

    # 4. Reflection into the square (fastai's padding), then square -> canvas pixels -> grid_sample coordinates
    #    of the (pre-shrunk) canvas, one multiply-add per axis. The square sits at a random (train) or centred
    #    (valid) offset.
    if centre:
        ox, oy = torch.floor((widths - side) / 2), torch.floor((heights - side) / 2)
    else:
        ox, oy = p.square_x * (widths - side), p.square_y * (heights - side)
    out_h, out_w = shrunk_shape(canvas_h, canvas_w, size, presize)
    kx, ky = out_w / canvas_w, out_h / canvas_h  # canvas pixel centres -> shrunk pixel centres
    half = (side - 1) / 2
    grid = torch.stack(
        [
            _reflect_(gx).mul_((half * kx * 2 / (out_w - 1))[:, None, None]),
            _reflect_(gy).mul_((half * ky * 2 / (out_h - 1))[:, None, None]),
        ],
        dim=-1,
    )
    grid[..., 0] += (((ox + half + 0.5) * kx - 0.5) * 2 / (out_w - 1) - 1)[:, None, None]
    grid[..., 1] += (((oy + half + 0.5) * ky - 0.5) * 2 / (out_h - 1) - 1)[:, None, None]

    # 5. Area pre-shrink (fastai's _grid_sample) when the square is downscaled by more than 2, then one sample.
    x = images_u8.float()  # only this batch's canvases: the dataset stays uint8 (or preshrink's float16)
    if (in_h, in_w) != (out_h, out_w):
        if canvas is not None:
            raise ValueError(f"pre-shrunk canvases are {in_h}x{in_w}; size {size} needs {out_h}x{out_w}")
        x = F.adaptive_avg_pool2d(x, (out_h, out_w))
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.mul_(1 / 255).clamp_(0.0, 1.0)


def _plane(t: Tensor, c_col: Tensor, c_row: Tensor, c0: Tensor) -> Tensor:
    """``c_col * t[col] + c_row * t[row] + c0`` per image: ``[B]`` coefficients -> ``[B, S, S]``, one full pass."""
    return (c_col[:, None] * t + c0[:, None])[:, None, :] + (c_row[:, None] * t)[:, :, None]


def _reflect_(v: Tensor) -> Tensor:
    """Reflect normalised coordinates into [-1, 1] in place: ``1 - |((v + 1) mod 4) - 2|``."""
    return v.add_(1).remainder_(4).sub_(2).abs_().neg_().add_(1)


def _warp_coefficients(warp_x: Tensor, warp_y: Tensor) -> list[Tensor]:
    """fastai's perspective warp: the homography that maps the moved corners back onto the square's corners.

    Corners (-1,-1), (-1,1), (1,-1), (1,1) move to (-1-y, -1-x), (-1+y, 1+x), (1+y, -1+x), (1-y, 1-x) with
    x = ``warp_x`` and y = ``warp_y``; the 8 coefficients solve fastai's ``find_coeffs(orig, targ)`` system and
    map a point as in ``apply_perspective``: ``((h0 x + h1 y + h2) / d, (h3 x + h4 y + h5) / d)`` with
    ``d = h6 x + h7 y + 1``.

    Returns:
        The 8 coefficients, each ``[B]``.
    """
    batch = warp_x.shape[0]
    wx, wy = warp_x, warp_y
    one = torch.ones_like(wx)
    signs = ((-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0))  # built on the device: no host-to-device copy
    orig = torch.stack([torch.stack([sx * one, sy * one], dim=-1) for sx, sy in signs], dim=1)  # [B, 4, 2]
    targ = torch.stack(
        [
            torch.stack([-1 - wy, -1 - wx], dim=-1),
            torch.stack([-1 + wy, 1 + wx], dim=-1),
            torch.stack([1 + wy, -1 + wx], dim=-1),
            torch.stack([1 - wy, 1 - wx], dim=-1),
        ],
        dim=1,
    )  # [B, 4, 2]
    zero = torch.zeros_like(wx)
    rows = []
    for i in range(4):
        ux, uy = targ[:, i, 0], targ[:, i, 1]
        vx, vy = orig[:, i, 0], orig[:, i, 1]
        rows.append(torch.stack([ux, uy, one, zero, zero, zero, -vx * ux, -vx * uy], dim=-1))
        rows.append(torch.stack([zero, zero, zero, ux, uy, one, -vy * ux, -vy * uy], dim=-1))
    a = torch.stack(rows, dim=1)  # [B, 8, 8]
    b = orig.reshape(batch, 8, 1)
    h = torch.linalg.solve_ex(a, b)[0][..., 0]  # no error check: no host sync (the system is never singular)
    return list(h.unbind(dim=1))


def _lighting(x: Tensor, brightness: Tensor, contrast: Tensor) -> Tensor:
    """fastai's lighting: ``sigmoid((logit(x) + logit(brightness)) * contrast)``, brightness first, in place."""
    shift = torch.logit(brightness, _LOGIT_EPS)[:, None, None, None]
    return torch.logit(x, _LOGIT_EPS).add_(shift).mul_(contrast[:, None, None, None]).sigmoid_()
