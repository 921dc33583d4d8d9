"""annotate.video: which frames are decoded, at what size and orientation, and one clear error per kind of bad file.

Videos are written with PyAV (libx264, B-frames on) into tmp dirs. Frame i is a flat colour that spells i
(red = 30 + 10 * (i % 20), green = 30 + 50 * (i // 20)), so a decoded frame tells which source frame it is.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

import annotate.video as video
from annotate.errors import DecodeError
from annotate.video import decode_clip, decoded_size, probe, sample_positions, tracking_positions

SAMPLES = Path(__file__).parents[1].parent / "shared" / "samples"


def index_colour(i: int) -> tuple[int, int, int]:
    return 30 + 10 * (i % 20), 30 + 50 * (i // 20), 128


def frame_ids(frames: np.ndarray) -> np.ndarray:
    """The source index each decoded flat-colour frame spells."""
    mean = frames.reshape(len(frames), -1, 3).mean(axis=1)
    return (np.round((mean[:, 0] - 30) / 10) + 20 * np.round((mean[:, 1] - 30) / 50)).astype(int)


def write_video(path, n=30, w=64, h=48, fps=25, rotation=None, options=None, container_options=None,
                paint=None) -> Path:
    """n frames of libx264; `paint(i, h, w)` gives frame i, by default the colour that spells i."""
    paint = paint or (lambda i, h, w: np.broadcast_to(np.array(index_colour(i), np.uint8), (h, w, 3)).copy())
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream("libx264", rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)  # PyAV's sense: counter-clockwise, as VideoFrame.rotation reads
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(paint(i, h, w), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)


@pytest.fixture(scope="module")
def clip30(tmp_path_factory) -> Path:
    """30 frames, 25 fps, 64x48, moov first (so it can be cut short and still open)."""
    return write_video(tmp_path_factory.mktemp("v") / "clip30.mp4", container_options={"movflags": "faststart"})


# ---------------------------------------------------------------- the pure parts, on worked examples


def test_sample_positions_worked_examples():
    assert sample_positions(30, 10).tolist() == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    # n < T: first and last kept, repeats allowed
    assert sample_positions(5, 8).tolist() == [0, 1, 1, 2, 2, 3, 3, 4]
    assert sample_positions(1, 4).tolist() == [0, 0, 0, 0]


def test_tracking_positions_stride_and_last():
    # 25 fps at up to 10 fps: every 3rd frame (8.3 fps), plus the last one
    assert tracking_positions(30, 25.0, 10.0).tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert tracking_positions(7, 29.97, 10.0).tolist() == [0, 3, 6]
    assert tracking_positions(5, 10.0, 10.0).tolist() == [0, 1, 2, 3, 4]  # fps <= track_fps: every frame
    assert tracking_positions(5, 5.0, 10.0).tolist() == [0, 1, 2, 3, 4]


def test_decoded_size_bounds_the_longer_side_and_never_upscales():
    assert decoded_size(3840, 2160, 640) == (640, 360, 1 / 6)
    assert decoded_size(180, 320, 160) == (90, 160, 0.5)
    assert decoded_size(64, 48, 640) == (64, 48, 1.0)


# ---------------------------------------------------------------- decoding


def test_probe_reads_counts_rate_and_size(clip30):
    info = probe(clip30)
    assert (info.width, info.height, info.num_frames, info.fps, info.rotation) == (64, 48, 30, 25.0, 0)
    assert info.duration == pytest.approx(1.2)
    assert (info.first_index, info.start_time) == (0, 0.0)
    clipped = probe(clip30, start=0.4, end=0.8)
    assert (clipped.first_index, clipped.num_frames) == (10, 10)
    assert clipped.start_time == pytest.approx(0.4) and clipped.duration == pytest.approx(0.4)


def test_samples_follow_the_design_formula_and_hold_those_frames(clip30):
    clip = decode_clip(clip30, num_samples=10, track_fps=10.0)
    assert clip.sample_indices.tolist() == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert frame_ids(clip.sample_frames).tolist() == clip.sample_indices.tolist()
    np.testing.assert_allclose(clip.sample_times, clip.sample_indices / 25.0)
    assert clip.sample_frames.dtype == np.uint8 and clip.sample_frames.shape == (10, 48, 64, 3)


def test_more_samples_than_frames_repeat_frames(clip30):
    clip = decode_clip(clip30, num_samples=100)
    expected = np.round(np.linspace(0, 29, 100)).astype(int)
    assert clip.sample_indices.tolist() == expected.tolist()
    assert frame_ids(clip.sample_frames).tolist() == expected.tolist()
    assert len(clip.track_frames) == 11  # only the tracking frames are held apart from the samples


def test_tracking_frames_are_the_stride_plus_extra_indices(clip30):
    clip = decode_clip(clip30, num_samples=4, track_fps=10.0, extra_indices=[4, 28, 3])
    assert clip.track_indices.tolist() == [0, 3, 4, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29]
    assert frame_ids(clip.track_frames).tolist() == clip.track_indices.tolist()
    np.testing.assert_allclose(clip.track_times, clip.track_indices / 25.0)
    assert clip.track_position(28) == 11
    with pytest.raises(KeyError):
        clip.track_position(5)
    sample_rows = clip.sample_track_positions()  # samples 0, 10, 19, 29: 0 and 29 are tracking frames
    assert clip.sample_indices.tolist() == [0, 10, 19, 29] and sample_rows.tolist() == [0, -1, -1, 12]


def test_fast_track_rate_takes_every_frame(clip30):
    clip = decode_clip(clip30, num_samples=3, track_fps=30.0)
    assert clip.track_indices.tolist() == list(range(30))
    assert frame_ids(clip.track_frames).tolist() == list(range(30))


def test_start_end_clip_keeps_absolute_indices_and_clip_times(clip30):
    clip = decode_clip(clip30, num_samples=4, track_fps=10.0, start=0.4, end=0.8, extra_indices=[11])
    assert (clip.info.first_index, clip.info.num_frames) == (10, 10)
    assert clip.info.start_time == pytest.approx(0.4)
    assert clip.sample_indices.tolist() == [10, 13, 16, 19]
    assert frame_ids(clip.sample_frames).tolist() == [10, 13, 16, 19]
    np.testing.assert_allclose(clip.sample_times, [0.0, 0.12, 0.24, 0.36])  # seconds from the clip start
    assert clip.track_indices.tolist() == [10, 11, 13, 16, 19]
    assert frame_ids(clip.track_frames).tolist() == [10, 11, 13, 16, 19]


def test_late_clip_seeks_and_still_lands_on_the_right_frames(tmp_path, monkeypatch):
    path = write_video(tmp_path / "gop.mp4", n=100, options={"g": "10"})  # a keyframe every 10 frames
    seeks = []
    real_pass = video._decode_pass
    # record (seeks?, indexed by pts?) of each decode pass
    monkeypatch.setattr(video, "_decode_pass", lambda *a: seeks.append((a[5], a[2].pts is not None)) or real_pass(*a))
    clip = decode_clip(path, num_samples=5, start=2.0, end=2.5)
    assert seeks == [(True, True)]
    assert clip.sample_indices.tolist() == [50, 53, 56, 59, 62]
    assert frame_ids(clip.sample_frames).tolist() == [50, 53, 56, 59, 62]
    # A seek that lands past the first frame wanted falls back to reading from the start.
    seeks.clear()
    monkeypatch.setattr(video, "_SEEK_MARGIN_S", -3.0)
    clip = decode_clip(path, num_samples=5, start=2.0, end=2.5)
    assert seeks == [(True, True), (False, True)]
    assert frame_ids(clip.sample_frames).tolist() == [50, 53, 56, 59, 62]


def test_avi_is_indexed_by_decoder_order(tmp_path, monkeypatch):
    path = write_video(tmp_path / "b.avi", n=20)  # H.264 with B-frames: AVI's pts are decode order
    clip = decode_clip(path, num_samples=20)
    assert frame_ids(clip.sample_frames).tolist() == list(range(20))
    # Were AVI trusted for pts, decoded frames would disagree with them and the decode is redone in order mode.
    monkeypatch.setattr(video, "ORDER_ONLY_FORMATS", ())
    clip = decode_clip(path, num_samples=20, start=0.2, end=0.6)
    assert clip.sample_indices[0] == 5
    assert frame_ids(clip.sample_frames).tolist() == clip.sample_indices.tolist()


def test_a_frame_that_does_not_decode_is_an_error_not_a_shift(clip30, monkeypatch):
    """A frame the demuxer lists but the decoder never gives (here a phantom one) must not shift the indices."""
    real_scan = video._scan

    def scan_with_phantom(src, name, end, by_order):
        tl = real_scan(src, name, end, by_order)
        if tl.pts is None:  # decoder-order mode: one frame more than decodes
            return video._Timeline(times=np.arange(len(tl.times) + 1) / tl.fps, pts=None, fps=tl.fps)
        pts = np.insert(tl.pts, 5, (tl.pts[4] + tl.pts[5]) // 2)  # a frame between frames 4 and 5
        return video._Timeline(times=np.insert(tl.times, 5, (tl.times[4] + tl.times[5]) / 2), pts=pts, fps=tl.fps)

    monkeypatch.setattr(video, "_scan", scan_with_phantom)
    assert "corrupt: only 30 of 31 frames decode" in decode_error(clip30, num_samples=31)


def test_one_frame_video_is_valid(tmp_path):
    clip = decode_clip(write_video(tmp_path / "one.mp4", n=1), num_samples=5)
    assert clip.info.num_frames == 1
    assert clip.sample_indices.tolist() == [0] * 5 and clip.track_indices.tolist() == [0]
    assert frame_ids(clip.sample_frames).tolist() == [0] * 5
    np.testing.assert_array_equal(clip.sample_times, 0.0)


def test_vertical_and_4k_are_decoded_bounded(tmp_path):
    tall = decode_clip(write_video(tmp_path / "tall.mp4", n=3, w=180, h=320), num_samples=3, max_side=160)
    assert (tall.info.width, tall.info.height) == (180, 320)
    assert tall.size == (90, 160) and tall.scale == 0.5 and tall.sample_frames.shape == (3, 160, 90, 3)
    assert frame_ids(tall.sample_frames).tolist() == [0, 1, 2]
    big = decode_clip(write_video(tmp_path / "4k.mp4", n=2, w=3840, h=2160, options={"preset": "ultrafast"}),
                      num_samples=2)
    assert (big.info.width, big.info.height) == (3840, 2160)
    assert big.size == (640, 360) and big.scale == pytest.approx(1 / 6)
    assert frame_ids(big.sample_frames).tolist() == [0, 1]


def test_resize_averages_areas_and_keeps_positions(tmp_path):
    """1-px black/white stripes average to grey (an area resize, not point sampling), and a left/right split at
    source x = 120 of 240 stays at decoded x = 30 of 60."""

    def stripes_then_split(i, h, w):
        img = np.zeros((h, w, 3), np.uint8)
        if i == 0:
            img[:, 1::2] = 255
        else:
            img[:, w // 2:] = 255
        return img

    path = write_video(tmp_path / "area.mp4", n=2, w=240, h=96, paint=stripes_then_split, options={"qp": "0"})
    clip = decode_clip(path, num_samples=2, max_side=60)  # 4 source pixels to 1
    assert clip.size == (60, 24)
    stripes, split = clip.sample_frames[0].astype(int), clip.sample_frames[1, 12, :, 0].astype(int)
    assert np.abs(stripes - 128).max() < 10
    assert split[:29].max() < 20 and split[31:].min() > 235


@pytest.mark.parametrize("ccw, cw, where",
                         [(90, 270, "bottom-left"), (-90, 90, "top-right"), (180, 180, "bottom-right")])
def test_rotation_metadata_is_applied(tmp_path, ccw, cw, where):
    """A red top-left quadrant in a 64x48 coded frame, shown turned as the display matrix says."""

    def quadrant(i, h, w):
        img = np.zeros((h, w, 3), np.uint8)
        img[: h // 2, : w // 2] = (255, 0, 0)
        return img

    path = write_video(tmp_path / "rot.mp4", n=2, rotation=ccw, paint=quadrant)
    clip = decode_clip(path, num_samples=1)
    info = probe(path)
    assert info.rotation == cw and clip.info.rotation == cw
    size = (48, 64) if ccw % 180 else (64, 48)
    assert (info.width, info.height) == size and clip.size == size
    red = clip.sample_frames[0, :, :, 0] > 128
    h, w = red.shape
    corners = {"top-left": red[: h // 2, : w // 2], "top-right": red[: h // 2, w // 2:],
               "bottom-left": red[h // 2:, : w // 2], "bottom-right": red[h // 2:, w // 2:]}
    for name, part in corners.items():
        assert part.mean() > 0.9 if name == where else part.mean() < 0.1, name


def test_open_binary_file(clip30):
    with open(clip30, "rb") as f:
        clip = decode_clip(io.BytesIO(f.read()), num_samples=3)
    assert frame_ids(clip.sample_frames).tolist() == [0, 14, 29]  # round(14.5) is 14: numpy rounds half to even


# ---------------------------------------------------------------- one clear message per kind of bad input


def decode_error(path, **kwargs) -> str:
    with pytest.raises(DecodeError) as err:
        decode_clip(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_missing_file(tmp_path):
    assert "missing file" in decode_error(tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty file (0 bytes)" in decode_error(tmp_path / "empty.mp4")


def test_text_file_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("a cat sits on a sofa\n")
    assert "not a video (FFmpeg cannot read it as a media file" in decode_error(tmp_path / "notes.mp4")


def test_audio_only_file(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    assert "not a video (no video stream; streams: audio)" in decode_error(path)


def packets_of(path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet, in file order."""
    with av.open(str(path)) as src:
        return [(p.pos, p.size) for p in src.demux(src.streams.video[0]) if p.size]


