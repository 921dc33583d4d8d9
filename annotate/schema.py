"""One PiTe sample (docs/design.md, "Sample schema"): build it, check it, turn it into WebDataset members and back.

A sample is the `KEY.json` metadata plus three arrays: `traj` float16 (N, K, T, 2) normalised x/y, `vis` bool
(N, K, T) and `feat` float16 (T, D). Nothing here knows about files or shards (that is `pipelines.shards`);
`validate_sample` is the single place that says what a well-formed sample is, for the writer and `pite inspect`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NoReturn, Optional

import numpy as np

from annotate.errors import SchemaError

# --- shard keys -------------------------------------------------------------------------------------------------

# Key + longest member suffix (".traj.npy", 9 chars) stays under the 100-byte name field of a plain ustar header,
# so no tar ever needs a long-name extension header for our members.
MAX_KEY_LEN = 80
HASH_LEN = 12  # hex digits of sha1(video_id): 48 bits keep distinct ids distinct at PiTe-143k scale
_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# A key that ends like a hashed key is hashed too, so an unchanged id can never equal another id's hashed key.
_HASHED_TAIL = re.compile(rf"-[0-9a-f]{{{HASH_LEN}}}$")


def _ascii_fold(text: str) -> str:
    """'Café Ø' -> 'Cafe_': accents dropped (NFKD), anything else unsafe becomes '_' (runs collapsed)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", folded)


def sanitize_key(video_id: str) -> str:
    """The WebDataset key of `video_id`: ASCII letters, digits, `-`, `_`, starting with a letter or digit.

    Ids that already are such keys (and short enough) are kept as they are, so ordinary keys stay readable.
    Any other id is cleaned and gets `-<12 hex of sha1(id)>` appended, so ids that clean to the same text
    ("a.b", "a/b", "a b") still get distinct keys. WebDataset splits member names at the first dot and
    treats `__x__` names as metadata, hence no dots and no leading `_`.
    """
    if not isinstance(video_id, str):
        raise SchemaError(f"video_id {video_id!r}: expected a string, got {type(video_id).__name__}")
    if len(video_id) <= MAX_KEY_LEN and _SAFE_KEY.fullmatch(video_id) and not _HASHED_TAIL.search(video_id):
        return video_id
    digest = hashlib.sha1(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LEN]
    stem = _ascii_fold(video_id).strip("_-")[: MAX_KEY_LEN - HASH_LEN - 1].rstrip("_-")
    return f"{stem}-{digest}" if stem else digest


# --- the sample -------------------------------------------------------------------------------------------------

MEMBERS = ("json", "traj.npy", "vis.npy", "feat.npy")
OBJECT_FIELDS = ("phrase", "char_span", "frame", "source_frame", "box", "score", "mask_area")


