"""An object's look in its own coordinates (an S x S texture and alpha image), and the background image."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from annotate.synthetic.params import COLOURS


def sprite_alpha(shape: str, s: int) -> np.ndarray:
    """Anti-aliased alpha (s, s) float32 in [0, 1] of `shape` filling an s x s sprite (1 px clear border)."""
    ss = 4  # supersampling for smooth edges
    n = s * ss
    c, r = n / 2, n / 2 - ss  # centre and radius in supersampled pixels
    img = np.zeros((n, n), np.uint8)

    def poly(pts):
        cv2.fillPoly(img, [np.round(np.asarray(pts) - 0.5).astype(np.int32)], 255, lineType=cv2.LINE_8)

    if shape == "square":
        h = 0.9 * r
        poly([(c - h, c - h), (c + h, c - h), (c + h, c + h), (c - h, c + h)])
    elif shape == "rectangle":
        poly([(c - r, c - r * 0.6), (c + r, c - r * 0.6), (c + r, c + r * 0.6), (c - r, c + r * 0.6)])
    elif shape == "triangle":
        poly([(c, c - r), (c + r * 0.98, c + r * 0.75), (c - r * 0.98, c + r * 0.75)])
    elif shape == "ball":
        cv2.circle(img, (int(c), int(c)), int(r), 255, -1, lineType=cv2.LINE_8)
    elif shape == "diamond":
        poly([(c, c - r), (c + r * 0.7, c), (c, c + r), (c - r * 0.7, c)])
    elif shape == "star":  # five chunky points: thin spikes would be hard to segment and to put points on
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.55)
        poly(np.stack([c + rad * np.cos(ang), c + 0.05 * r + rad * np.sin(ang)], 1))
    elif shape == "hexagon":
        ang = np.arange(6) * np.pi / 3
        poly(np.stack([c + r * np.cos(ang), c + r * np.sin(ang)], 1))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def sprite_texture(rng: np.random.Generator, colour: str, texture: str, s: int) -> np.ndarray:
    """RGB (s, s, 3) float32: the named colour with a coarse pattern in a second shade, over fine grain."""
    base = np.array(COLOURS[colour], np.float32)
    luma = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    shade = base * 0.5 if luma > 110 else base + (255 - base) * 0.5  # contrast without changing the hue's name
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    a = rng.uniform(0, np.pi)
    xr, yr = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    if texture == "striped":
        period = s / rng.uniform(3.0, 5.0)
        m = (np.mod(xr / period, 1.0) < 0.5).astype(np.float32)
    elif texture == "checkered":
        cell = s / rng.uniform(3.0, 5.0)
        m = (np.mod(np.floor(xr / cell) + np.floor(yr / cell), 2) == 1).astype(np.float32)
    elif texture == "dotted":
        g = s / rng.uniform(3.0, 4.5)
        dx, dy = np.mod(xr, g) - g / 2, np.mod(yr, g) - g / 2
        m = (dx * dx + dy * dy < (0.3 * g) ** 2).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    m = cv2.GaussianBlur(m, (0, 0), 0.6)
    rgb = base * (1 - m[..., None]) + shade * m[..., None]
    # Fine grain: corner-like texture everywhere, so Lucas-Kanade is not blind inside a stripe (aperture problem).
    grain = cv2.GaussianBlur(rng.standard_normal((s, s)).astype(np.float32), (0, 0), 1.0)
    grain *= 28.0 / (grain.std() + 1e-6)
    light = 1.0 + 0.12 * ((x - s / 2) * np.cos(a) + (y - s / 2) * np.sin(a)) / s  # a soft lighting gradient
    return np.clip(rgb * light[..., None] + grain[..., None], 0, 255).astype(np.float32)


def background_image(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A muted, mottled RGB image (h, w, 3) float32: multi-octave value noise in a random earthy palette."""
    lum = np.zeros((h, w), np.float32)
    for cell, weight in ((64, 1.0), (24, 0.6), (8, 0.25)):
        small = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
        big = cv2.resize(small, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)
        lum += weight * big[cell:cell + h, cell:cell + w]
    lum = (lum - lum.mean()) / (lum.std() + 1e-6)
    tint = cv2.resize(rng.random((4, 4, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) - 0.5
    hue, sat, val = rng.random(), rng.uniform(0.12, 0.35), rng.uniform(0.35, 0.55)
    base = np.array(colorsys.hsv_to_rgb(hue, sat, val), np.float32) * 255
    img = base + 32.0 * lum[..., None] + 30.0 * tint
    return np.clip(img, 0, 200).astype(np.float32)
