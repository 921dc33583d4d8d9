"""Helpers the annotation tests share: generated scenes and items for the stages, Grounding DINO's and CLIP's test
settings, a tiny SAM, the whole chain in one process, and videos whose frames spell their index. Fixtures that save
tiny models to disk are in conftest.py."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import torch

from annotate.clip import DecodedClip, VideoInfo
from annotate.config import AnnotateConfig, FeaturesConfig
from annotate.item import ClipItem, Grounding, Phrase
from annotate.pipeline import ClipAnnotator, make_item


# --- generated scenes for the trackers: a textured square moving over a panning textured background, optionally
# an occluder. Motions are in OpenCV coordinates (pixel centres on integers); `truth` returns continuous ones (+0.5).


def texture(rng, h, w, sigma, lo, hi):
    t = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), sigma)
    t = (t - t.min()) / (t.max() - t.min())
    return (lo + (hi - lo) * t).astype(np.float32)


class Scene:
    SQUARE = 32
    OCCLUDER = (24, 100)  # width, height

    def __init__(self, num_frames=30, size=128, velocity=(2.0, 1.0), start=(20.0, 40.0), occluder=None, seed=0,
                 flat=False):
        """occluder: (x at frame 0, velocity x) of a textured bar drawn over the square, or None.
        flat: the square is one plain grey (only camera noise on it) instead of textured."""
        rng = np.random.default_rng(seed)
        self.size, self.num_frames = size, num_frames
        self.velocity, self.start, self.occluder = np.array(velocity), np.array(start), occluder
        bg = texture(rng, 2 * size, 2 * size, 2.0, 30, 130)
        square = texture(rng, self.SQUARE, self.SQUARE, 1.2, 110, 250)
        if flat:
            square[:] = 220.0
        bar = texture(rng, self.OCCLUDER[1], self.OCCLUDER[0], 1.2, 0, 255)
        frames = []
        for f in range(num_frames):
            img = self._paste(None, bg, -np.array([0.5 * f, 0.3 * f]))  # camera pan
            img = self._paste(img, square, self.square_at(f))
            if occluder is not None:
                img = self._paste(img, bar, self.bar_at(f))
            img += rng.normal(0, 2.0, img.shape)
            frames.append(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
        self.frames = np.stack(frames)

    def square_at(self, f):  # top-left, non-linear in time
        return self.start + self.velocity * f + np.array([3.0 * np.sin(f / 4), 0.0])

    def bar_at(self, f):
        return np.array([self.occluder[0] + self.occluder[1] * f, 10.0])

    def _paste(self, img, tex, offset):
        m = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
        layer = cv2.warpAffine(tex, m, (self.size, self.size), flags=cv2.INTER_LINEAR)
        if img is None:
            return layer
        alpha = cv2.warpAffine(np.ones_like(tex), m, (self.size, self.size), flags=cv2.INTER_LINEAR)
        return img * (1 - alpha) + layer * alpha

    def truth(self, u):
        """(K, 2) square-local OpenCV coords -> (K, F, 2) continuous image coords."""
        return np.stack([[np.asarray(p) + self.square_at(f) + 0.5 for f in range(self.num_frames)] for p in u])

    def bar_distance(self, xy):
        """(K, F, 2) continuous -> (K, F) signed distance into the bar (> 0 inside, < 0 outside), in px."""
        out = np.full(xy.shape[:2], -np.inf)
        if self.occluder is None:
            return out
        for f in range(self.num_frames):
            x0, y0 = self.bar_at(f)  # its first pixel centre in OpenCV coords = its left edge in continuous ones
            x1, y1 = x0 + self.OCCLUDER[0], y0 + self.OCCLUDER[1]
            x, y = xy[:, f, 0], xy[:, f, 1]
            out[:, f] = np.minimum.reduce([x - x0, x1 - x, y - y0, y1 - y])
        return out


POINTS_U = np.array([[8.0, 9.0], [20.0, 12.0], [13.0, 22.0]])  # well inside the 32 px square


def track_item(frames, points, ground_frames, fps=10.0) -> ClipItem:
    f, h, w = frames.shape[:3]
    times = np.arange(f) / fps
    info = VideoInfo(path="gen.mp4", width=w, height=h, fps=fps, num_frames=f, duration=f / fps)
    clip = DecodedClip(info=info, scale=1.0, sample_indices=np.arange(f), sample_times=times, sample_frames=frames,
                       track_indices=np.arange(f), track_times=times, track_frames=frames)
    item = ClipItem(row=0, video_id="gen", video="gen.mp4", caption="a square")
    item.clip = clip
    item.phrases = [Phrase("a square", 0, 8, head="square", lemma="square")]
    item.groundings = [Grounding(phrase_index=0, track_frame=int(g), source_frame=int(g),
                                 box=np.array([0.0, 0.0, w, h]))  # the frame: no bound on out-of-frame positions
                       for g in ground_frames]
    item.points = np.asarray(points, dtype=np.float64)
    return item


def gray(frames):
    return frames[..., 0].copy()


def gray_rgb(frames):
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


# --- grounding: clips and items from frames, Grounding DINO's settings and its tiny vocabulary


def phrases_of(caption, texts, plural=()):
    out, at = [], 0
    for t in texts:
        start = caption.index(t, at)
        out.append(Phrase(t, start, start + len(t), plural=t in plural))
        at = start + len(t)
    return out


def make_clip(frames, track_indices, scale=0.5, num_frames=None):
    frames = np.asarray(frames, dtype=np.uint8)
    F, h, w, _ = frames.shape
    n = num_frames or int(track_indices[-1]) + 1
    info = VideoInfo(path="gen.mp4", width=round(w / scale), height=round(h / scale), fps=10.0, num_frames=n,
                     duration=n / 10.0)
    idx = np.asarray(track_indices, dtype=np.int64)
    return DecodedClip(info=info, scale=scale, sample_indices=idx, sample_times=idx / 10.0, sample_frames=frames,
                       track_indices=idx, track_times=idx / 10.0, track_frames=frames)


def ground_item(caption, texts, clip, boxes=None, plural=()):
    item = ClipItem(row=0, video_id="v", video="gen.mp4", caption=caption, boxes=boxes)
    item.phrases = phrases_of(caption, texts, plural)
    item.clip = clip
    return item


def dropped(item):
    return {d["phrase"]: d["reason"] for d in item.dropped}


WORDS = "a an the two red blue ball cup dog cat sofa lamp pillows chair on sits".split()


def write_vocab(path):
    """A BERT vocab with the special ids Grounding DINO hard-codes ([CLS] 101, [SEP] 102, '.' 1012, '?' 1029)."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(len(vocab), 1012)] + ["."]
    vocab += [f"[unused{i}]" for i in range(1013, 1029)] + ["?"] + WORDS
    assert (vocab.index("[CLS]"), vocab.index("."), vocab.index("?")) == (101, 1012, 1029)
    path.write_text("\n".join(vocab) + "\n")
    return len(vocab)


