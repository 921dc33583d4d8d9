"""The first stage: decode the clip's T samples and its tracking frames (annotate.video does the work)."""

from __future__ import annotations

import io
import tarfile

from annotate.item import ClipItem
from annotate.stage import Resources, Stage
from annotate.video import decode_clip, probe


class DecodeStage(Stage):
    name = "decode"

    def resources(self) -> Resources:
        return Resources(num_cpus=1, memory_gb=1.0)

    def version(self) -> str:
        import av

        return f"pyav-{av.__version__}"

    def process_item(self, item: ClipItem) -> None:
        if item.tar_member:
            # A video inside a video2dataset tar: decoded from its bytes (PyAV reads file objects).
            self._decode(item, io.BytesIO(read_member_bytes(item.video, item.tar_member)))
        else:
            self._decode(item, item.video)

    def _decode(self, item: ClipItem, path) -> None:
        cfg = self.cfg
        # Malformed frames are left to the given grounder, which drops those boxes by name.
        extra = sorted({b["frame"] for b in item.boxes or [] if isinstance(b, dict) and _is_index(b.get("frame"))})
        if extra:
            # Given boxes on frames outside the clip cannot be grounded; the given grounder drops them by name.
            info = probe(path, start=item.start, end=item.end)
            if hasattr(path, "seek"):
                path.seek(0)
            extra = [f for f in extra if info.first_index <= f < info.first_index + info.num_frames]
        item.clip = decode_clip(
            path, num_samples=cfg.num_frames, track_fps=cfg.track_fps, start=item.start, end=item.end,
            max_side=cfg.max_side, extra_indices=extra,
        )


def read_member_bytes(tar_path: str, member: str) -> bytes:
    """The bytes of one member of a tar (a video inside a video2dataset shard)."""
    with tarfile.open(tar_path) as tar:
        try:
            f = tar.extractfile(member)
        except KeyError:
            f = None
        if f is None:
            raise FileNotFoundError(f"{tar_path}: no member {member}")
        return f.read()


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
