"""Edit inputs: images and masks from tensors, arrays, PIL images, files or an image editor's layers,
checked and brought to the model's size; the out-painting canvas.

Images come out as (B, 3, S, S) float in [0, 1], masks as (B, 1, S, S) float with 1 = regenerate.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import MAX_IMAGE_PIXELS, flatten_alpha, has_alpha, open_image
from ..errors import InputError
from .masks import border_mask

log = logging.getLogger(__name__)

MIN_SIDE = 4  # smaller images cannot be resized sensibly
MAX_ASPECT = 4.0  # longer/shorter side beyond this is refused rather than squashed


def _pil_to_array(im: Image.Image, mask: bool) -> np.ndarray:
    if mask:
        if has_alpha(im):
            alpha = np.asarray(im.convert("RGBA"))[..., 3]
            if alpha.min() < 255:  # a transparent mask: the painted (opaque) pixels regenerate
                return alpha.astype(np.float32) / 255.0
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(flatten_alpha(im), dtype=np.float32) / 255.0


def _as_float_array(value: Any, name: str) -> torch.Tensor:
    """A tensor or array -> float tensor; uint8 scaled to [0, 1], bool to {0, 1}; NaN/inf and out-of-range refused."""
    t = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value.detach().cpu()
    if t.dtype == torch.bool:
        return t.float()
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int16, torch.int32, torch.int64)):
        raise InputError(f"{name} must hold real numbers, got {t.dtype}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} contains NaN or infinite values")
    if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
        raise InputError(f"{name} values must be in [0, 1] (or uint8 0..255), "
                         f"got {float(t.min()):g}..{float(t.max()):g}")
    return t


def image_batch(images: Any) -> torch.Tensor:
    """Images as (B, 3, H, W) / (3, H, W) tensors or arrays in [0, 1] (uint8 0..255), (H, W, 3|4) arrays,
    PIL images, file paths, or a list of those -> (B, 3, H, W) float in [0, 1] (sizes must agree)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("no images given")
        parts = [image_batch(x) for x in images]
        if len({tuple(p.shape[-2:]) for p in parts}) > 1:
            raise InputError("all images of one edit call must have the same size")
        return torch.cat(parts)
    if isinstance(images, (str, Path)):
        images = open_image(images)
    if isinstance(images, Image.Image):
        return torch.from_numpy(_pil_to_array(images, mask=False)).permute(2, 0, 1).unsqueeze(0).contiguous()
    t = _as_float_array(images, "images")
    if t.ndim == 3 and t.shape[-1] in (3, 4) and t.shape[0] not in (3,):  # (H, W, C) as arrays and editors give
        if t.shape[-1] == 4:
            alpha = t[..., 3:]
            t = t[..., :3] * alpha + (1 - alpha)
        t = t.permute(2, 0, 1)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[1] != 3:
        raise InputError(f"images must be (B, 3, H, W), (3, H, W) or (H, W, 3), got shape {tuple(t.shape)}")
    return t.contiguous()