def test_corrupt_frame_data(tmp_path, clip30):
    data = bytearray(clip30.read_bytes())
    pos, size = packets_of(clip30)[5]
    data[pos:pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "bad.mp4").write_bytes(bytes(data))
    assert "corrupt: undecodable data near frame" in decode_error(tmp_path / "bad.mp4")


def test_truncated_file_with_its_index_first(tmp_path, clip30):
    cut = packets_of(clip30)[12][0]  # cut where frame data 12 starts: 12 whole packets remain
    (tmp_path / "cut.mp4").write_bytes(clip30.read_bytes()[:cut])
    assert "truncated: stream ends after 12 of 30 frames" in decode_error(tmp_path / "cut.mp4")


def test_truncated_file_with_its_index_last(tmp_path):
    path = write_video(tmp_path / "whole.mp4")  # no faststart: the index (moov) is written at the end
    (tmp_path / "cut.mp4").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "corrupt or truncated MP4/MOV container" in decode_error(tmp_path / "cut.mp4")


def test_clip_range_without_frames(clip30):
    assert "clip range [5.0, 6.0) s holds no frames" in decode_error(clip30, start=5.0, end=6.0)
    assert "holds no frames" in decode_error(clip30, start=0.5, end=0.5)


def test_extra_index_outside_the_clip(clip30):
    message = decode_error(clip30, start=0.4, end=0.8, extra_indices=[3])
    assert "frame 3 asked for tracking is outside the clip (source frames 10-19)" in message


