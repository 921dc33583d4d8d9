"""The synthetic world: clips of textured shapes over a panning textured background, with exact ground truth.

Everything happens in memory (no file layouts: docs/design.md, "Layout"): `make_clip(seed, index, params)` returns the frames,
a caption, timed events, given boxes and a `GroundTruth`; `encode_mp4` turns frames into H.264 bytes;
`pipelines.synth` writes them. `GroundTruth` is also the gt-file format (`save` / `load`) that quality metrics read.

How a clip is made, deterministically from its seed:
- a large procedurally textured background image, cropped along a smooth camera path (the pan);
- 2-4 objects of named colours, shapes and textures (stripes / checks / dots over fine grain, so a Lucas-Kanade
  tracker finds texture everywhere on them), each with an affine local->image transform per frame: a curved path
  with speed changes and stops, a slow scale change and a small rotation; some clips have an object that enters
  after frame 0, one that leaves, and two objects that cross with one in front of the other (z-order);
- ground truth from the same transforms: visible-pixel masks, visible boxes, and `track_points` for dense tracks;
- a caption naming every object once by a noun phrase, and events ("the red triangle stops") read off the motion.

Coordinates follow docs/design.md ("Frames, time and coordinates"): continuous, pixel (i, j) covers [i, i+1) x [j, j+1). Object-local coordinates are the
same convention on the object's sprite (an S x S texture + alpha image).
"""

from __future__ import annotations

import colorsys
import io
import json
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from annotate.errors import ConfigError

GT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Difficulty knobs


@dataclass
class WorldParams:
    """How hard the synthetic world is. Quality floors (LK tracking, GrabCut masks) are measured on these defaults."""

    width: int = 256  # frame size in pixels (even: yuv420p)
    height: int = 256
    frames: int = 100  # T frames per clip (the design's 100 samples then map 1:1 onto source frames)
    fps: float = 10.0  # 10 s clips; also the default track_fps, so tracking sees every frame
    min_objects: int = 2  # objects per clip, uniform in [min, max]; at most one per shape (7 shapes)
    max_objects: int = 4
    # Object size (its longer side before scale change) as a share of the shorter frame side: 0.14-0.27 is about
    # 36-69 px at 256x256, large enough for GrabCut and for a 21 px LK window to sit on the object.
    min_size: float = 0.14
    max_size: float = 0.27
    # Cruising speed in px/frame (a few px/frame: LK's pyramid follows up to ~10; exits may speed up to leave in time).
    min_speed: float = 0.8
    max_speed: float = 2.5
    speed_variation: float = 0.5  # speed swings by up to +-50% along the path (accelerations)
    max_turn: float = 0.06  # rad/frame of random wandering of the heading (smooth curves)
    p_stop: float = 0.35  # chance that an object stops for a while (1-2.5 s) mid-clip
    stop_seconds: tuple[float, float] = (1.0, 2.5)
    max_scale_change: float = 0.3  # an object's scale drifts smoothly to at most x1.3 or /1.3 over the clip
    max_rotation_deg: float = 20.0  # and it turns by at most this much over the clip
    pan_speed: float = 0.8  # px/frame of camera pan (background motion), along a smooth curve
    # Shares of clips with a planned event (a plan that cannot be kept, e.g. no moment when both objects are well
    # inside the frame, is dropped); other objects steer clear of each other, so chance overlaps are rare.
    p_occlusion: float = 0.5  # two objects are made to cross, one partly hiding the other (about 0.4 realised)
    p_late_entry: float = 0.3  # an object enters the frame after frame 0
    p_exit: float = 0.3  # an object leaves the frame before the end
    # Given boxes (the `given` grounder) sit at the first frame where an object shows at least this share of its
    # best visible area: 0 gives the literal first visible frame, where an entering object is a 1-px sliver.
    given_box_min_visible: float = 0.8
    crf: int = 18  # x264 quality: fine texture survives, so the decoded video still matches the ground truth
    preset: str = "veryfast"  # x264 speed preset (encoding is most of a clip's cost)

    def validate(self) -> "WorldParams":
        def bad(name: str, why: str):
            raise ConfigError(f"WorldParams.{name}: {why}")

        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            bad("width/height", f"need even sizes >= 16 (yuv420p), got {self.width}x{self.height}")
        if self.frames < 4:
            bad("frames", f"need at least 4, got {self.frames}")
        if self.fps <= 0:
            bad("fps", f"must be > 0, got {self.fps}")
        if not 1 <= self.min_objects <= self.max_objects <= len(SHAPES):
            bad("min_objects/max_objects", f"need 1 <= min <= max <= {len(SHAPES)}")
        if not 0 < self.min_size <= self.max_size < 1:
            bad("min_size/max_size", "need 0 < min <= max < 1 (shares of the shorter side)")
        if not 0 <= self.min_speed <= self.max_speed:
            bad("min_speed/max_speed", "need 0 <= min <= max")
        for name in ("p_stop", "p_occlusion", "p_late_entry", "p_exit", "given_box_min_visible", "speed_variation"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, f"must be in [0, 1], got {getattr(self, name)}")
        if self.max_scale_change < 0 or self.pan_speed < 0 or self.max_turn < 0:
            bad("max_scale_change/pan_speed/max_turn", "must be >= 0")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "WorldParams":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"WorldParams: unknown key(s) {unknown}")
        d = dict(d)
        if "stop_seconds" in d:
            d["stop_seconds"] = tuple(d["stop_seconds"])
        return cls(**d).validate()


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary: what the objects are called and what they look like

