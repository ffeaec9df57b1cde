"""Image helpers: tensors in [0, 1] <-> uint8 arrays, grids and PNG files (atomic writes)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images_B3HW: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 (NHWC, the layout FID toolkits read)."""
    x = images_B3HW.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images_B3HW: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile (B, 3, H, W) images row by row into one (3, H', W') image."""
    B, C, H, W = images_B3HW.shape
    nrow = max(1, min(nrow, B))
    rows = (B + nrow - 1) // nrow
    grid = images_B3HW.new_full((C, rows * (H + padding) + padding, nrow * (W + padding) + padding), pad_value)
    for i in range(B):
        r, c = divmod(i, nrow)
        y, x = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, y:y + H, x:x + W] = images_B3HW[i]
    return grid


def save_png(image_3HW: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write one image as PNG via a temporary name and an atomic rename (never half-written)."""
    path = Path(path)
    arr = to_uint8(image_3HW.unsqueeze(0))[0] if isinstance(image_3HW, torch.Tensor) else image_3HW
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_grid(images_B3HW: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    return save_png(make_grid(images_B3HW, nrow=nrow), path)
