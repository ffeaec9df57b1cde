"""Edit masks: pixel masks -> keep maps per scale, feathered paste-back, mask shapes and seam statistics.

Convention: a pixel mask is (B, 1, S, S) float with 1 = regenerate, 0 = keep; a keep map is the
opposite (True = teacher-force the input there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

SCALE_MASK_RULES = ("bilinear", "inside")
FEATHER_POSITIONS = ("centred", "inside", "outside")


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow the 1-region of (B, 1, H, W) by `pixels` (Chebyshev distance); 0 returns the mask."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels)


def erode(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shrink the 1-region of (B, 1, H, W) by `pixels` (the image border counts as inside)."""
    if pixels <= 0:
        return mask
    return 1 - F.max_pool2d(F.pad(1 - mask, (pixels,) * 4, value=0.0), 2 * pixels + 1, stride=1)


def token_grid(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """Pixel mask (B, 1, S, S) -> (B, 1, grid, grid): a cell regenerates if any of its pixels does."""
    S = mask.shape[-1]
    if S % grid:
        raise InputError(f"image size {S} is not a multiple of the token grid {grid}")
    return F.max_pool2d(mask, S // grid)


def keep_maps(mask: torch.Tensor, patch_nums: tuple[int, ...], rule: str = "bilinear",
              force_first_scale: bool = True) -> list[torch.Tensor]:
    """Pixel mask (B, 1, S, S), 1 = regenerate -> one (B, pn*pn) bool keep map per scale.

    The finest map keeps the cells with no regenerated pixel. Coarser scales:
    'bilinear' (the official notebook): the finest keep map resized bilinearly, kept where > 0.5;
    'inside': kept only where the scale's cell lies entirely inside the kept region (area average 1).
    force_first_scale keeps the 1x1 first scale whatever the mask (as the official notebook does).
    """
    if rule not in SCALE_MASK_RULES:
        raise InputError(f"scale mask rule must be one of {SCALE_MASK_RULES}, got {rule!r}")
    keep = 1 - token_grid(mask.float(), patch_nums[-1])  # (B, 1, H, H)
    maps = []
    for si, pn in enumerate(patch_nums):
        if si == 0 and force_first_scale:
            k = torch.ones_like(keep[:, :, :pn, :pn], dtype=torch.bool)
        elif pn == keep.shape[-1]:
            k = keep > 0.5
        elif rule == "bilinear":
            k = F.interpolate(keep, size=(pn, pn), mode="bilinear", align_corners=False) > 0.5
        else:
            k = F.adaptive_avg_pool2d(keep, pn) > 1 - 1e-6
        maps.append(k.reshape(k.shape[0], pn * pn))
    return maps


def keep_alpha(mask: torch.Tensor, feather: int = 2, position: str = "centred") -> torch.Tensor:
    """Blend weight of the input pixels for paste-back, (B, 1, S, S) in [0, 1] (1 = input pixel).

    A ramp of 2 * feather + 1 pixels across the mask edge: 'centred' straddles it, 'inside' lies in the
    regenerated region (kept pixels stay exact), 'outside' lies in the kept region (regenerated pixels
    stay as generated). feather 0 is a hard paste.
    """
    if position not in FEATHER_POSITIONS:
        raise InputError(f"feather position must be one of {FEATHER_POSITIONS}, got {position!r}")
    keep = 1 - mask.float()
    if feather <= 0:
        return keep
    if position == "inside":
        keep = dilate(keep, feather)
    elif position == "outside":
        keep = erode(keep, feather)
    padded = F.pad(keep, (feather,) * 4, mode="replicate")
    return F.avg_pool2d(padded, 2 * feather + 1, stride=1)


def paste_back(result: torch.Tensor, original: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """alpha * original + (1 - alpha) * result (images (B, 3, S, S) in [0, 1], alpha (B, 1, S, S))."""
    return original * alpha + result * (1 - alpha)


def boundary(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) bool: pixels with a 4-neighbour on the other side of the mask edge."""
    m = mask.float()
    padded = F.pad(m, (1, 1, 1, 1), mode="replicate")
    neighbours = [padded[..., 1:-1, :-2], padded[..., 1:-1, 2:], padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]]
    return torch.stack([(n != m) for n in neighbours]).any(0)


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Mean over channels of |forward differences| (x and y, L2), (B, 1, S, S); 0 past the last row/column."""
    dx = F.pad(images[..., :, 1:] - images[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(images[..., 1:, :] - images[..., :-1, :], (0, 0, 0, 1))
    return (dx.square() + dy.square()).sqrt().mean(1, keepdim=True)


def seam_strength(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image (B,): mean gradient magnitude over the mask boundary pixels (NaN without a boundary)."""
    edge = boundary(mask).float()
    grad = gradient_magnitude(images)
    return (grad * edge).sum((1, 2, 3)) / edge.sum((1, 2, 3))


def masked_psnr(images: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per image (B,): PSNR in dB over the pixels where weight (B, 1, S, S) is 1 ([0, 1] images; inf if equal)."""
    w = weight.float().expand_as(images)
    mse = ((images - reference).square() * w).sum((1, 2, 3)) / w.sum((1, 2, 3)).clamp_min(1)
    return 10 * torch.log10(1 / mse)


# ---------------------------------------------------------------------------------- mask shapes
def box_mask(size: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    """(1, 1, size, size) mask regenerating [x0, x1) x [y0, y1) (pixel coordinates)."""
    if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
        raise InputError(f"box {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= {size} and 0 <= y0 < y1 <= {size}")
    m = torch.zeros(1, 1, size, size)
    m[..., y0:y1, x0:x1] = 1
    return m


def centre_box_mask(size: int, fraction: float) -> torch.Tensor:
    """A centred square covering `fraction` of the side."""
    side = max(1, round(size * fraction))
    x0 = (size - side) // 2
    return box_mask(size, x0, x0, x0 + side, x0 + side)


def border_mask(size: int, pixels: int) -> torch.Tensor:
    """Regenerate a border `pixels` wide (out-painting); the centre is kept."""
    if not 1 <= pixels < size // 2:
        raise InputError(f"a border of {pixels} px leaves no image to keep at size {size}: use 1..{size // 2 - 1}")
    m = torch.ones(1, 1, size, size)
    m[..., pixels:size - pixels, pixels:size - pixels] = 0
    return m


def stroke_mask(size: int, generator: torch.Generator, strokes: int = 3, width: int = 3,
                steps: int = 6) -> torch.Tensor:
    """Random brush strokes (random walks of `steps` segments, `width` px wide), seeded by `generator`."""
    m = torch.zeros(1, 1, size, size)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    for _ in range(strokes):
        p = torch.rand(2, generator=generator) * size
        for _ in range(steps):
            angle = torch.rand((), generator=generator) * 6.2832
            q = (p + torch.stack([angle.cos(), angle.sin()]) * size / 5).clamp(0, size - 1)
            for t in torch.linspace(0, 1, 8):
                c = p + (q - p) * t
                m[0, 0][(xx - c[0]).square() + (yy - c[1]).square() <= (width / 2) ** 2] = 1
            p = q
    return m
