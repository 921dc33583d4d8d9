"""ablation.png: one panel per figure, a bar per variant at its mean over seeds, an error bar of one standard
deviation, and each seed's value as a dot. Drawn with OpenCV like the project's other pictures (annotate.draw):
the lock file has no plotting library, and a bar chart does not need one.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from annotate.draw import encode_png, grid

W, H = 420, 300  # one panel
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 48, 46
COLOURS = [(68, 119, 170), (238, 102, 119), (34, 136, 51), (204, 187, 68), (102, 204, 238), (170, 51, 119)]  # RGB


def _text(img, text: str, org, scale: float = 0.45, colour=(30, 30, 30), thickness: int = 1) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def panel(figure: str, variants: list[str], stats: dict, lower_is_better: bool) -> np.ndarray:
    img = np.full((H, W, 3), 255, np.uint8)
    means = [stats[v][figure]["mean"] for v in variants]
    sds = [stats[v][figure]["sd"] or 0.0 for v in variants]
    values = [stats[v][figure]["values"] for v in variants]
    top = max([m + s for m, s in zip(means, sds) if m is not None] + [x for vs in values for x in vs] + [1e-9])
    top *= 1.15
    plot_h, plot_w = H - TOP - BOTTOM, W - LEFT - RIGHT

    def y(v: float) -> int:
        return int(round(TOP + plot_h * (1 - v / top)))

    _text(img, f"{figure} ({'lower' if lower_is_better else 'higher'} is better)", (8, 20), 0.5, thickness=1)
    n = max((len(v) for v in values), default=0)
    _text(img, f"bar: mean of {n} seeds, whiskers: +-1 sd, dots: each seed", (8, 36), 0.36, (110, 110, 110))
    cv2.line(img, (LEFT, TOP), (LEFT, H - BOTTOM), (0, 0, 0), 1)
    cv2.line(img, (LEFT, H - BOTTOM), (W - RIGHT, H - BOTTOM), (0, 0, 0), 1)
    for frac in (0.0, 0.5, 1.0):
        v = top / 1.15 * frac
        cv2.line(img, (LEFT - 4, y(v)), (LEFT, y(v)), (0, 0, 0), 1)
        _text(img, f"{v:.3g}", (4, y(v) + 4), 0.38)
    slot = plot_w / max(1, len(variants))
    for i, variant in enumerate(variants):
        if means[i] is None:
            continue
        colour = COLOURS[i % len(COLOURS)]
        x0, x1 = int(LEFT + slot * (i + 0.2)), int(LEFT + slot * (i + 0.8))
        cv2.rectangle(img, (x0, y(means[i])), (x1, H - BOTTOM), colour, -1)
        cx = (x0 + x1) // 2
        lo, hi = y(max(0.0, means[i] - sds[i])), y(means[i] + sds[i])
        cv2.line(img, (cx, lo), (cx, hi), (0, 0, 0), 2)
        cv2.line(img, (cx - 8, lo), (cx + 8, lo), (0, 0, 0), 2)
        cv2.line(img, (cx - 8, hi), (cx + 8, hi), (0, 0, 0), 2)
        for j, v in enumerate(values[i]):
            cv2.circle(img, (int(cx + 16 + (j - (len(values[i]) - 1) / 2) * 7), y(v)), 3, (0, 0, 0), -1)
        _text(img, variant, (x0 - 4, H - BOTTOM + 16), 0.4)
        _text(img, f"{means[i]:.3g}", (x0, H - BOTTOM + 32), 0.38, (90, 90, 90))
    return img


def draw(summary: dict, figures: list[str], out: Path, lower_is_better: tuple[str, ...]) -> Path:
    variants = list(summary["variants"])
    shown = [f for f in figures if f in summary["figures"]]
    panels = [panel(f, variants, summary["variants"], f in lower_is_better) for f in shown]
    if not panels:
        panels = [np.full((H, W, 3), 255, np.uint8)]
    out.write_bytes(encode_png(grid(panels, cols=min(3, len(panels)))))
    return out
