"""`pite infer`: answer a question about a video, and say where the things the answer names go.

    pite infer --checkpoint runs/train/demo/final --video clip.mp4 --query "Describe the video."
               [--trajectories OUT.(png|mp4|gif)] [--json OUT.json] [--device cpu] [--dtype float32]
    pite infer --model_base vicuna-7b-v1.5 --stage1 S1 --stage2 S2 --stage3 S3 --clip_path clip-vit-large-patch14 ...

The video is decoded to the checkpoint's T samples (100), encoded with the checkpoint's feature backend (pite.json
records it; a CLIP backend needs `--clip_path`), and the model generates the answer. The answer's noun phrases
(spaCy noun chunks, as the annotation pipeline finds them in captions) are then matched to the generated tokens:
a phrase's trajectory is the trajectory head read at its LAST token (docs/design.md, "Readout rule"; `generate` applies
the checkpoint's head_shift). `--json` writes the answer and, per phrase, its char span, token span and trajectory
(K x T x 2, normalised x/width, y/height); `--trajectories` draws them on the frames.

The second form loads the PiTe release as published (model.release): the release's own argument names.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from annotate.config import DEFAULT_STOP_NOUNS, FeaturesConfig
from annotate.errors import ConfigError, PiteError
from model.conversation import Template
from model.generate import Generation
from model.pite import PiteModel


@dataclass
class Prediction:
    answer: str  # the generated text, stripped
    phrases: list[dict]  # per noun phrase: phrase, char_span, token_span, token_index, trajectory (K, T, 2)
    generation: Generation
    frame_indices: list[int] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def trajectories(self) -> np.ndarray:
        """(P, K, T, 2) float32 of the phrases, in answer order."""
        if not self.phrases:
            return np.zeros((0, 0, len(self.frame_indices), 2), np.float32)
        return np.stack([np.asarray(p["trajectory"], np.float32) for p in self.phrases])

    def to_json(self) -> dict:
        return {"answer": self.answer,
                "phrases": [{**p, "trajectory": np.asarray(p["trajectory"]).round(5).tolist()} for p in self.phrases],
                "frame_indices": self.frame_indices, "frame_times": self.frame_times,
                "n_tokens": len(self.generation.token_ids), "seconds": self.seconds}


class Predictor:
    """A loaded model with its tokenizer, template and frame encoder settings."""

    def __init__(self, model: PiteModel, tokenizer, template: Template, features: FeaturesConfig,
                 max_side: int = 640, source: str = ""):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.features = features
        self.max_side = max_side
        self.num_frames = model.config.n_frames  # frames decoded per video (the release's --fps)
        self.source = source
        self._nlp = None

    # ---- loading ------------------------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path, device: str = "cpu", dtype: str = "float32",
                        clip_path: Optional[str] = None, base: Optional[str] = None) -> "Predictor":
        from model.checkpoint import load_checkpoint

        model, tokenizer, template = load_checkpoint(ckpt_dir, device=device, dtype=dtype, base=base)
        model.eval()
        return cls(model, tokenizer, template, features_for(model.config.feature_backend,
                                                            model.config.feature_crop, clip_path, device),
                   source=str(ckpt_dir))

    @classmethod
    def from_release(cls, paths, device: str = "cpu", dtype: str = "float32") -> "Predictor":
        from model.release import load_release

        model, tokenizer, template, _ = load_release(paths, device=device, dtype=dtype)
        return cls(model, tokenizer, template, features_for("clip", "center", paths.clip_path, device),
                   source=str(paths.stage3 or paths.stage2 or paths.stage1))

    # ---- steps --------------------------------------------------------------------------------------------------

    def decode(self, video: str | Path):
        from annotate.decode.video import decode_clip

        # Only the T samples are needed: a vanishing tracking rate keeps decode_clip from decoding more.
        return decode_clip(video, num_samples=self.num_frames, track_fps=1e-6, max_side=self.max_side)

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        from annotate.features import extract_features

        feat = extract_features(frames, self.features)
        if feat.shape[1] != self.model.config.feat_dim:
            raise ConfigError(f"features: the {self.features.backend} backend gives {feat.shape[1]}-d features, "
                              f"the checkpoint expects {self.model.config.feat_dim}")
        return feat

    def generate(self, feat: np.ndarray, query: str, max_new_tokens: int = 256, temperature: float = 0.0,
                 seed: int = 0) -> Generation:
        from model.encoding import encode_prompt

        device = self.model.device
        ids = encode_prompt(self.tokenizer, self.template, self.model.video_token_id, query, n_video=len(feat))
        generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
        [gen] = self.model.generate(ids.to(device), video_features=torch.from_numpy(np.asarray(feat, np.float32))
                                    .to(device)[None], max_new_tokens=max_new_tokens, temperature=temperature,
                                    tokenizer=self.tokenizer, generator=generator)
        return gen

    def nlp(self):
        if self._nlp is None:
            from annotate.nouns import load_spacy

            self._nlp = load_spacy("en_core_web_sm")
        return self._nlp

    def predict(self, video: str | Path, query: str, max_new_tokens: int = 256, temperature: float = 0.0,
                seed: int = 0, clip=None) -> tuple[Prediction, object]:
        """(prediction, decoded clip) for one video and question."""
        t0 = time.perf_counter()
        clip = clip if clip is not None else self.decode(video)
        t1 = time.perf_counter()
        feat = self.encode_frames(clip.sample_frames)
        t2 = time.perf_counter()
        gen = self.generate(feat, query, max_new_tokens, temperature, seed)
        t3 = time.perf_counter()
        answer, phrases = phrase_trajectories(gen, self.nlp())
        pred = Prediction(answer=answer, phrases=phrases, generation=gen,
                          frame_indices=[int(i) for i in clip.sample_indices],
                          frame_times=[round(float(t), 4) for t in clip.sample_times],
                          seconds={"decode": round(t1 - t0, 3), "features": round(t2 - t1, 3),
                                   "generate": round(t3 - t2, 3)})
        return pred, clip


def features_for(backend: str, crop: str, clip_path: Optional[str], device: str) -> FeaturesConfig:
    """The frame encoder settings a checkpoint needs; a CLIP checkpoint needs the CLIP dir."""
    if backend == "clip" and not clip_path:
        raise ConfigError("--clip_path: the checkpoint was trained on CLIP features; pass the local "
                          "clip-vit-large-patch14 dir")
    if backend not in ("clip", "thumbnail"):
        raise ConfigError(f"checkpoint features.backend {backend!r} is unknown (expected thumbnail | clip)")
    return FeaturesConfig(backend=backend, weights=clip_path if backend == "clip" else None, crop=crop,
                          device=device)


def last_token(spans: Sequence[tuple[int, int]], start: int, end: int, text: str) -> Optional[int]:
    """Index of the last token covering the last non-space character of text[start:end] (the readout token)."""
    last = end - 1
    while last >= start and text[last].isspace():
        last -= 1
    covering = [i for i, (s, e) in enumerate(spans) if s <= last < e]
    return covering[-1] if covering else None


def phrase_trajectories(gen: Generation, nlp, stop_nouns: Sequence[str] = DEFAULT_STOP_NOUNS) -> tuple[str, list]:
    """(stripped answer, phrases): each noun phrase of the answer with the trajectory read at its last token.

    char_span indexes the stripped answer; token_span is [first, last + 1) of the generated tokens that overlap
    the phrase; token_index the readout token.
    """
    from annotate.nouns import extract_phrases

    text = gen.text or ""
    lead = len(text) - len(text.lstrip())
    answer = text.strip()
    out = []
    for ph in extract_phrases(nlp, [answer], stop_nouns)[0]:
        start, end = ph.start + lead, ph.end + lead
        tok = last_token(gen.token_spans, start, end, text)
        if tok is None:
            continue
        first = min(i for i, (s, e) in enumerate(gen.token_spans) if s < end and e > start)
        out.append({"phrase": ph.text, "char_span": [ph.start, ph.end], "token_span": [first, tok + 1],
                    "token_index": tok, "trajectory": gen.trajectories[tok].numpy()})
    return answer, out


def draw_prediction(pred: Prediction, clip, out: str | Path, fps: float = 10.0) -> Path:
    from pipelines.viz import draw_tracks, save_frames

    traj = pred.trajectories()
    if traj.shape[0] == 0:
        traj = np.zeros((0, 1, len(clip.sample_frames), 2), np.float32)
    images = draw_tracks(clip.sample_frames, traj, None, labels=[p["phrase"] for p in pred.phrases])
    return save_frames(images, out, fps=fps)


def add_release_args(ap: argparse.ArgumentParser) -> None:
    """The release's inference.py argument names for its layout (used instead of --checkpoint)."""
    g = ap.add_argument_group("PiTe release layout (instead of --checkpoint)")
    g.add_argument("--model_base", default=None, help="Vicuna v1.5 dir")
    g.add_argument("--stage1", default=None)
    g.add_argument("--stage2", default=None)
    g.add_argument("--stage3", default=None)
    g.add_argument("--pretrain_vision_adapter", default=None, help="default: stage2's vision_adapter.bin, else stage1's")


