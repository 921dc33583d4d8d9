"""Features stage: one vector per sampled frame, item.feat (T, D) float32 (stored as float16 in the sample).

Backends (`features.backend`):
- `clip`: transformers' CLIPVisionModelWithProjection `image_embeds` (768-d for ViT-L/14, as the PiTe release),
  from a local weights dir. `features.crop` = `center`: CLIP's processor (shortest side to 224, centre crop), which
  on a 16:9 frame sees only the middle 56 % of its width; `pad`: the frame padded to a square with the processor's
  mean colour first (LLaVA's expand2square), so the whole frame is seen.
  The stage sends the sample frames of all clips of the actor batch through CLIP together, `features.batch_size`
  frames a forward, resized and normalised by CLIP's processor on the model's device.
- `thumbnail`: the frame resized to 16x16 RGB with area averaging, flattened in (row, column, channel) order and
  divided by 255: 768 values in [0, 1]. Runs anywhere, needs nothing.

`extract_features(frames, cfg.features)` is the same computation as a plain function, for inference.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from annotate.config import AnnotateConfig, FeaturesConfig
from annotate.device import DTYPES, enable_tf32, frames_to_device, resolve_device, resolve_dtype
from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem
from annotate.stage import Resources, Stage

THUMB_SIDE = 16  # 16 * 16 * 3 = 768, CLIP ViT-L/14's projection size, so the two backends are interchangeable
CROPS = ("center", "pad")


def thumbnail_features(frames: np.ndarray) -> np.ndarray:
    """(T, h, w, 3) uint8 RGB -> (T, 768) float32 in [0, 1]: each frame area-averaged to 16x16, flattened."""
    frames = _check_frames(frames)
    out = np.empty((len(frames), THUMB_SIDE * THUMB_SIDE * 3), np.float32)
    for t, frame in enumerate(frames):
        # Resize in float so the averages are not rounded back to bytes.
        small = cv2.resize(frame.astype(np.float32), (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
        out[t] = small.reshape(-1) / 255.0
    return out


def pad_to_square(frame: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """LLaVA's expand2square: the frame centred on a square canvas of its longer side, filled with `colour`."""
    h, w = frame.shape[:2]
    side = max(h, w)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = colour
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = frame
    return canvas


