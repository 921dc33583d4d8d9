"""Motion: each object's path (wandering, stops, entries and exits, crossings kept apart) as per-frame affines, and
the camera's pan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annotate.synthetic.params import WorldParams


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
class Motion:
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


def plan_motion(rng, p: WorldParams, size: float, scale_end: float, radius: float, role: str,
                 others: list[tuple[np.ndarray, float]]) -> Motion:
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
    return Motion(centre, scale, angle)


def object_affines(m: Motion, size_px: float, sprite: int) -> np.ndarray:
    """(T, 2, 3) local->image: x = centre + scale * size/sprite * R(angle) (u - sprite/2)."""
    k = m.scale * size_px / sprite
    c, s = np.cos(m.angle) * k, np.sin(m.angle) * k
    A = np.zeros((len(k), 2, 3))
    A[:, 0, 0], A[:, 0, 1], A[:, 1, 0], A[:, 1, 1] = c, -s, s, c
    A[:, :, 2] = m.centre - (sprite / 2) * (A[:, :, 0] + A[:, :, 1])
    return A


def camera_path(rng, p: WorldParams) -> tuple[np.ndarray, int]:
    """Pan offsets (T, 2) of the crop in the background image, and the border the background needs around it."""
    T = p.frames
    t = np.arange(T, dtype=np.float64)
    heading = rng.uniform(0, 2 * np.pi) + rng.uniform(-1.0, 1.0) * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t / T)
    speed = p.pan_speed * rng.uniform(0.5, 1.0) * _smoothstep(t / 5.0)
    vel = speed[:, None] * np.stack([np.cos(heading), np.sin(heading)], 1)
    off = np.concatenate([[[0.0, 0.0]], np.cumsum(vel[:-1], 0)])
    border = int(np.ceil(np.abs(off).max())) + 2
    return off + border, border