def gdino_cfg(weights, **ground):
    """Grounding DINO settings; pick `earliest` unless asked (these tests pin the frame loop and its early stop;
    tests/test_ground_best.py covers `best`)."""
    cfg = AnnotateConfig()
    cfg.ground.backend = "groundingdino"
    cfg.ground.weights = str(weights)
    cfg.ground.pick = "earliest"
    for k, v in ground.items():
        setattr(cfg.ground, k, v)
    return cfg


# --- features: a clip item over given frames, CLIP settings


PROJ = 24  # a small projection for the tiny model (ViT-L/14's is 768)


def item_with_frames(frames: np.ndarray) -> ClipItem:
    t = len(frames)
    info = VideoInfo(path="x.mp4", width=frames.shape[2], height=frames.shape[1], fps=10.0, num_frames=t,
                     duration=t / 10.0)
    idx = np.arange(t)
    clip = DecodedClip(info=info, scale=1.0, sample_indices=idx, sample_times=idx / 10.0, sample_frames=frames,
                       track_indices=idx, track_times=idx / 10.0, track_frames=frames)
    return ClipItem(row=0, video_id="v", video="x.mp4", caption="", clip=clip)


def clip_cfg(weights: str, **features) -> AnnotateConfig:
    cfg = AnnotateConfig()
    cfg.features = FeaturesConfig(backend="clip", weights=weights, **features)
    return cfg


# --- segmentation: an item with boxes, mask IoU, a tiny SAM from segment-anything's own classes


def segment_item(frames: np.ndarray, boxes: list[tuple[int, list[float]]]) -> ClipItem:
    """An item whose clip tracks `frames`, with one phrase + grounding per (track frame, xyxy box)."""
    item = item_with_frames(frames)
    for i, (t, box) in enumerate(boxes):
        item.phrases.append(Phrase(text=f"object {i}", start=0, end=1))
        item.groundings.append(Grounding(phrase_index=i, track_frame=t, source_frame=t, box=np.array(box, float)))
    return item


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def tiny_sam(img: int = 64, patch: int = 8, dim: int = 16):
    """A random SAM from segment-anything's own classes, small enough to run in milliseconds."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    grid = img // patch
    return Sam(
        image_encoder=ImageEncoderViT(img_size=img, patch_size=patch, embed_dim=dim, depth=1, num_heads=1,
                                      mlp_ratio=2.0, out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img, img),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=dim, num_multimask_outputs=3, iou_head_depth=2,
                                 iou_head_hidden_dim=16,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32, num_heads=1)),
    ).eval()


# --- the whole chain in this process on manifest rows


def annotate_rows(rows, out, cfg):
    """Every stage in this process (no Ray) on manifest rows written under `out`."""
    items = [make_item(i, r["video_id"], str(out / r["video"]), r["caption"], cfg.seed, events=r["events"],
                       boxes=r["boxes"], gt=str(out / r["gt"])) for i, r in enumerate(rows)]
    return ClipAnnotator(cfg).setup().annotate(items)


# --- videos whose frames spell their own index (flat colours, or textured so a wrong reference shows)


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


def textured(i: int, h: int, w: int) -> np.ndarray:
    """The colour that spells i plus a texture that changes every frame, so a frame decoded from the wrong
    references would not match (flat frames would)."""
    rng = np.random.default_rng(i)
    noise = rng.integers(-6, 7, (h, w, 1))
    return np.clip(np.array(index_colour(i)) + noise, 0, 255).astype(np.uint8)


# --- a manifest of synthetic clips, as the job's tests feed it


def write_manifest(root: Path, seed: int, n: int, params) -> Path:
    """n clips of the synthetic world `seed` written under `root`, and their manifest.jsonl (paths relative to it)."""
    import json

    from annotate.synthetic import make_clip
    from pipelines.synth import write_clip

    rows = [write_clip(make_clip(seed, i, params), root, params) for i in range(n)]
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