def pad_to_square_tensor(images, colour: tuple[int, int, int]):
    """pad_to_square for a (n, 3, h, w) uint8 torch batch, on its device: the same canvas and offsets."""
    import torch

    n, _, h, w = images.shape
    if h == w:
        return images
    side = max(h, w)
    fill = torch.tensor(colour, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    canvas = fill.expand(n, 3, side, side).clone()
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[:, :, y0: y0 + h, x0: x0 + w] = images
    return canvas


def _slices(clips: Sequence[np.ndarray], ends: np.ndarray, lo: int, hi: int) -> list[np.ndarray]:
    """Frames lo..hi of the clips' concatenation, as one slice of each clip they touch (no copy)."""
    starts = ends - np.array([len(c) for c in clips])
    return [c[max(lo, s) - s: min(hi, e) - s] for c, s, e in zip(clips, starts, ends) if s < hi and e > lo]


class ThumbnailEncoder:
    dim = THUMB_SIDE * THUMB_SIDE * 3

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return thumbnail_features(frames)

    def version(self) -> str:
        return f"thumbnail {THUMB_SIDE}x{THUMB_SIDE} (opencv {cv2.__version__})"


class ClipEncoder:
    """CLIP vision tower + projection; frames in batches of `batch_size` (across clips with `encode`), `image_embeds`
    out. The weights are in `dtype` outright: ViT-L/14 in bfloat16 kept cosine >= 0.9999 to float32 on random weights
    (8 frames, CPU), and the sample stores float16 anyway."""

    def __init__(self, model, processor, crop: str = "center", batch_size: int = 32, device: str = "cpu",
                 dtype: str = "float32", name: str = "clip"):
        if crop not in CROPS:
            raise ConfigError(f"features.crop: unknown {crop!r} (expected {' | '.join(CROPS)})")
        if dtype not in DTYPES:
            raise ConfigError(f"features.dtype: unknown {dtype!r} (expected {' | '.join(DTYPES)})")
        if batch_size < 1:
            raise ConfigError(f"features.batch_size: must be >= 1, got {batch_size}")
        import torch

        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        enable_tf32(str(self.device))  # a float32 CLIP on a GPU (features.dtype: float32)
        self.model = model.to(self.device, self.dtype).eval()
        self.processor = processor
        self.crop = crop
        self.batch_size = batch_size
        self.name = name
        self.dim = int(model.config.projection_dim)
        self.pad_colour = tuple(int(m * 255) for m in processor.image_mean)  # as LLaVA: mean colour, truncated

    @classmethod
    def from_config(cls, fcfg: FeaturesConfig) -> "ClipEncoder":
        device = resolve_device(fcfg.device)
        dtype = resolve_dtype(fcfg.dtype, device)
        model, processor = load_clip(fcfg.weights, dtype)
        return cls(model, processor, fcfg.crop, fcfg.batch_size, device, dtype, Path(fcfg.weights).name)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.encode([frames])[0]

    def encode(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The frames of several clips in forwards of `batch_size` frames across the clips (ceil(total / batch_size)
        forwards, the last one short), preprocessed on the model's device; each clip's (T, D) float32 back."""
        import torch

        clips = [_check_frames(c) for c in clips]
        ends = np.cumsum([len(c) for c in clips])
        out = np.zeros((int(ends[-1]) if len(clips) else 0, self.dim), np.float32)
        for lo in range(0, len(out), self.batch_size):
            pixels = self._pixels(_slices(clips, ends, lo, min(lo + self.batch_size, len(out))))
            with torch.inference_mode():
                emb = self.model(pixel_values=pixels.to(self.dtype)).image_embeds
            out[lo: lo + len(emb)] = emb.float().cpu().numpy()
        return np.split(out, ends[:-1]) if len(clips) else []

    def _pixels(self, pieces: list[np.ndarray]):
        """CLIP's processor (resize, centre crop, normalise) run with torch on the model's device: frames go up as
        uint8 and are padded there for `pad`, so the host's one core does no per-frame image work."""
        images = []
        for frames in pieces:
            batch = frames_to_device(frames, self.device)
            images += list(pad_to_square_tensor(batch, self.pad_colour) if self.crop == "pad" else batch)
        return self.processor(images=images, return_tensors="pt", device=self.device,
                              input_data_format="channels_first")["pixel_values"]

    def version(self) -> str:
        import transformers

        return f"clip {self.name} image_embeds (transformers {transformers.__version__}, crop={self.crop})"


def clip_weights_problem(weights) -> str:
    if weights and (Path(weights) / "config.json").is_file():
        return ""
    return (f"features.weights: no CLIP model dir at {weights!r} (config.json missing); set features.weights to a "
            "local copy of openai/clip-vit-large-patch14 (hf download openai/clip-vit-large-patch14 --local-dir DIR)")


def load_clip(weights, dtype: str = "float32"):
    """CLIPVisionModelWithProjection + CLIPImageProcessor from a local dir (never the network)."""
    missing = clip_weights_problem(weights)
    if missing:
        raise ConfigError(missing)
    if dtype not in DTYPES:
        raise ConfigError(f"features.dtype: unknown {dtype!r} (expected {' | '.join(DTYPES)})")
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig.from_pretrained(weights, local_files_only=True)
    top = json.loads((Path(weights) / "config.json").read_text())
    if top.get("model_type") == "clip" and "projection_dim" in top:
        # A whole CLIPModel dir keeps the projection size at its top level; the vision half alone may not carry it.
        config.projection_dim = top["projection_dim"]
    try:
        model, info = CLIPVisionModelWithProjection.from_pretrained(
            weights, config=config, dtype=getattr(torch, dtype), local_files_only=True, output_loading_info=True
        )
    except (OSError, RuntimeError, ValueError) as exc:  # no weights file, or weights of another shape
        raise ConfigError(
            f"features.weights: cannot load CLIPVisionModelWithProjection from {weights} "
            f"({' '.join(str(exc).split())[:200]})"
        ) from exc
    # transformers leaves missing or misshapen weights random (a vision-only dir lacks the projection): refuse.
    bad = sorted(info["missing_keys"]) + sorted(str(k[0]) if isinstance(k, tuple) else str(k)
                                                for k in info["mismatched_keys"])
    if bad:
        raise ConfigError(
            f"features.weights: {weights} lacks {len(bad)} weights of CLIPVisionModelWithProjection "
            f"(e.g. {bad[0]}); it must hold a full CLIP model such as openai/clip-vit-large-patch14"
        )
    try:
        processor = CLIPImageProcessor.from_pretrained(weights, local_files_only=True)
    except OSError as exc:
        raise ConfigError(
            f"features.weights: {weights} has no image processor config (preprocessor_config.json)"
        ) from exc
    return model, processor


def load_frame_encoder(fcfg: FeaturesConfig):
    """The encoder `features.backend` names: a callable (T, h, w, 3) uint8 -> (T, D) float32."""
    if fcfg.backend == "thumbnail":
        return ThumbnailEncoder()
    if fcfg.backend == "clip":
        return ClipEncoder.from_config(fcfg)
    raise ConfigError(f"features.backend: unknown backend {fcfg.backend!r} (expected thumbnail | clip)")


@lru_cache(maxsize=2)
def _cached_encoder(backend, weights, crop, batch_size, device, dtype):
    return load_frame_encoder(
        FeaturesConfig(backend=backend, weights=weights, crop=crop, batch_size=batch_size, device=device, dtype=dtype)
    )


def extract_features(frames: np.ndarray, fcfg: FeaturesConfig | None = None) -> np.ndarray:
    """(T, h, w, 3) uint8 RGB -> (T, D) float32 with the backend of `fcfg` (default: thumbnail).

    The encoder is loaded on the first call and kept for later calls with the same settings.
    """
    fcfg = fcfg or FeaturesConfig()
    enc = _cached_encoder(fcfg.backend, fcfg.weights, fcfg.crop, fcfg.batch_size, fcfg.device, fcfg.dtype)
    return enc(frames)


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected (T, h, w, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    return frames


class FeatureStage(Stage):
    """Fills item.feat from item.clip.sample_frames. Pass `encoder` to use one already built (tests, notebooks)."""

    name = "features"

    def __init__(self, cfg: AnnotateConfig, encoder=None):
        super().__init__(cfg)
        self.encoder = encoder

    def resources(self) -> Resources:
        f = self.cfg.features
        if f.backend == "clip":
            # auto asks for a GPU; it runs on the CPU when none is there
            return Resources(num_cpus=1.0, num_gpus=0.0 if f.device == "cpu" else 1.0, memory_gb=3.0)
        return Resources(num_cpus=1.0, num_gpus=0.0, memory_gb=0.05)  # (T, 768) floats

    def setup(self) -> None:
        if self.encoder is None:
            self.encoder = load_frame_encoder(self.cfg.features)

    def problems(self) -> list[str]:
        if self.encoder is not None or self.cfg.features.backend != "clip":
            return []
        missing = clip_weights_problem(self.cfg.features.weights)
        return [missing] if missing else []

    def version(self) -> str:
        return self.encoder.version() if self.encoder is not None else self.cfg.features.backend

    def process_item(self, item: ClipItem) -> None:
        item.feat = np.asarray(self.encoder(self._frames(item)), np.float32)

    def process_batch(self, items: list[ClipItem]) -> None:
        """CLIP: the sample frames of all items through the encoder together, `features.batch_size` frames a
        forward across the clips. Other encoders (thumbnail): one item at a time, as the base stage does."""
        encode = getattr(self.encoder, "encode", None)
        if encode is None:
            super().process_batch(items)
            return
        ready: list[tuple[ClipItem, np.ndarray]] = []
        for item in items:  # a clip with bad frames is rejected here, alone
            self._guarded(item, lambda it: ready.append((it, _check_frames(self._frames(it)))))
        try:
            feats = encode([frames for _, frames in ready])
        except Exception:  # the batch failed (out of memory, say): one clip at a time, so only a clip that fails
            for item, _ in ready:  # alone is rejected, never its batch-mates
                self._guarded(item, self.process_item)
            return
        for (item, _), feat in zip(ready, feats):
            item.feat = np.asarray(feat, np.float32)

    def _frames(self, item: ClipItem) -> np.ndarray:
        if item.clip is None:
            raise StageError(self.name, "no decoded clip (the decode stage did not run)")
        return item.clip.sample_frames


def make_feature_extractor(cfg: AnnotateConfig) -> FeatureStage:
    if cfg.features.backend not in ("thumbnail", "clip"):
        raise ConfigError(f"features.backend: unknown backend {cfg.features.backend!r} (expected thumbnail | clip)")
    return FeatureStage(cfg)
