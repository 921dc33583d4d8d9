"""Draw annotations on frames: boxes, mask outlines, point tracks (for the run report and `pite viz`)."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

# Distinct, colour-blind-friendly-ish colours (RGB), one per object.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40),
]


def colour(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def contrasting_colours(means: list[Optional[np.ndarray]]) -> list[tuple[int, int, int]]:
    """One palette colour per object, far (RGB distance) from that object's own mean colour and from the colours
    the objects before it got: red dots vanish on a red apple, cyan ones do not."""
    free = list(PALETTE)
    out = []
    for i, mean in enumerate(means):
        if mean is None or not free:
            out.append(colour(i))
            continue
        def score(c) -> float:  # far from the object, and far from the colours already given to others
            own = float(np.linalg.norm(np.asarray(c, float) - mean))
            apart = min((float(np.linalg.norm(np.subtract(c, o))) for o in out), default=own)
            return own + apart

        best = max(free, key=score)
        free.remove(best)
        out.append(best)
    return out


def object_means(frames: np.ndarray, pixels: np.ndarray, vis: Optional[np.ndarray]) -> list[Optional[np.ndarray]]:
    """Each object's mean RGB under its visible points, over the frames (None when never visible)."""
    h, w = frames.shape[1:3]
    means = []
    for i in range(pixels.shape[0]):
        seen = np.ones(pixels.shape[1:3], bool) if vis is None else np.asarray(vis[i], bool)
        k, t = np.nonzero(seen)
        if len(t) == 0:
            means.append(None)
            continue
        x = np.clip(pixels[i, k, t, 0].astype(int), 0, w - 1)
        y = np.clip(pixels[i, k, t, 1].astype(int), 0, h - 1)
        means.append(frames[t, y, x].reshape(-1, 3).mean(axis=0))
    return means


def label(img: np.ndarray, text: str, org: tuple[int, int], c: tuple[int, int, int],
          scale: Optional[float] = None) -> None:
    """Text in colour `c` on a dark band (readable on any background), sized to the image unless `scale` is given,
    kept inside it."""
    scale = scale or max(0.42, min(0.8, img.shape[1] / 1000))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = max(0, org[0]), max(th + 3, org[1])
    cv2.rectangle(img, (x - 2, y - th - 3), (x + tw + 2, y + base), (20, 20, 20), -1)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, c, 1, cv2.LINE_AA)


def draw_frame(
    frame: np.ndarray,
    boxes: Optional[np.ndarray] = None,
    masks: Optional[list[Optional[np.ndarray]]] = None,
    tracks: Optional[np.ndarray] = None,
    vis: Optional[np.ndarray] = None,
    t: Optional[int] = None,
    labels: Optional[list[str]] = None,
    tail: int = 10,
    colours: Optional[list[tuple[int, int, int]]] = None,
) -> np.ndarray:
    """One RGB frame with annotations in pixel coordinates of that frame.

    boxes (N, 4) xyxy; masks: per object a bool (h, w) mask or None; tracks (N, K, T, 2) with vis (N, K, T): the
    point at time t is a dot (hollow when not visible) with a tail of the previous `tail` steps, each with a dark
    edge so that it shows on any background. `colours`: one RGB per object (default: the palette in order).
    """
    img = np.ascontiguousarray(frame.copy())
    n = len(boxes) if boxes is not None else (tracks.shape[0] if tracks is not None else 0)
    for i in range(n):
        c = colours[i] if colours is not None and i < len(colours) else colour(i)
        if masks is not None and i < len(masks) and masks[i] is not None:
            contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(img, contours, -1, c, 1, cv2.LINE_AA)
        if boxes is not None:
            x0, y0, x1, y1 = [int(round(v)) for v in boxes[i]]
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), c, 1, cv2.LINE_AA)
            if labels is not None and i < len(labels):
                label(img, labels[i][:24], (x0 + 2, y0 - 4), c)
        if tracks is not None and t is not None:
            for k in range(tracks.shape[1]):
                lo = max(0, t - tail)
                pts = tracks[i, k, lo : t + 1]
                ok = vis[i, k, lo : t + 1] if vis is not None else np.ones(len(pts), bool)
                for a in range(len(pts) - 1):
                    if ok[a] and ok[a + 1]:
                        p0 = tuple(int(round(v - 0.5)) for v in pts[a])
                        p1 = tuple(int(round(v - 0.5)) for v in pts[a + 1])
                        cv2.line(img, p0, p1, (0, 0, 0), 3, cv2.LINE_AA)
                        cv2.line(img, p0, p1, c, 1, cv2.LINE_AA)
                p = tuple(int(round(v - 0.5)) for v in tracks[i, k, t])
                visible = vis is None or bool(vis[i, k, t])
                cv2.circle(img, p, 4, (0, 0, 0), -1 if visible else 2, cv2.LINE_AA)
                cv2.circle(img, p, 3, c, -1 if visible else 1, cv2.LINE_AA)
    return img


def grid(images: list[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
    """Tile equally sized RGB images into one picture (missing cells stay black)."""
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    out = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        if im.shape[:2] != (h, w):
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = im
    return out


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