COLOURS = {  # name -> RGB, saturated so they stand apart from the muted background
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 225),
    "yellow": (240, 215, 40),
    "orange": (245, 135, 30),
    "purple": (145, 60, 195),
    "white": (245, 245, 245),
    "pink": (245, 120, 185),
}
SHAPES = ("square", "rectangle", "triangle", "ball", "diamond", "star", "hexagon")
TEXTURES = ("striped", "checkered", "dotted")
SIZE_WORDS = {"small": ("small",), "large": ("large", "big")}  # not "little": spaCy reads "a little" as an adverb


# ----------------------------------------------------------------------------------------------------------------
# Sprites: an object's look in its own coordinates


def _shape_alpha(shape: str, s: int) -> np.ndarray:
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


def _texture(rng: np.random.Generator, colour: str, texture: str, s: int) -> np.ndarray:
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


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------------------------
# Motion


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _wave(rng, lo: float, hi: float, cycles: tuple[float, float], t: np.ndarray) -> np.ndarray:
    """A random sinusoid over the clip: amplitude in [lo, hi], `cycles` periods per clip, random phase."""
    amp, freq, phase = rng.uniform(lo, hi), rng.uniform(*cycles), rng.uniform(0, 2 * np.pi)
    return amp * np.sin(2 * np.pi * freq * t / len(t) + phase)


def _angle_diff(a: float, b: float) -> float:
    return float((a - b + np.pi) % (2 * np.pi) - np.pi)


@dataclass
class _Motion:
    centre: np.ndarray  # (T, 2) image coordinates of the sprite centre
    scale: np.ndarray  # (T,) image px per local px
    angle: np.ndarray  # (T,) radians