@dataclass
class Sample:
    meta: dict  # the KEY.json content
    traj: np.ndarray  # float16 (N, K, T, 2): x/width, y/height
    vis: np.ndarray  # bool (N, K, T)
    feat: np.ndarray  # float16 (T, D)

    @property
    def key(self) -> str:
        return sanitize_key(self.meta.get("video_id"))

    def to_members(self) -> dict[str, bytes]:
        """WebDataset members (suffix -> bytes), in the order they go into the tar."""
        try:
            blob = json.dumps(self.meta, ensure_ascii=False, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"sample {_name(self.meta)}: json: cannot serialise ({exc})") from exc
        return {
            "json": blob.encode("utf-8"),
            "traj.npy": _npy_bytes(self.traj),
            "vis.npy": _npy_bytes(self.vis),
            "feat.npy": _npy_bytes(self.feat),
        }

    @classmethod
    def from_members(cls, members: Mapping[str, bytes], key: str = "?") -> "Sample":
        """Inverse of `to_members`; extra members are ignored, a missing or unreadable one is a SchemaError."""
        for name in MEMBERS:
            if name not in members:
                raise SchemaError(f"sample {key!r}: {name}: member missing (has {sorted(members)})")
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SchemaError(f"sample {key!r}: json: not valid UTF-8 JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise SchemaError(f"sample {key!r}: json: expected an object, got {type(meta).__name__}")
        arrays = {}
        for name in MEMBERS[1:]:
            try:
                arrays[name] = np.load(io.BytesIO(members[name]), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise SchemaError(f"sample {key!r}: {name}: not a readable .npy ({exc})") from exc
        return cls(meta=meta, traj=arrays["traj.npy"], vis=arrays["vis.npy"], feat=arrays["feat.npy"])


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # C order always, so equal arrays give equal bytes whatever their memory layout was.
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _name(meta: Any) -> str:
    vid = meta.get("video_id") if isinstance(meta, dict) else None
    return repr(sanitize_key(vid)) if isinstance(vid, str) else "'<no video_id>'"


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples -> JSON builtins, so meta round-trips through KEY.json unchanged."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_sample(
    *,
    video_id: str,
    caption: str,
    width: int,
    height: int,
    fps: float,
    duration: float,
    frame_indices: Iterable[int],
    frame_times: Iterable[float],
    objects: Iterable[Mapping],
    traj: Optional[np.ndarray],
    vis: Optional[np.ndarray],
    feat: np.ndarray,
    dropped: Iterable[Mapping] = (),
    unmatched: Iterable[Mapping] = (),
    provenance: Optional[Mapping] = None,
    events: Optional[Iterable[Mapping]] = None,
    conversations: Optional[Iterable[Mapping]] = None,
    num_points: int = 3,
) -> Sample:
    """Fill the json fields and cast the arrays to the contract dtypes (no checks: see `validate_sample`).

    `traj`/`vis` may be None for a sample with no objects (converted instruction data); they become empty
    (0, num_points, T, ...) arrays.
    """
    meta = {
        "video_id": video_id,
        "caption": caption,
        "width": int(width),
        "height": int(height),
        "fps": float(fps),
        "duration": float(duration),
        "frame_indices": [int(i) for i in frame_indices],
        "frame_times": [float(t) for t in frame_times],
        "objects": [dict(o) for o in objects],
        "dropped": [dict(d) for d in dropped],
        "unmatched": [dict(u) for u in unmatched],
        "provenance": dict(provenance or {}),
    }
    if events is not None:
        meta["events"] = [dict(e) for e in events]
    if conversations is not None:
        meta["conversations"] = [dict(c) for c in conversations]
    meta = _plain(meta)
    t = len(meta["frame_indices"])
    if traj is None:
        traj = np.zeros((0, num_points, t, 2))
    if vis is None:
        vis = np.zeros(np.shape(traj)[:3], dtype=bool)
    return Sample(
        meta=meta,
        traj=np.asarray(traj).astype(np.float16),
        vis=np.asarray(vis).astype(bool),
        feat=np.asarray(feat).astype(np.float16),
    )


# --- validation -------------------------------------------------------------------------------------------------


def validate_sample(sample: Sample, *, num_frames: Optional[int] = None, num_points: Optional[int] = None) -> None:
    """Raise SchemaError("sample 'KEY': FIELD: reason") at the first way `sample` breaks the contract."""
    meta = sample.meta
    name = _name(meta)

    def fail(field: str, reason: str) -> NoReturn:
        raise SchemaError(f"sample {name}: {field}: {reason}")

    t = _check_meta(meta, num_frames, fail)
    caption, objects = meta["caption"], meta["objects"]
    for i, obj in enumerate(objects):
        _check_object(obj, f"objects[{i}]", caption, t, fail)
    n = len(objects)
    if n == 0 and not meta.get("conversations"):
        fail("objects", "empty, which only a sample with conversations may be")
    _check_arrays(sample, n, t, num_points, fail)


def _check_meta(meta, num_frames: Optional[int], fail) -> int:
    """The json member's fields; returns T, its number of sampled frames."""
    if not isinstance(meta, dict):
        fail("json", f"expected an object, got {type(meta).__name__}")
    for field, check in _META_FIELDS.items():
        if field not in meta:
            fail(field, "missing")
        reason = check(meta[field])
        if reason:
            fail(field, reason)
    for field, check in _OPTIONAL_FIELDS.items():
        if field in meta:
            reason = check(meta[field])
            if reason:
                fail(field, reason)
    t = len(meta["frame_indices"])
    if len(meta["frame_times"]) != t:
        fail("frame_times", f"has {len(meta['frame_times'])} entries but frame_indices has {t}")
    if num_frames is not None and t != num_frames:
        fail("frame_indices", f"has {t} frames, config says T={num_frames}")
    return t


def _check_object(obj: dict, where: str, caption: str, t: int, fail) -> None:
    """One object of the json: its fields, its span in the caption, its frame among the T, its box normalised."""
    for field in OBJECT_FIELDS:
        if field not in obj:
            fail(f"{where}.{field}", "missing")
    if not isinstance(obj["phrase"], str) or not obj["phrase"]:
        fail(f"{where}.phrase", "expected a non-empty string")
    span = obj["char_span"]
    if not (isinstance(span, list) and len(span) == 2 and all(_is_int(v) for v in span)):
        fail(f"{where}.char_span", f"expected [start, end] integers, got {span!r}")
    start, end = span
    if not 0 <= start < end <= len(caption):
        fail(f"{where}.char_span", f"{span} is not inside the caption (length {len(caption)})")
    if caption[start:end] != obj["phrase"]:
        fail(f"{where}.char_span", f"caption[{start}:{end}] is {caption[start:end]!r}, not {obj['phrase']!r}")
    if not _is_int(obj["frame"]) or not 0 <= obj["frame"] < t:
        fail(f"{where}.frame", f"{obj['frame']!r} is not a frame index in [0, {t})")
    if not _is_int(obj["source_frame"]) or obj["source_frame"] < 0:
        fail(f"{where}.source_frame", f"{obj['source_frame']!r} is not a source frame index >= 0")
    box = obj["box"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_finite(v) for v in box)):
        fail(f"{where}.box", f"expected 4 finite numbers, got {box!r}")
    x0, y0, x1, y1 = box
    if not (0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1):
        fail(f"{where}.box", f"{box} is not a normalised xyxy box (0 <= x0 <= x1 <= 1, same for y)")
    if not _is_finite(obj["score"]):
        fail(f"{where}.score", f"expected a finite number, got {obj['score']!r}")
    if not _is_finite(obj["mask_area"]) or obj["mask_area"] < 0:
        fail(f"{where}.mask_area", f"expected a number >= 0, got {obj['mask_area']!r}")
    if "outline" in obj and not _is_outline(obj["outline"]):
        fail(f"{where}.outline", "expected polygons of >= 3 [x, y] points in [0, 1]")
    per_frame = obj.get("propagated_outline", [[]] * t)
    if not (isinstance(per_frame, list) and len(per_frame) == t and all(_is_outline(o) for o in per_frame)):
        fail(f"{where}.propagated_outline", f"expected {t} outlines (one per frame, [] where none)")
    if "confidence" in obj and not (_is_finite(obj["confidence"]) and 0 <= obj["confidence"] <= 1):
        fail(f"{where}.confidence", f"expected a number in [0, 1], got {obj['confidence']!r}")


