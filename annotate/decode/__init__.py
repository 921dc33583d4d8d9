"""The first stage: decode the clip's T samples and its tracking frames, one backend (PyAV).

Modules: `video.py` (the decoding: a demux scan for timestamps, then the frames wanted, seeking where it pays),
`container.py` (opening a path or a file object with one clear DecodeError per kind of bad input). This module: the stage,
and reading a video out of a tar member or a bucket.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError, DecodeError
from annotate.frames import FrameSize
from annotate.item import ClipItem
from annotate.stage import Resources, Stage, one_line
from annotate.storage import is_url, read_bytes
from annotate.decode.video import decode_clip, probe, video_duration

LONG_CLIPS = ("cut", "reject")
# Seconds a stated duration may exceed max_duration and still fit: metadata rounding, far below one frame.
DURATION_SLACK_S = 1e-3


class DecodeStage(Stage):
    name = "decode"
    threaded = True  # PyAV releases the GIL while it decodes

    def __init__(self, cfg: AnnotateConfig):
        super().__init__(cfg)
        if cfg.long_clips not in LONG_CLIPS:
            raise ConfigError(f"long_clips: expected cut or reject, got {cfg.long_clips!r}")
        for key, value in (("max_side", cfg.max_side), ("track.max_side", cfg.track.max_side),
                           ("ground.max_side", cfg.ground.max_side)):
            if not (isinstance(value, int) and value >= 16):
                raise ConfigError(f"{key}: expected a whole number of pixels >= 16, got {value!r}")
        every_n = cfg.ground.every_n_frames
        if cfg.ground.backend != "given" and not (isinstance(every_n, int) and every_n >= 1):
            raise ConfigError(f"ground.every_n_frames: expected a whole number of tracking frames >= 1, got {every_n!r}")
        if not (isinstance(cfg.ground.short_side, int) and cfg.ground.short_side >= 0):
            raise ConfigError(f"ground.short_side: expected pixels >= 0 (0 = only ground.max_side), "
                              f"got {cfg.ground.short_side!r}")
        if not cfg.max_duration >= 0:
            raise ConfigError(f"max_duration: must be >= 0 seconds (0 = no limit), got {cfg.max_duration}")

    def resources(self) -> Resources:
        # The T samples at max_side (100 frames at 720x405: 87 MB), the tracking frames in memory (at most a
        # track.window of them, 512x288: 0.44 MB each), the grounding frames (1333x750: 3 MB each, every
        # ground.every_n_frames-th of them) and the decoder's own buffers.
        return Resources(num_cpus=1, memory_gb=0.5)

    def version(self) -> str:
        import av

        return f"pyav-{av.__version__}"

    def process_item(self, item: ClipItem) -> None:
        if item.tar_member:
            # A video inside a video2dataset tar: decoded from its bytes (PyAV reads file objects).
            self._decode(item, io.BytesIO(read_member_bytes(item.video, item.tar_member)))
        elif is_url(item.video):
            self._decode(item, fetch_object(item.video))
        else:
            self._decode(item, item.video)

    def _decode(self, item: ClipItem, path) -> None:
        cfg = self.cfg
        end = self._end(item, path)
        # Malformed frames are left to the given grounder, which drops those boxes by name.
        extra = sorted({b["frame"] for b in item.boxes or [] if isinstance(b, dict) and _is_index(b.get("frame"))})
        if extra:
            # Given boxes on frames outside the clip cannot be grounded; the given grounder drops them by name.
            info = probe(path, start=item.start, end=end)
            if hasattr(path, "seek"):
                path.seek(0)
            extra = [f for f in extra if info.first_index <= f < info.first_index + info.num_frames]
        # A clip the tracker takes in one call keeps its tracking frames in memory (the tracker holds them all
        # then anyway); a longer one is tracked window by window and decodes them a window at a time.
        item.clip = decode_clip(
            path, num_samples=cfg.num_frames, track_fps=cfg.track_fps, start=item.start, end=end,
            max_side=cfg.max_side, extra_indices=extra, resident_frames=cfg.track.window or None,
            track_max_side=cfg.track.max_side, ground_size=FrameSize(cfg.ground.max_side, cfg.ground.short_side),
            # Given boxes name their own frames; a detector looks at every every_n-th tracking frame.
            ground_every_n=0 if cfg.ground.backend == "given" else cfg.ground.every_n_frames,
        )

    def _end(self, item: ClipItem, path) -> float | None:
        """The clip's end with max_duration applied, decided before decoding: `cut` ends the clip at start +
        max_duration; `reject` raises a DecodeError for a clip that lasts longer (known from the file's stated
        duration, else from a demux scan that stops soon after the limit)."""
        cfg = self.cfg
        start = item.start or 0.0
        if cfg.max_duration <= 0 or (item.end is not None and item.end - start <= cfg.max_duration):
            return item.end
        if cfg.long_clips == "cut":
            return start + cfg.max_duration  # the scan of decode_clip stops soon after it: nothing later is read
        seconds, exact = video_duration(path, item.start, limit=cfg.max_duration)
        if item.end is not None and item.end - start < seconds:
            seconds, exact = item.end - start, True
        if seconds > cfg.max_duration + DURATION_SLACK_S:
            name = f"{item.video}:{item.tar_member}" if item.tar_member else str(item.video)
            raise DecodeError(f"{name}: the clip lasts {seconds:.2f} s{'' if exact else ' or more'}, over "
                              f"max_duration={cfg.max_duration:g} (long_clips=reject)")
        return item.end


def fetch_object(url: str) -> io.BytesIO:
    """A video in a bucket, read whole into memory (one request; PyAV seeks in it as in a file), named by its URL
    in every message."""
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        raise DecodeError(f"{url}: missing file (no such object)") from None
    except OSError as exc:
        raise DecodeError(f"{url}: unreadable object ({one_line(exc)})") from None
    if not data:
        raise DecodeError(f"{url}: empty file (0 bytes)")
    buf = io.BytesIO(data)
    buf.name = url  # source_name() reads it
    return buf


def read_member_bytes(tar_path: str, member: str) -> bytes:
    """The bytes of one member of a tar (a video inside a video2dataset shard)."""
    st = os.stat(tar_path)
    info = _tar_members(tar_path, st.st_mtime_ns, st.st_size).get(member)
    if info is None:
        raise FileNotFoundError(f"{tar_path}: no member {member}")
    with open(tar_path, "rb") as f:
        f.seek(info.offset_data)
        data = f.read(info.size)
    if len(data) != info.size:
        raise EOFError(f"{tar_path}: member {member} is truncated ({len(data)} of {info.size} bytes)")
    return data


@functools.lru_cache(maxsize=4)
def _tar_members(tar_path: str, mtime_ns: int, size: int) -> dict[str, tarfile.TarInfo]:
    # A worker reads many clips of the same tar in a row: its member table is read once, not once per clip
    # (tarfile finds a member by scanning every header before it). Keyed by mtime and size too: a rewritten tar
    # is read again.
    with tarfile.open(tar_path) as tar:
        return {m.name: m for m in tar.getmembers() if m.isfile()}


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