def _walk(rng, p: WorldParams, size: float, radius: float, exit_at: int | None,
          others: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Centres (T, 2) of a wandering object that stays in frame, or (exit_at) heads out and is gone by the end.

    The heading wanders smoothly and is steered back when the object nears an edge, and away from the centres of
    `others` ((T, 2) path, clearance px) so that objects overlap by chance rarely: occlusions are planned
    (`p_occlusion`), not a side effect of crowding. Speed swings and may stop.
    """
    T, W, H = p.frames, p.width, p.height
    margin = 0.5 * size + 2
    inner = (margin, margin, W - margin, H - margin)
    pos = np.array([rng.uniform(inner[0], max(inner[0], inner[2])), rng.uniform(inner[1], max(inner[1], inner[3]))])
    theta = rng.uniform(0, 2 * np.pi)
    t = np.arange(T, dtype=np.float64)
    v = rng.uniform(p.min_speed, p.max_speed) * (1 + _wave(rng, 0, p.speed_variation, (0.5, 1.5), t))
    turn = sum(_wave(rng, -p.max_turn, p.max_turn, (0.3, 2.0), t) for _ in range(2))
    last_move = T if exit_at is None else exit_at
    if rng.random() < p.p_stop:  # a stop: speed eases to 0, holds, eases back
        length = int(round(p.fps * rng.uniform(*p.stop_seconds)))
        length = min(length, T // 4)
        ramp = max(1, min(5, length // 3))
        lo, hi = int(0.1 * T), last_move - length - 2 * ramp - 1
        if length >= 3 and hi > lo:
            t0 = int(rng.integers(lo, hi))
            env = _smoothstep((t - t0) / ramp) * (1 - _smoothstep((t - (t0 + ramp + length)) / ramp))
            v = v * (1 - env)
    out_dir = None
    centres = np.zeros((T, 2))
    for i in range(T):
        centres[i] = pos
        if exit_at is not None and i == exit_at:  # leave through the nearest edge, fast enough to be gone by T-1
            gaps = [pos[0], pos[1], W - pos[0], H - pos[1]]
            k = int(np.argmin(gaps))
            out_dir = np.pi * np.array([1.0, 1.5, 0.0, 0.5])[k]
            need = gaps[k] + radius + 3
            v_exit = max(float(v[i]), p.min_speed, need / (0.7 * max(1, T - 1 - exit_at)))
            ease = _smoothstep((t - exit_at) / 4.0)
            v = v * (1 - ease) + v_exit * ease
        if out_dir is not None:
            theta += np.clip(_angle_diff(out_dir, theta), -0.3, 0.3)
        else:
            steer = 0.0
            if not (inner[0] <= pos[0] <= inner[2] and inner[1] <= pos[1] <= inner[3]):
                to_centre = np.arctan2(H / 2 - pos[1], W / 2 - pos[0])
                steer = np.clip(_angle_diff(to_centre, theta), -0.15, 0.15)
            for path, clear in others:
                away = pos - path[i]
                if np.hypot(*away) < clear:
                    steer += np.clip(_angle_diff(np.arctan2(away[1], away[0]), theta), -0.2, 0.2)
            theta += turn[i] + steer
        pos = pos + v[i] * np.array([np.cos(theta), np.sin(theta)])
    return centres


def _plan_motion(rng, p: WorldParams, size: float, scale_end: float, radius: float, role: str,
                 others: list[tuple[np.ndarray, float]]) -> _Motion:
    T = p.frames
    t = np.arange(T, dtype=np.float64)
    if role == "roam":
        centre = _walk(rng, p, size, radius, None, others)
    else:  # an entry is an exit played backwards
        exit_at = int(rng.integers(int(0.3 * T), max(int(0.3 * T) + 1, int(0.6 * T))))
        backwards = [(path[::-1], clear) for path, clear in others] if role == "enter" else others
        centre = _walk(rng, p, size, radius, exit_at, backwards)
        if role == "enter":
            centre = centre[::-1].copy()
    a, b = sorted(rng.uniform(0, 1, 2) * (T - 1))
    ramp = _smoothstep((t - a) / max(b - a, 1.0))
    scale = scale_end ** ramp
    angle = np.deg2rad(rng.uniform(-15, 15)) + np.deg2rad(rng.uniform(-p.max_rotation_deg, p.max_rotation_deg)) * ramp
    return _Motion(centre, scale, angle)


def _affines(m: _Motion, size_px: float, sprite: int) -> np.ndarray:
    """(T, 2, 3) local->image: x = centre + scale * size/sprite * R(angle) (u - sprite/2)."""
    k = m.scale * size_px / sprite
    c, s = np.cos(m.angle) * k, np.sin(m.angle) * k
    A = np.zeros((len(k), 2, 3))
    A[:, 0, 0], A[:, 0, 1], A[:, 1, 0], A[:, 1, 1] = c, -s, s, c
    A[:, :, 2] = m.centre - (sprite / 2) * (A[:, :, 0] + A[:, :, 1])
    return A


def _camera(rng, p: WorldParams) -> tuple[np.ndarray, int]:
    """Pan offsets (T, 2) of the crop in the background image, and the border the background needs around it."""
    T = p.frames
    t = np.arange(T, dtype=np.float64)
    heading = rng.uniform(0, 2 * np.pi) + rng.uniform(-1.0, 1.0) * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t / T)
    speed = p.pan_speed * rng.uniform(0.5, 1.0) * _smoothstep(t / 5.0)
    vel = speed[:, None] * np.stack([np.cos(heading), np.sin(heading)], 1)
    off = np.concatenate([[[0.0, 0.0]], np.cumsum(vel[:-1], 0)])
    border = int(np.ceil(np.abs(off).max())) + 2
    return off + border, border


# ----------------------------------------------------------------------------------------------------------------
# Geometry shared by rendering, masks and track_points (one formula, so masks and point visibility agree exactly)


def _invert(A: np.ndarray) -> np.ndarray:
    """Inverse of 2x3 affine(s) (..., 2, 3)."""
    a, b, c = A[..., 0, 0], A[..., 0, 1], A[..., 0, 2]
    d, e, f = A[..., 1, 0], A[..., 1, 1], A[..., 1, 2]
    det = a * e - b * d
    inv = np.empty_like(A)
    inv[..., 0, 0], inv[..., 0, 1], inv[..., 0, 2] = e / det, -b / det, (b * f - c * e) / det
    inv[..., 1, 0], inv[..., 1, 1], inv[..., 1, 2] = -d / det, a / det, (c * d - a * f) / det
    return inv


def _apply(A: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return A[0, 0] * x + A[0, 1] * y + A[0, 2], A[1, 0] * x + A[1, 1] * y + A[1, 2]


def _bilinear(padded: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample an image zero-padded by 1 px at continuous coords of the unpadded image (zero outside it)."""
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    fx = np.clip(x + 0.5, 0.0, w + 1 - 1e-9)  # x - 0.5 (centres at integers) + 1 (the pad)
    fy = np.clip(y + 0.5, 0.0, h + 1 - 1e-9)
    x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    wx, wy = fx - x0, fy - y0
    if padded.ndim == 3:
        wx, wy = wx[..., None], wy[..., None]
    top = padded[y0, x0] * (1 - wx) + padded[y0, x0 + 1] * wx
    bot = padded[y0 + 1, x0] * (1 - wx) + padded[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bot * wy


def _covers(alpha_padded: np.ndarray, A_inv: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether image points (x, y) fall on the object's shape (alpha >= 0.5), ignoring frame and occlusion."""
    u, v = _apply(A_inv, x, y)
    return _bilinear(alpha_padded, u, v) >= 0.5


def _cv_matrix(A: np.ndarray, x0: int = 0, y0: int = 0) -> np.ndarray:
    """A local->image affine in continuous coords as OpenCV's pixel-index matrix, for an ROI starting at (x0, y0)."""
    M = A.copy()
    M[:, 2] = A[:, :2] @ np.array([0.5, 0.5]) + A[:, 2] - 0.5 - np.array([x0, y0])
    return M


def _roi(A: np.ndarray, sprite: int, W: int, H: int) -> tuple[int, int, int, int] | None:
    corners = np.array([[0, 0], [sprite, 0], [0, sprite], [sprite, sprite]], np.float64)
    xy = corners @ A[:, :2].T + A[:, 2]
    x0, y0 = max(0, int(np.floor(xy[:, 0].min())) - 1), max(0, int(np.floor(xy[:, 1].min())) - 1)
    x1, y1 = min(W, int(np.ceil(xy[:, 0].max())) + 1), min(H, int(np.ceil(xy[:, 1].max())) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


# ----------------------------------------------------------------------------------------------------------------
# Ground truth: the file format and the queries metrics need


@dataclass
class GroundTruth:
    """Exact ground truth of one synthetic clip. Object i is row i of every array; `z` larger = nearer."""

    width: int
    height: int
    fps: float
    affine: np.ndarray  # (N, T, 2, 3) float64 object-local -> image, continuous pixel coords
    alpha: np.ndarray  # (N, S, S) float32 sprite shapes (object-local; zero beyond sprite_size)
    sprite: np.ndarray  # (N, S, S, 3) uint8 sprite textures
    sprite_size: np.ndarray  # (N,) int32 side of each sprite
    z: np.ndarray  # (N,) int32 drawing order: higher is nearer the camera
    boxes: np.ndarray  # (N, T, 4) float32 xyxy of the visible pixels, NaN where not visible
    visible: np.ndarray  # (N, T) bool: any pixel of the object visible
    visible_frac: np.ndarray  # (N, T) float32 visible pixels / the object's full area at that frame
    packed_masks: np.ndarray  # (N, T, H, ceil(W/8)) uint8, np.packbits of the visible-pixel masks along x
    camera: np.ndarray  # (T, 2) float64 pan offset of the crop in the background image
    objects: list[dict]  # per object: phrase, colour, shape, texture, role, size_px, ground_frame
    caption: str = ""
    events: list[dict] = field(default_factory=list)

    @property
    def n_objects(self) -> int:
        return int(self.affine.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.affine.shape[1])

    @property
    def phrases(self) -> list[str]:
        return [o["phrase"] for o in self.objects]

    def mask(self, obj: int, t: int) -> np.ndarray:
        """(H, W) bool: pixels where object `obj` is visible at frame t."""
        return np.unpackbits(self.packed_masks[obj, t], axis=-1, count=self.width).astype(bool)

    def masks(self, obj: int) -> np.ndarray:
        """(T, H, W) bool visible-pixel masks of one object."""
        return np.unpackbits(self.packed_masks[obj], axis=-1, count=self.width).astype(bool)

    def _padded_alpha(self, obj: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_alpha_cache", {})
        if obj not in cache:
            s = int(self.sprite_size[obj])
            cache[obj] = np.pad(self.alpha[obj, :s, :s].astype(np.float64), 1)
        return cache[obj]

    def covers(self, obj: int, t: int, xy: np.ndarray) -> np.ndarray:
        """(P,) bool: image points xy (P, 2) lie on object `obj`'s shape at frame t (frame and occlusion ignored)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return _covers(self._padded_alpha(obj), _invert(self.affine[obj, t]), xy[:, 0], xy[:, 1])

    def local(self, obj: int, frame: int, xy: np.ndarray) -> np.ndarray:
        """(P, 2) object-local coordinates of image points xy (P, 2) at `frame`."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        u, v = _apply(_invert(self.affine[obj, frame]), xy[:, 0], xy[:, 1])
        return np.stack([u, v], 1)

    def track_points(self, obj: int, frame: int, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact tracks of the points of object `obj` that sit at image points xy (P, 2) in frame `frame`.

        Returns positions (P, T, 2) float64 pixels at every frame and visible (P, T) bool: inside the frame, on the
        object's own shape (a query off the shape is never visible), and not covered by a nearer object.
        """
        uv = self.local(obj, frame, xy)
        A = self.affine[obj]  # (T, 2, 3)
        x = A[None, :, 0, 0] * uv[:, :1] + A[None, :, 0, 1] * uv[:, 1:] + A[None, :, 0, 2]
        y = A[None, :, 1, 0] * uv[:, :1] + A[None, :, 1, 1] * uv[:, 1:] + A[None, :, 1, 2]
        on_shape = _bilinear(self._padded_alpha(obj), uv[:, 0], uv[:, 1]) >= 0.5
        vis = (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height) & on_shape[:, None]
        for j in np.flatnonzero(self.z > self.z[obj]):
            inv = _invert(self.affine[j])  # (T, 2, 3)
            for t in range(self.n_frames):
                vis[:, t] &= ~_covers(self._padded_alpha(j), inv[t], x[:, t], y[:, t])
        return np.stack([x, y], -1), vis

    # -- file format: np.savez_compressed, no pickles (strings as unicode arrays, records as JSON)

    _KEYS = ("size", "fps", "affine", "alpha", "sprite", "sprite_size", "z", "boxes", "visible", "visible_frac",
             "packed_masks", "camera", "phrases", "objects_json", "caption", "events_json")

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "version": np.array(GT_VERSION, np.int32),
            "size": np.array([self.width, self.height], np.int32),
            "fps": np.array(self.fps, np.float64),
            "affine": self.affine,
            "alpha": self.alpha,
            "sprite": self.sprite,
            "sprite_size": self.sprite_size,
            "z": self.z,
            "boxes": self.boxes,
            "visible": self.visible,
            "visible_frac": self.visible_frac,
            "packed_masks": self.packed_masks,
            "camera": self.camera,
            "phrases": np.array(self.phrases, dtype=np.str_),
            "objects_json": np.array(json.dumps(self.objects)),
            "caption": np.array(self.caption),
            "events_json": np.array(json.dumps(self.events)),
        }

    def save(self, path) -> None:
        """To a path or a binary file object."""
        if hasattr(path, "write"):
            np.savez_compressed(path, **self.to_arrays())
            return
        with open(path, "wb") as f:  # a file object: savez would otherwise append ".npz" to our ".gt.npz" names
            np.savez_compressed(f, **self.to_arrays())

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a synthetic ground-truth file ({exc})") from exc
        if int(d.get("version", -1)) != GT_VERSION:
            raise ValueError(f"{path}: ground-truth version {d.get('version')} is not {GT_VERSION}")
        missing = sorted(set(cls._KEYS) - set(d))
        if missing:
            raise ValueError(f"{path}: ground-truth file lacks {missing}")
        return cls(
            width=int(d["size"][0]), height=int(d["size"][1]), fps=float(d["fps"]), affine=d["affine"],
            alpha=d["alpha"], sprite=d["sprite"], sprite_size=d["sprite_size"], z=d["z"], boxes=d["boxes"],
            visible=d["visible"], visible_frac=d["visible_frac"], packed_masks=d["packed_masks"],
            camera=d["camera"], objects=json.loads(str(d["objects_json"])), caption=str(d["caption"]),
            events=json.loads(str(d["events_json"])),
        )


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _render(p: WorldParams, bg: np.ndarray, camera: np.ndarray, affine: np.ndarray, alpha: list[np.ndarray],
            rgb: list[np.ndarray], z: np.ndarray):
    """Frames (T, H, W, 3) uint8 and ground-truth masks; objects composited back to front with soft edges."""
    T, W, H, N = p.frames, p.width, p.height, len(alpha)
    frames = np.empty((T, H, W, 3), np.uint8)
    masks = np.zeros((N, T, H, W), bool)
    in_frame = np.zeros((N, T), np.int64)  # pixels on the shape inside the frame, occlusion ignored
    occluded_by = np.zeros((N, N, T), np.int64)  # [k, j, t]: pixels of k hidden by the nearer j
    premult = [np.dstack([c * a[..., None], a]).astype(np.float32) for c, a in zip(rgb, alpha)]
    padded = [np.pad(a.astype(np.float64), 1) for a in alpha]
    back_to_front = np.argsort(z, kind="stable")
    for t in range(T):
        ox, oy = camera[t]
        frame = cv2.warpAffine(bg, np.array([[1, 0, -ox], [0, 1, -oy]], np.float64), (W, H), flags=cv2.INTER_LINEAR)
        covered = np.zeros((H, W), bool)
        for k in back_to_front[::-1]:  # front to back: the visible mask is what nearer objects left uncovered
            A = affine[k, t]
            roi = _roi(A, alpha[k].shape[0], W, H)
            if roi is None:
                continue
            x0, y0, x1, y1 = roi
            ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
            inside = _covers(padded[k], _invert(A), xs, ys)
            in_frame[k, t] = inside.sum()
            under = covered[y0:y1, x0:x1]
            for j in np.flatnonzero(z > z[k]):  # nearer objects were already drawn into `covered` masks
                occluded_by[k, j, t] = (inside & masks[j, t, y0:y1, x0:x1]).sum()  # visible part of j only
            masks[k, t, y0:y1, x0:x1] = inside & ~under
            covered[y0:y1, x0:x1] |= inside
        for k in back_to_front:
            roi = _roi(affine[k, t], alpha[k].shape[0], W, H)
            if roi is None:
                continue
            x0, y0, x1, y1 = roi
            warped = cv2.warpAffine(premult[k], _cv_matrix(affine[k, t], x0, y0), (x1 - x0, y1 - y0),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            a = warped[..., 3:]
            frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - a) + warped[..., :3]
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames, masks, in_frame, occluded_by


def _boxes(masks: np.ndarray) -> np.ndarray:
    N, T = masks.shape[:2]
    boxes = np.full((N, T, 4), np.nan, np.float32)
    for k in range(N):
        cols, rows = masks[k].any(1), masks[k].any(2)  # (T, W), (T, H)
        for t in np.flatnonzero(cols.any(1)):
            xs, ys = np.flatnonzero(cols[t]), np.flatnonzero(rows[t])
            boxes[k, t] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)  # pixel i covers [i, i+1)
    return boxes


# ----------------------------------------------------------------------------------------------------------------
# Language: noun phrases, caption, events


def _phrase(rng, colour: str, shape: str, texture: str, size_word: str | None) -> tuple[str, str]:
    """(phrase as written in the caption, its core without the determiner)."""
    style = rng.choice(["colour", "texture", "texture_colour", "size_colour"], p=[0.45, 0.2, 0.2, 0.15])
    if style == "size_colour" and size_word is None:
        style = "colour"
    words = {
        "colour": [colour, shape],
        "texture": [texture, shape],
        "texture_colour": [texture, colour, shape],
        "size_colour": [str(rng.choice(SIZE_WORDS[size_word])) if size_word else "", colour, shape],
    }[style]
    core = " ".join(w for w in words if w)
    det = "the" if rng.random() < 0.2 else ("an" if core[0] in "aeiou" else "a")
    return f"{det} {core}", core


# Progressive verbs ("is drifting") on purpose: spaCy's small model reads "a purple diamond moves about" as one noun
# chunk ("diamond moves") about a fifth of the time, and then the nouns stage cannot find the object's phrase.
ROAM = ["is drifting around", "is wandering slowly", "is moving about the scene", "is sliding gently around",
        "is floating across the scene", "is meandering around"]
STOP = ["is pausing briefly", "is stopping for a moment", "is resting for a moment before moving on"]
ENTER = ["is sliding in from the {side}", "is entering the frame from the {side}", "is coming in from the {side}"]
EXIT = ["is leaving the frame on the {side}", "is moving out of view to the {side}", "is heading off to the {side}"]
GROW = ["growing a little", "getting a bit bigger", "gradually growing"]
SHRINK = ["shrinking a little", "getting a bit smaller", "gradually shrinking"]
IN_FRONT = ["is passing over {other}", "is drifting past {other}", "is crossing over {other}"]
BEHIND = ["is slipping behind {other}", "is passing behind {other}"]
INTROS = ["In this short video,", "In this clip,", "Here,", "Over a mottled background,", "In the footage,",
          "While the camera slowly moves,", "On a textured background,"]


def _side(xy: np.ndarray, W: int, H: int) -> str:
    gaps = {"left": xy[0], "top": xy[1], "right": W - xy[0], "bottom": H - xy[1]}
    return min(gaps, key=gaps.get)


def _runs(flags: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """[start, end) runs of True at least min_len long."""
    out, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if i - start >= min_len:
                out.append((start, i))
            start = None
    return out


def _describe(rng, p: WorldParams, objects: list[dict], centres: np.ndarray, in_frame_frac: np.ndarray,
              occ_frac: np.ndarray, z: np.ndarray, crossing: tuple[int, int] | None) -> tuple[str, list[dict]]:
    """Caption (every object named once by its phrase) and events read off the actual motion and visibility."""
    T, fps, W, H = p.frames, p.fps, p.width, p.height
    sec = lambda f: round(float(f) / fps, 3)  # noqa: E731
    events, verbs = [], {}
    min_stop = max(3, int(round(0.5 * fps)))
    for k, o in enumerate(objects):
        the = f"the {o['core']}"
        present = np.flatnonzero(in_frame_frac[k] > 0)
        speed = np.r_[np.linalg.norm(np.diff(centres[k], axis=0), axis=1), np.inf]
        stops = [(a, b) for a, b in _runs(speed < 0.15, min_stop) if in_frame_frac[k, (a + b) // 2] > 0.5]
        for a, b in stops:
            events.append({"start": sec(a), "end": sec(b), "text": f"{the} stops"})
        parts = []
        if len(present) and present[0] > 0:
            first = present[0]
            full = np.flatnonzero(in_frame_frac[k, first:] >= 0.95)
            end = first + (full[0] if len(full) else 0) + 1
            events.append({"start": sec(first), "end": sec(min(end, T)), "text": f"{the} enters the frame"})
            side = _side(centres[k, first], W, H)
            parts.append(str(rng.choice(ENTER)).format(side=side))
        if len(present) and present[-1] < T - 1:
            last = present[-1]
            full = np.flatnonzero(in_frame_frac[k, : last + 1] >= 0.95)
            start = full[-1] if len(full) else last
            events.append({"start": sec(start), "end": sec(last + 1), "text": f"{the} leaves the frame"})
            side = _side(centres[k, last], W, H)
            parts.append(str(rng.choice(EXIT)).format(side=side))
        if not parts:
            parts.append(str(rng.choice(STOP if stops else ROAM)))
        verb = ", then ".join([parts[0]] + [q.removeprefix("is ") for q in parts[1:]])
        growth = o["scale_end"]
        if growth > 1.15:
            verb += " and " + str(rng.choice(GROW))
        elif growth < 1 / 1.15:
            verb += " and " + str(rng.choice(SHRINK))
        verbs[k] = verb
    for k in range(len(objects)):  # occlusions: k is partly hidden by the nearer j
        for j in range(len(objects)):
            for a, b in _runs(occ_frac[k, j] > 0.1, 2):
                events.append({"start": sec(a), "end": sec(b),
                               "text": f"the {objects[j]['core']} passes in front of the {objects[k]['core']}"})
    events.sort(key=lambda e: (e["start"], e["end"], e["text"]))

    clauses, named = [], set()
    if crossing is not None:  # the mover's clause also names the object it crosses
        mover, other = crossing
        tmpl = IN_FRONT if z[mover] > z[other] else BEHIND
        clauses.append(f"{objects[mover]['phrase']} {str(rng.choice(tmpl)).format(other=objects[other]['phrase'])}")
        named |= {mover, other}
    for k in rng.permutation(len(objects)):
        if k not in named:
            clauses.append(f"{objects[k]['phrase']} {verbs[k]}")
    intro = str(rng.choice(INTROS))
    if len(clauses) == 1:
        text = f"{intro} {clauses[0]}."
    elif len(clauses) == 2:
        text = f"{intro} {clauses[0]} while {clauses[1]}."
    elif len(clauses) == 3:
        text = f"{intro} {clauses[0]}, {clauses[1]}, and {clauses[2]}."
    else:
        rest = ", ".join(clauses[2:-1]) + f" and {clauses[-1]}"
        text = f"{intro} {clauses[0]} while {clauses[1]}. Meanwhile, {rest}."
    return text, events


# ----------------------------------------------------------------------------------------------------------------
# A whole clip


@dataclass
class SynthClip:
    video_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    caption: str
    events: list[dict]  # {start, end, text} seconds
    boxes: list[dict]  # given boxes {phrase, frame, box}: one per object at its grounding frame
    objects: list[dict]  # phrase, core, colour, shape, texture, role, size_px, scale_end, ground_frame
    gt: GroundTruth

    def manifest_row(self, video: str, gt: str) -> dict:
        """A row of the input manifest (docs/design.md, "Input manifest"), with the given video and gt paths."""
        return {"video_id": self.video_id, "video": video, "caption": self.caption, "events": self.events,
                "boxes": self.boxes, "gt": gt}


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip `index` of a run seeded `seed` (independent streams, any order, any worker)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def video_id(index: int) -> str:
    return f"synth-{index:06d}"


def _choose_roles(rng, p: WorldParams, n: int) -> list[str]:
    roles = ["roam"] * n
    order = list(rng.permutation(n))
    if rng.random() < p.p_late_entry and order:
        roles[order.pop()] = "enter"
    if rng.random() < p.p_exit and order:
        roles[order.pop()] = "exit"
    return roles


def _valid(role: str, m: _Motion, radius: np.ndarray, W: int, H: int) -> bool:
    """A plan keeps its promise: roamers keep their centre in frame, an exit is gone at the end, an entry at 0."""
    c = m.centre
    gone = lambda i: (c[i, 0] + radius[i] < 0 or c[i, 0] - radius[i] > W or  # noqa: E731
                      c[i, 1] + radius[i] < 0 or c[i, 1] - radius[i] > H)
    inside = (c[:, 0] >= 0) & (c[:, 0] < W) & (c[:, 1] >= 0) & (c[:, 1] < H)
    if role == "roam":
        return bool(inside.all())
    if role == "exit":
        return gone(-1) and bool(inside[: len(c) // 4].all())
    return gone(0) and bool(inside[-(len(c) // 4):].all())


def _add_crossing(rng, p: WorldParams, motions: list[_Motion], roles: list[str], sizes: np.ndarray,
                  radii: list[np.ndarray]) -> tuple[int, int] | None:
    """Bend one object's path so it partly overlaps another around a time when both are well inside the frame."""
    n, T, W, H = len(motions), p.frames, p.width, p.height
    if n < 2:
        return None
    movers = sorted(range(n), key=lambda k: (roles[k] != "roam", rng.random()))
    mover = movers[0]
    other = int(rng.choice([k for k in range(n) if k != mover]))
    ok = [t for t in range(int(0.2 * T), int(0.8 * T) + 1)
          if all(sizes[k] / 2 <= motions[k].centre[t, 0] <= W - sizes[k] / 2
                 and sizes[k] / 2 <= motions[k].centre[t, 1] <= H - sizes[k] / 2 for k in (mover, other))]
    if not ok:
        return None
    tc = int(rng.choice(ok))
    # The mover is pulled towards a path that runs beside the other object, on the side it comes from, so they
    # overlap partly (reach < the sum of their radii) and the mover never passes right over the other's centre.
    side = motions[mover].centre[tc] - motions[other].centre[tc]
    side = side / max(np.hypot(*side), 1e-6)
    reach = rng.uniform(0.5, 0.8) * (radii[mover][tc] + radii[other][tc])
    beside = motions[other].centre + reach * side
    bump = np.exp(-0.5 * ((np.arange(T) - tc) / (T / 8)) ** 2)[:, None]
    bent = _Motion(motions[mover].centre * (1 - bump) + beside * bump, motions[mover].scale, motions[mover].angle)
    if not _valid(roles[mover], bent, radii[mover], W, H):
        return None
    motions[mover] = bent
    return mover, other


def make_clip(seed: int, index: int = 0, params: WorldParams | None = None) -> SynthClip:
    """Clip `index` of the world seeded `seed`, fully in memory. Same (seed, index, params) -> same clip."""
    p = (params or WorldParams()).validate()
    rng = clip_rng(seed, index)
    T, W, H = p.frames, p.width, p.height
    n = int(rng.integers(p.min_objects, p.max_objects + 1))
    shapes = [str(s) for s in rng.choice(SHAPES, n, replace=False)]
    colours = [str(c) for c in rng.choice(list(COLOURS), n, replace=n > len(COLOURS))]
    textures = [str(t) for t in rng.choice(TEXTURES, n)]
    side = min(W, H)
    sizes = rng.uniform(p.min_size, p.max_size, n) * side
    scale_end = np.exp(rng.uniform(-1, 1, n) * np.log1p(p.max_scale_change))
    roles = _choose_roles(rng, p, n)

    # Sprites: resolution = the largest on-screen size, so rendering only ever shrinks them (no blur from upscaling).
    sprite_px = [int(np.ceil(s * max(1.0, e))) + 2 for s, e in zip(sizes, scale_end)]
    alpha = [_shape_alpha(sh, s) for sh, s in zip(shapes, sprite_px)]
    rgb = [_texture(rng, c, tx, s) for c, tx, s in zip(colours, textures, sprite_px)]

    motions, radii = [], []
    for k in range(n):
        for attempt in range(60):  # rejection sampling: re-draw a plan that breaks its role's promise
            if attempt == 40:
                roles[k] = "roam"  # this entry/exit does not fit (tiny or crowded frame): plain wandering instead
            others = [(mo.centre, 0.6 * (sizes[k] + sizes[j]) * max(1.0, scale_end[k], scale_end[j]))
                      for j, mo in enumerate(motions)]
            m = _plan_motion(rng, p, sizes[k], scale_end[k], 0.75 * sizes[k] * max(1.0, scale_end[k]), roles[k], others)
            radius = 0.75 * sizes[k] * m.scale  # bounds the sprite's half-diagonal (shapes leave a clear border)
            if _valid(roles[k], m, radius, W, H):
                break
        motions.append(m)
        radii.append(radius)
    crossing = _add_crossing(rng, p, motions, roles, sizes, radii) if rng.random() < p.p_occlusion else None
    z = rng.permutation(n).astype(np.int32)

    affine = np.stack([_affines(m, s, sp) for m, s, sp in zip(motions, sizes, sprite_px)])
    big_cam, border = _camera(rng, p)
    bg = _background(rng, W + 2 * border, H + 2 * border)
    frames, masks, in_frame, occluded_by = _render(p, bg, big_cam, affine, alpha, rgb, z)

    area = np.array([(a >= 0.5).sum() for a in alpha], np.float64)[:, None] * np.abs(
        affine[:, :, 0, 0] * affine[:, :, 1, 1] - affine[:, :, 0, 1] * affine[:, :, 1, 0])
    vis_count = masks.sum((2, 3))
    visible_frac = (vis_count / area).astype(np.float32)
    boxes = _boxes(masks)
    centres = np.stack([m.centre for m in motions])

    size_words = ["small" if s < 0.34 else "large" if s > 0.66 else None  # by the size's place in its range
                  for s in (sizes / side - p.min_size) / max(p.max_size - p.min_size, 1e-9)]
    objects = []
    for k in range(n):
        phrase, core = _phrase(rng, colours[k], shapes[k], textures[k], size_words[k])
        best = visible_frac[k].max()
        ok = (vis_count[k] > 0) & (visible_frac[k] >= p.given_box_min_visible * best)
        ground = int(np.flatnonzero(ok)[0]) if ok.any() else 0
        objects.append({"phrase": phrase, "core": core, "colour": colours[k], "shape": shapes[k],
                        "texture": textures[k], "role": roles[k], "size_px": round(float(sizes[k]), 2),
                        "scale_end": round(float(scale_end[k]), 4), "ground_frame": ground})
    in_frame_frac = in_frame / area
    occ_frac = occluded_by / np.maximum(in_frame[:, None, :], 1)
    if crossing is not None and not (occluded_by[crossing].any() or occluded_by[crossing[::-1]].any()):
        crossing = None  # the bend did not make them touch: say nothing about it
    caption, events = _describe(rng, p, objects, centres, in_frame_frac, occ_frac, z, crossing)
    given = [{"phrase": o["phrase"], "frame": o["ground_frame"],
              "box": [float(v) for v in boxes[k, o["ground_frame"]]]} for k, o in enumerate(objects)
             if vis_count[k, o["ground_frame"]] > 0]

    S = max(sprite_px)
    alpha_arr = np.zeros((n, S, S), np.float32)
    sprite_arr = np.zeros((n, S, S, 3), np.uint8)
    for k in range(n):
        s = sprite_px[k]
        alpha_arr[k, :s, :s] = alpha[k]
        sprite_arr[k, :s, :s] = np.clip(np.rint(rgb[k]), 0, 255).astype(np.uint8)
    gt = GroundTruth(
        width=W, height=H, fps=float(p.fps), affine=affine, alpha=alpha_arr, sprite=sprite_arr,
        sprite_size=np.array(sprite_px, np.int32), z=z, boxes=boxes, visible=vis_count > 0,
        visible_frac=visible_frac, packed_masks=np.packbits(masks, axis=-1), camera=big_cam - border,
        objects=objects, caption=caption, events=events,
    )
    return SynthClip(video_id(index), frames, float(p.fps), caption, events, given, objects, gt)


# ----------------------------------------------------------------------------------------------------------------
# Encoding


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18, preset: str = "veryfast") -> bytes:
    """H.264 (libx264, yuv420p) mp4 bytes of RGB frames (T, H, W, 3). Byte-identical for identical input:
    one encoder thread (x264's threaded rate control is not deterministic), no macroblock-tree rate control (with
    it, x264 165 gave different bytes in about 1 of 20 runs at widths like 96 or 144: measured, it reads memory it
    never wrote) and bitexact muxing (no version tags)."""
    T, H, W, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
        for i in range(T):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def params_dict(p: WorldParams) -> dict:
    d = asdict(p)
    d["stop_seconds"] = list(d["stop_seconds"])
    return d
