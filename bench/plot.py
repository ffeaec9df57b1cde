"""Minimal PNG line charts with Pillow (no plotting dependency)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def line_chart(path: str | Path, title: str, x_label: str, y_label: str,
               series: dict[str, Sequence[tuple[float, float]]], size: tuple[int, int] = (640, 420)) -> Path:
    """One chart: each series a list of (x, y) points, drawn as lines with dots and a legend."""
    W, H = size
    left, right, top, bottom = 70, 20, 40, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.1 or 1.0
    x1 = x1 if x1 > x0 else x0 + 1

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (W - left - right), H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        _, py = to_px(x0, yv)
        d.line([left - 4, py, left, py], fill="black")
        d.text((5, py - 6), f"{yv:.3g}", fill="black")
    for xv in sorted(set(xs)):
        px, _ = to_px(xv, y0)
        d.line([px, H - bottom, px, H - bottom + 4], fill="black")
        d.text((px - 6, H - bottom + 8), f"{xv:g}", fill="black")
    d.text((W // 2 - 4 * len(title), 10), title, fill="black")
    d.text((W // 2 - 3 * len(x_label), H - 25), x_label, fill="black")
    d.text((5, top - 25), y_label, fill="black")
    for i, (name, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pix = [to_px(x, y) for x, y in sorted(points)]
        if len(pix) > 1:
            d.line(pix, fill=colour, width=2)
        for px, py in pix:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        d.text((left + 10, top + 8 + 14 * i), f"- {name}", fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