# ---------------------------------------------------------------- real footage


@pytest.mark.samples
@pytest.mark.skipif(not SAMPLES.is_dir(), reason="no ../shared/samples next to the repo")
@pytest.mark.parametrize("name, size, n, fps, decoded, tracked",
                         [("apple.mp4", (1296, 720), 50, 10.0, (640, 356), 50),
                          ("cat.mp4", (368, 480), 87, 20.0, (368, 480), 44)])
def test_sample_footage(name, size, n, fps, decoded, tracked):
    import cv2

    clip = decode_clip(SAMPLES / name)
    info = clip.info
    assert ((info.width, info.height), info.num_frames, info.fps, info.rotation) == (size, n, fps, 0)
    assert clip.size == decoded and len(clip.track_indices) == tracked
    assert clip.sample_indices.tolist() == np.round(np.linspace(0, n - 1, 100)).astype(int).tolist()
    # The decoded sample k is source frame k: compare with a plain full decode resized by OpenCV.
    with av.open(str(SAMPLES / name)) as src:
        keep = {0, n // 2, n - 1, n // 3, (n // 2 + n // 3) % n, (n - 1 + n // 3) % n}
        full = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(src.decode(video=0)) if i in keep}
    for k in (0, n // 2, n - 1):
        ref = cv2.resize(full[k], decoded, interpolation=cv2.INTER_AREA).astype(float)
        row = int(np.flatnonzero(clip.sample_indices == k)[0])
        assert np.abs(clip.sample_frames[row] - ref).mean() < 3
        other = cv2.resize(full[(k + n // 3) % n], decoded, interpolation=cv2.INTER_AREA).astype(float)
        assert np.abs(clip.sample_frames[row] - other).mean() > 5
