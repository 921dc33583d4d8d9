"""Opening a video (a path, or an open binary file such as a tar member) with one clear DecodeError per kind of
bad input: missing, empty, not a video, a damaged container, no video stream."""

from __future__ import annotations

import os
from typing import BinaryIO, Optional, Union

import av

from annotate.errors import DecodeError

Source = Union[str, os.PathLike, BinaryIO]  # a path, or an open binary file (e.g. a tar member)

# First bytes of containers we know: a file that starts like one but does not open is damaged, not "not a video".
_MAGIC = ((4, b"ftyp", "MP4/MOV"), (4, b"moov", "MP4/MOV"), (4, b"mdat", "MP4/MOV"), (4, b"wide", "MP4/MOV"),
          (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"), (0, b"RIFF", "AVI"), (0, b"GIF8", "GIF"))


def source_name(src: Source) -> str:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else str(getattr(src, "name", "<stream>"))


def _sniff(src: Source) -> Optional[str]:
    """The container a file's first bytes announce, if one we know."""
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            head = f.read(16)
    else:
        src.seek(0)
        head = src.read(16)
        src.seek(0)
    for offset, magic, kind in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return kind
    return None


def open_video(src: Source, name: str):
    """Open a container and its video stream, or raise a DecodeError saying which kind of bad input this is."""
    if isinstance(src, (str, os.PathLike)):
        if not os.path.exists(src):
            raise DecodeError(f"{name}: missing file (no such file)")
        if not os.path.isfile(src):
            raise DecodeError(f"{name}: not a video (not a regular file)")
        if os.path.getsize(src) == 0:
            raise DecodeError(f"{name}: empty file (0 bytes)")
    else:
        src.seek(0)
    try:
        container = av.open(src if not isinstance(src, os.PathLike) else os.fspath(src), "r")
    except av.error.FFmpegError as exc:
        kind = _sniff(src)
        if kind is None:
            raise DecodeError(f"{name}: not a video (FFmpeg cannot read it as a media file: {exc.strerror})") from None
        raise DecodeError(f"{name}: corrupt or truncated {kind} container (FFmpeg cannot parse its header: "
                          f"{exc.strerror})") from None
    except OSError as exc:
        raise DecodeError(f"{name}: unreadable file ({exc.strerror or exc})") from None
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        container.close()
        raise DecodeError(f"{name}: not a video (no video stream; streams: {kinds})")
    # The first video stream, as players pick it; both passes must read the same one.
    return container, container.streams.video[0]