def _check_arrays(sample: Sample, n: int, t: int, num_points: Optional[int], fail) -> None:
    """The arrays' dtypes and shapes against the json (N objects, T frames) and the config (K points)."""
    traj, vis, feat = sample.traj, sample.vis, sample.feat
    contract = (("traj", traj, np.float16, 4), ("vis", vis, np.bool_, 3), ("feat", feat, np.float16, 2))
    for field, arr, dtype, ndim in contract:
        if not isinstance(arr, np.ndarray):
            fail(field, f"expected a numpy array, got {type(arr).__name__}")
        if arr.dtype != dtype:
            fail(field, f"dtype {arr.dtype}, expected {np.dtype(dtype)}")
        if arr.ndim != ndim:
            fail(field, f"shape {arr.shape} has {arr.ndim} dims, expected {ndim}")
    if traj.shape[0] != n:
        fail("traj", f"shape {traj.shape} has {traj.shape[0]} objects, json has {n}")
    if traj.shape[2] != t or traj.shape[3] != 2:
        fail("traj", f"shape {traj.shape}, expected (N, K, {t}, 2)")
    if vis.shape != traj.shape[:3]:
        fail("vis", f"shape {vis.shape}, expected {traj.shape[:3]} to match traj")
    if num_points is not None and traj.shape[1] != num_points:
        fail("traj", f"shape {traj.shape} has K={traj.shape[1]} points, config says K={num_points}")
    if feat.shape[0] != t:
        fail("feat", f"shape {feat.shape} has {feat.shape[0]} frames, frame_indices has {t}")
    if not np.isfinite(traj).all():
        fail("traj", f"{int((~np.isfinite(traj)).sum())} values are not finite")
    if not np.isfinite(feat).all():
        fail("feat", f"{int((~np.isfinite(feat)).sum())} values are not finite")