def load_predictor(args) -> Predictor:
    if getattr(args, "model_base", None):
        from model.release import ReleasePaths

        paths = ReleasePaths(model_base=args.model_base, stage1=args.stage1, stage2=args.stage2, stage3=args.stage3,
                             clip_path=args.clip_path, pretrain_vision_adapter=args.pretrain_vision_adapter)
        return Predictor.from_release(paths, device=args.device, dtype=args.dtype)
    if not args.checkpoint:
        raise ConfigError("--checkpoint: a PiTe checkpoint dir (pite.json), or the release layout via --model_base "
                          "and --stage1/2/3")
    if not (Path(args.checkpoint) / "pite.json").is_file():
        raise ConfigError(f"--checkpoint: {args.checkpoint} holds no PiTe checkpoint (pite.json); `make train` makes "
                          f"the demo's at runs/train/demo/final, `pite train --config ...` writes OUT/final")
    return Predictor.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype, clip_path=args.clip_path)


def run(predictor: Predictor, video: str, query: str, json_out: Optional[str] = None,
        trajectories_out: Optional[str] = None, max_new_tokens: int = 256, temperature: float = 0.0,
        seed: int = 0) -> Prediction:
    pred, clip = predictor.predict(video, query, max_new_tokens, temperature, seed)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        record = {"video": str(video), "query": query, "checkpoint": predictor.source,
                  "head_shift": predictor.model.config.head_shift, **pred.to_json()}
        Path(json_out).write_text(json.dumps(record, indent=1))
    if trajectories_out:
        draw_prediction(pred, clip, trajectories_out)
    return pred


def build_parser(prog: str = "pite infer") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="a PiTe checkpoint dir (pite.json)")
    ap.add_argument("--video", required=True)
    ap.add_argument("--query", required=True)
    ap.add_argument("--trajectories", default=None, help="draw the answer's phrases' trajectories: OUT.png|mp4|gif")
    ap.add_argument("--json", default=None, help="write the answer, phrases, token spans and trajectories")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16 (GPU)")
    ap.add_argument("--clip_path", default=None, help="clip-vit-large-patch14 dir, for CLIP-feature checkpoints")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--seed", type=int, default=0)
    add_release_args(ap)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        predictor = load_predictor(args)
        pred = run(predictor, args.video, args.query, args.json, args.trajectories, args.max_new_tokens,
                   args.temperature, args.seed)
    except PiteError as exc:
        print(f"pite infer: {exc}", file=sys.stderr)
        return 2
    print(pred.answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
