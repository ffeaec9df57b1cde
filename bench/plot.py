"""Minimal PNG charts with Pillow (no plotting dependency)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]

Point = tuple[float, float] | tuple[float, float, str]


def _axis_ticks(values: Sequence[float], lo: float, hi: float) -> list[float]:
    """The data's own values where they are few integers (batch sizes, depths), else five even ticks."""
    distinct = sorted(set(values))
    if len(distinct) <= 10 and all(float(v).is_integer() for v in distinct):
        return distinct
    return [lo + (hi - lo) * i / 4 for i in range(5)]


def line_chart(path: str | Path, title: str, x_label: str, y_label: str,
               series: dict[str, Sequence[Point]], size: tuple[int, int] = (640, 420),
               connect: bool = True) -> Path:
    """One chart: each series a list of (x, y) or (x, y, label) points, drawn as dots (joined by lines
    unless connect=False, labelled where a label is given) with a legend."""
    W, H = size
    left, right, top, bottom = 70, 20, 40, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    if not connect:  # a scatter: leave room around the outermost dots
        pad = 0.05 * (x1 - x0 or 1.0)
        x0, x1 = x0 - pad, x1 + pad
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.1 or 1.0
    x1 = x1 if x1 > x0 else x0 + 1

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (W - left - right), H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for yv in (y0 + (y1 - y0) * i / 4 for i in range(5)):
        _, py = to_px(x0, yv)
        d.line([left - 4, py, left, py], fill="black")
        d.text((5, py - 6), f"{yv:.3g}", fill="black")
    for xv in _axis_ticks(xs, x0, x1):
        px, _ = to_px(xv, y0)
        d.line([px, H - bottom, px, H - bottom + 4], fill="black")
        d.text((px - 6, H - bottom + 8), f"{xv:.3g}", fill="black")
    d.text((W // 2 - 4 * len(title), 10), title, fill="black")
    d.text((W // 2 - 3 * len(x_label), H - 25), x_label, fill="black")
    d.text((5, top - 25), y_label, fill="black")
    taken: list[tuple[float, float, float, float]] = []  # label boxes already drawn

    def place_label(px: float, py: float, text: str) -> tuple[float, float]:
        """The first spot beside a dot that stays inside the plot and clear of earlier labels."""
        w, h = d.textlength(text), 11
        spots = [(5, -12), (5, 2), (-w - 5, -12), (-w - 5, 2), (5, -24), (5, 14), (-w - 5, -24), (-w - 5, 14)]
        for dx, dy in spots:
            box = (px + dx, py + dy, px + dx + w, py + dy + h)
            inside = box[0] >= left and box[2] <= W - right and box[1] >= top and box[3] <= H - bottom
            if inside and not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in taken):
                break
        taken.append(box)
        return box[0], box[1]

    for i, (name, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        placed = sorted((to_px(p[0], p[1]), p[2] if len(p) > 2 else "") for p in points)
        if connect and len(placed) > 1:
            d.line([xy for xy, _ in placed], fill=colour, width=2)
        for (px, py), label in placed:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
            if label:
                d.text(place_label(px, py, label), label, fill=colour)
        d.text((left + 10, top + 8 + 14 * i), f"- {name}", fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