def _is_outline(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(p, list) and len(p) >= 3 and all(isinstance(xy, list) and len(xy) == 2 and all(
            _is_finite(c) and 0 <= c <= 1 for c in xy) for xy in p) for p in v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_str(v: Any) -> str:
    return "" if isinstance(v, str) else f"expected a string, got {type(v).__name__}"


def _check_video_id(v: Any) -> str:
    return "" if isinstance(v, str) and v else f"expected a non-empty string, got {v!r}"


def _check_positive_int(v: Any) -> str:
    return "" if _is_int(v) and v > 0 else f"expected an integer > 0, got {v!r}"


def _check_positive(v: Any) -> str:
    return "" if _is_finite(v) and v > 0 else f"expected a finite number > 0, got {v!r}"


def _check_non_negative(v: Any) -> str:
    return "" if _is_finite(v) and v >= 0 else f"expected a finite number >= 0, got {v!r}"


def _check_frame_indices(v: Any) -> str:
    if not isinstance(v, list) or not v or not all(_is_int(i) and i >= 0 for i in v):
        return "expected a non-empty list of integers >= 0"
    if any(b < a for a, b in zip(v, v[1:])):
        return "not in increasing order"
    return ""


def _check_frame_times(v: Any) -> str:
    if not isinstance(v, list) or not all(_is_finite(x) for x in v):
        return "expected a list of finite numbers"
    if any(b < a for a, b in zip(v, v[1:])):
        return "not in increasing order"
    return ""


def _check_list_of_dicts(v: Any) -> str:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        return "expected a list of objects"
    return ""


def _check_dropped(v: Any) -> str:
    reason = _check_list_of_dicts(v)
    if reason:
        return reason
    for i, d in enumerate(v):
        if not isinstance(d.get("phrase"), str) or not isinstance(d.get("reason"), str):
            return f"entry {i} needs string 'phrase' and 'reason', got {d!r}"
    return ""


def _check_provenance(v: Any) -> str:
    return "" if isinstance(v, dict) else f"expected an object, got {type(v).__name__}"


def _check_events(v: Any) -> str:
    reason = _check_list_of_dicts(v)
    if reason:
        return reason
    for i, e in enumerate(v):
        s, t = e.get("start"), e.get("end")
        if not (_is_finite(s) and _is_finite(t) and s <= t and isinstance(e.get("text"), str)):
            return f"entry {i} needs start <= end (numbers) and a string 'text', got {e!r}"
    return ""


def _check_conversations(v: Any) -> str:
    reason = _check_list_of_dicts(v)
    if reason:
        return reason
    for i, c in enumerate(v):
        if not isinstance(c.get("from"), str) or not isinstance(c.get("value"), str):
            return f"turn {i} needs string 'from' and 'value', got {c!r}"
    return ""


_META_FIELDS = {
    "video_id": _check_video_id,
    "caption": _check_str,
    "width": _check_positive_int,
    "height": _check_positive_int,
    "fps": _check_positive,
    "duration": _check_non_negative,
    "frame_indices": _check_frame_indices,
    "frame_times": _check_frame_times,
    "objects": _check_list_of_dicts,
    "dropped": _check_dropped,
    "unmatched": _check_list_of_dicts,
    "provenance": _check_provenance,
}
_OPTIONAL_FIELDS = {"events": _check_events, "conversations": _check_conversations}
