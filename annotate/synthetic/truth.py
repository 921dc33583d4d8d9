"""Exact ground truth of a clip: the gt-file format (`GroundTruth.save` / `load`) and the queries metrics need."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annotate.synthetic.geometry import apply_affine, bilinear, covers_shape, invert_affine

GT_VERSION = 1


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
        return covers_shape(self._padded_alpha(obj), invert_affine(self.affine[obj, t]), xy[:, 0], xy[:, 1])

    def local(self, obj: int, frame: int, xy: np.ndarray) -> np.ndarray:
        """(P, 2) object-local coordinates of image points xy (P, 2) at `frame`."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        u, v = apply_affine(invert_affine(self.affine[obj, frame]), xy[:, 0], xy[:, 1])
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
        on_shape = bilinear(self._padded_alpha(obj), uv[:, 0], uv[:, 1]) >= 0.5
        vis = (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height) & on_shape[:, None]
        for j in np.flatnonzero(self.z > self.z[obj]):
            inv = invert_affine(self.affine[j])  # (T, 2, 3)
            for t in range(self.n_frames):
                vis[:, t] &= ~covers_shape(self._padded_alpha(j), inv[t], x[:, t], y[:, t])
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
        from annotate.storage import is_url, read_bytes

        try:
            # An object in a bucket is read whole (np.load needs to seek); a local file is opened in place.
            with np.load(io.BytesIO(read_bytes(path)) if is_url(path) else path, allow_pickle=False) as z:
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
