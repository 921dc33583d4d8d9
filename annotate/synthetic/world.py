"""A whole clip, deterministically from (seed, index): objects, motion, rendering, ground truth and language."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annotate.synthetic.geometry import render_frames, visible_boxes
from annotate.synthetic.language import describe_clip, noun_phrase
from annotate.synthetic.motion import Motion, camera_path, object_affines, plan_motion
from annotate.synthetic.params import COLOURS, SHAPES, TEXTURES, WorldParams
from annotate.synthetic.sprites import background_image, sprite_alpha, sprite_texture
from annotate.synthetic.truth import GroundTruth


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


def _valid(role: str, m: Motion, radius: np.ndarray, W: int, H: int) -> bool:
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


def _add_crossing(rng, p: WorldParams, motions: list[Motion], roles: list[str], sizes: np.ndarray,
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
    bent = Motion(motions[mover].centre * (1 - bump) + beside * bump, motions[mover].scale, motions[mover].angle)
    if not _valid(roles[mover], bent, radii[mover], W, H):
        return None
    motions[mover] = bent
    return mover, other


def _plan_all(rng, p: WorldParams, sizes: np.ndarray, scale_end: np.ndarray, roles: list[str]):
    """Each object's Motion and the radius bounding its sprite, planned in turn so later ones keep clear of earlier
    ones; `roles` is updated where an entry or exit did not fit."""
    motions, radii = [], []
    for k in range(len(sizes)):
        for attempt in range(60):  # rejection sampling: re-draw a plan that breaks its role's promise
            if attempt == 40:
                roles[k] = "roam"  # this entry/exit does not fit (tiny or crowded frame): plain wandering instead
            others = [(mo.centre, 0.6 * (sizes[k] + sizes[j]) * max(1.0, scale_end[k], scale_end[j]))
                      for j, mo in enumerate(motions)]
            m = plan_motion(rng, p, sizes[k], scale_end[k], 0.75 * sizes[k] * max(1.0, scale_end[k]), roles[k], others)
            radius = 0.75 * sizes[k] * m.scale  # bounds the sprite's half-diagonal (shapes leave a clear border)
            if _valid(roles[k], m, radius, p.width, p.height):
                break
        motions.append(m)
        radii.append(radius)
    return motions, radii


def _stacked_sprites(alpha: list[np.ndarray], rgb: list[np.ndarray], sprite_px: list[int]):
    """The objects' alpha (N, S, S) and uint8 texture (N, S, S, 3), each in the top-left of the largest size S."""
    n, S = len(alpha), max(sprite_px)
    alpha_arr = np.zeros((n, S, S), np.float32)
    sprite_arr = np.zeros((n, S, S, 3), np.uint8)
    for k in range(n):
        s = sprite_px[k]
        alpha_arr[k, :s, :s] = alpha[k]
        sprite_arr[k, :s, :s] = np.clip(np.rint(rgb[k]), 0, 255).astype(np.uint8)
    return alpha_arr, sprite_arr


def _object_records(rng, p: WorldParams, rel_sizes, names, sizes, scale_end, visible_frac, vis_count) -> list[dict]:
    """Each object's record: its noun phrase (drawn from `rng`, in object order), its attributes, and its grounding
    frame (the first where enough of it shows for a given box)."""
    colours, shapes, textures, roles = names
    size_words = ["small" if s < 0.34 else "large" if s > 0.66 else None  # by the size's place in its range
                  for s in (rel_sizes - p.min_size) / max(p.max_size - p.min_size, 1e-9)]
    objects = []
    for k in range(len(sizes)):
        phrase, core = noun_phrase(rng, colours[k], shapes[k], textures[k], size_words[k])
        best = visible_frac[k].max()
        ok = (vis_count[k] > 0) & (visible_frac[k] >= p.given_box_min_visible * best)
        ground = int(np.flatnonzero(ok)[0]) if ok.any() else 0
        objects.append({"phrase": phrase, "core": core, "colour": colours[k], "shape": shapes[k],
                        "texture": textures[k], "role": roles[k], "size_px": round(float(sizes[k]), 2),
                        "scale_end": round(float(scale_end[k]), 4), "ground_frame": ground})
    return objects


def make_clip(seed: int, index: int = 0, params: WorldParams | None = None) -> SynthClip:
    """Clip `index` of the world seeded `seed`, fully in memory. Same (seed, index, params) -> same clip."""
    p = (params or WorldParams()).validate()
    rng = clip_rng(seed, index)
    W, H = p.width, p.height
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
    alpha = [sprite_alpha(sh, s) for sh, s in zip(shapes, sprite_px)]
    rgb = [sprite_texture(rng, c, tx, s) for c, tx, s in zip(colours, textures, sprite_px)]

    motions, radii = _plan_all(rng, p, sizes, scale_end, roles)
    crossing = _add_crossing(rng, p, motions, roles, sizes, radii) if rng.random() < p.p_occlusion else None
    z = rng.permutation(n).astype(np.int32)

    affine = np.stack([object_affines(m, s, sp) for m, s, sp in zip(motions, sizes, sprite_px)])
    big_cam, border = camera_path(rng, p)
    bg = background_image(rng, W + 2 * border, H + 2 * border)
    frames, masks, in_frame, occluded_by = render_frames(p, bg, big_cam, affine, alpha, rgb, z)

    area = np.array([(a >= 0.5).sum() for a in alpha], np.float64)[:, None] * np.abs(
        affine[:, :, 0, 0] * affine[:, :, 1, 1] - affine[:, :, 0, 1] * affine[:, :, 1, 0])
    vis_count = masks.sum((2, 3))
    visible_frac = (vis_count / area).astype(np.float32)
    boxes = visible_boxes(masks)
    centres = np.stack([m.centre for m in motions])

    objects = _object_records(rng, p, sizes / side, (colours, shapes, textures, roles), sizes, scale_end, visible_frac,
                              vis_count)
    in_frame_frac = in_frame / area
    occ_frac = occluded_by / np.maximum(in_frame[:, None, :], 1)
    if crossing is not None and not (occluded_by[crossing].any() or occluded_by[crossing[::-1]].any()):
        crossing = None  # the bend did not make them touch: say nothing about it
    caption, events = describe_clip(rng, p, objects, centres, in_frame_frac, occ_frac, z, crossing)
    given = [{"phrase": o["phrase"], "frame": o["ground_frame"],
              "box": [float(v) for v in boxes[k, o["ground_frame"]]]} for k, o in enumerate(objects)
             if vis_count[k, o["ground_frame"]] > 0]

    sprites = _stacked_sprites(alpha, rgb, sprite_px)
    gt = GroundTruth(
        width=W, height=H, fps=float(p.fps), affine=affine, alpha=sprites[0], sprite=sprites[1],
        sprite_size=np.array(sprite_px, np.int32), z=z, boxes=boxes, visible=vis_count > 0,
        visible_frac=visible_frac, packed_masks=np.packbits(masks, axis=-1), camera=big_cam - border,
        objects=objects, caption=caption, events=events,
    )
    return SynthClip(video_id(index), frames, float(p.fps), caption, events, given, objects, gt)