def mask_batch(mask: Any, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """A mask (B, 1, H, W), (B, H, W), (1, H, W) or (H, W) tensor/array/PIL image/file, 1 (or white, or
    painted) = regenerate -> (B, 1, H, W) float {0, 1} (values >= 0.5 regenerate). H, W must be the images'."""
    if isinstance(mask, (str, Path)):
        mask = open_image(mask, "mask")
    if isinstance(mask, Image.Image):
        mask = _pil_to_array(mask, mask=True)
    t = _as_float_array(mask, "mask")
    if t.ndim == 2:
        t = t.view(1, 1, *t.shape)
    elif t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4 or t.shape[1] != 1:
        raise InputError(f"mask must be (B, 1, H, W), (B, H, W) or (H, W), got shape {tuple(t.shape)}")
    if tuple(t.shape[-2:]) != tuple(size):
        raise InputError(f"mask is {t.shape[-1]}x{t.shape[-2]} but the image is {size[1]}x{size[0]} (width x height)")
    if t.shape[0] not in (1, batch):
        raise InputError(f"{t.shape[0]} masks for {batch} images (give one mask, or one per image)")
    return (t >= 0.5).float().expand(batch, -1, -1, -1).contiguous()


def check_size(height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise InputError(f"a {width}x{height} image is too small to edit (at least {MIN_SIDE} px a side)")
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise InputError(f"a {width}x{height} image is too elongated to resize to a square "
                         f"(at most {MAX_ASPECT:g}:1); crop it first")
    if height * width > MAX_IMAGE_PIXELS:
        raise InputError(f"a {width}x{height} image is over the {MAX_IMAGE_PIXELS:,}-pixel limit")


def fit_to_model(images: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize images (bilinear, antialiased) and masks (a pixel regenerates if any input pixel under it
    does) to the model's size x size, logging a note when that changes the size or the aspect ratio."""
    H, W = images.shape[-2:]
    check_size(H, W)
    if (H, W) == (size, size):
        return images, mask
    log.warning("editing at the model's %dx%d: the %dx%d input%s was resized%s", size, size, W, H,
                " (and its mask)" if mask is not None else "", "" if H == W else ", which changes its aspect ratio")
    images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    mask = F.interpolate(mask, size=(size, size), mode="area") > 0
    return images.contiguous(), mask.float()


def check_mask_covers(mask: torch.Tensor) -> None:
    """Refuse masks that select nothing, or everything (plain generation), naming the image."""
    area = mask.flatten(1).mean(1)
    for i, a in enumerate(area.tolist()):
        which = f"the mask of image {i}" if mask.shape[0] > 1 else "the mask"
        if a == 0:
            raise InputError(f"{which} selects nothing to regenerate (mark the region to change with 1 / white)")
        if a == 1:
            raise InputError(f"{which} covers the whole image: that is plain generation (use generate) "
                             "- leave part of the image unmasked to edit it")


def mask_from_editor(value: dict[str, Any] | Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """An image editor's value -> (image (H, W, 3) in [0, 1], mask (H, W) float, 1 = regenerate).

    Takes the dict Gradio's ImageEditor gives ({'background', 'layers', 'composite'}, arrays or PIL
    images): every painted (non-transparent) pixel of any layer regenerates.
    """
    if not isinstance(value, dict) or value.get("background") is None:
        raise InputError("the editor holds no image: upload one first")
    background = image_batch(value["background"])[0].permute(1, 2, 0).numpy()
    mask = np.zeros(background.shape[:2], np.float32)
    for layer in value.get("layers") or []:
        arr = np.asarray(layer.convert("RGBA") if isinstance(layer, Image.Image) else layer)
        if arr.shape[:2] != mask.shape:
            raise InputError(f"an editor layer is {arr.shape[1]}x{arr.shape[0]}, "
                             f"the image {mask.shape[1]}x{mask.shape[0]}")
        if arr.ndim == 3 and arr.shape[-1] == 4:
            painted = arr[..., 3] > 0  # RGBA: any opaque stroke
        else:
            painted = arr.reshape(*mask.shape, -1).max(-1) > 0  # grey/RGB: any non-black stroke
        mask = np.maximum(mask, painted.astype(np.float32))
    return background, mask


def outpaint_canvas(images: torch.Tensor, size: int, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Place images (B, 3, H, W) in [0, 1] centred on a size x size canvas with `border` px to generate
    around them -> (canvas (B, 3, S, S), mask (B, 1, S, S), 1 = the border). The image is resized to the
    inner square; the border starts as the image's edge pixels repeated (only the kept centre is forced)."""
    mask = border_mask(size, border)
    H, W = images.shape[-2:]
    check_size(H, W)
    inner = size - 2 * border
    small = F.interpolate(images, size=(inner, inner), mode="bilinear", antialias=True, align_corners=False)
    canvas = F.pad(small.clamp(0, 1), (border,) * 4, mode="replicate")
    return canvas.contiguous(), mask.expand(images.shape[0], -1, -1, -1).contiguous()
