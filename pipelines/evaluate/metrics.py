"""Metrics of `pite evaluate`, pure Python/numpy, each following a published protocol (named per function).

- temporal grounding: VTimeLLM's `iou` (vtimellm/eval/eval.py) and `grounding_metrics` (metric.py);
- dense captioning: its own module, pipelines/evaluate/dense.py (VTimeLLM's protocol on pycocoevalcap);
- trajectories: masked L1 of normalised coordinates and TAP-Vid's <delta^x_avg> (every frame scored: the model
  gets no query point);
- open-ended QA: SQuAD-style normalised exact match, or any judge `(question, prediction, reference) -> score`.

A metric that cannot be computed here is reported as the string "unavailable: <why>", never approximated.
"""

from __future__ import annotations

import re
import string
from typing import Callable, Optional, Sequence

import numpy as np

from model.conversation import parse_span

RECALL_IOUS = (0.3, 0.5, 0.7)  # temporal grounding R@1
TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)  # pixels at 256 x 256
UNAVAILABLE = "unavailable"


# --- temporal grounding ---------------------------------------------------------------------------------------


def span_iou(pred: Sequence[float], gt: Sequence[float]) -> float:
    """VTimeLLM's grounding IoU of two [start, end] spans (any unit): intersection / (max end - min start).

    A reversed prediction (start > end) overlaps nothing; a zero-length pair with nothing around it gives 0 (the
    union is empty) instead of VTimeLLM's division by zero.
    """
    s, e = float(pred[0]), float(pred[1])
    gs, ge = float(gt[0]), float(gt[1])
    inter = max(0.0, min(e, ge) - max(s, gs))
    union = max(e, ge) - min(s, gs)
    return inter / union if union > 0 else 0.0


def grounding_iou(answer: str, gt: Sequence[float], duration: float) -> tuple[Optional[tuple[int, int]], float]:
    """(parsed frame indices or None, IoU rounded to 2 decimals as VTimeLLM does); unparseable = IoU 0 (a miss).

    The answer's "NN to NN" are /100 of the clip; the ground truth [start, end] seconds is divided by duration.
    """
    span = parse_span(answer)
    if span is None:
        return None, 0.0
    return span, round(span_iou((span[0] / 100, span[1] / 100), (gt[0] / duration, gt[1] / duration)), 2)


def grounding_summary(ious: Sequence[float]) -> dict:
    """R@1 at IoU 0.3/0.5/0.7 (iou >= m) and mIoU, x 100, over every query (misses included)."""
    n = len(ious)
    if n == 0:
        return {"n": 0, "mIoU": float("nan"), **{f"R1@{m}": float("nan") for m in RECALL_IOUS}}
    out = {"n": n, "mIoU": 100.0 * sum(ious) / n}
    for m in RECALL_IOUS:
        out[f"R1@{m}"] = 100.0 * sum(u >= m for u in ious) / n
    return out


# --- trajectories ---------------------------------------------------------------------------------------------


def trajectory_errors(pred: np.ndarray, target: np.ndarray, vis: np.ndarray,
                      size: tuple[float, float] = (256.0, 256.0)) -> dict:
    """Sums for L1 and <delta^x_avg> over visible points: pred/target (..., T, 2) normalised, vis (..., T).

    l1_sum: |dx| + |dy| averaged over the two coordinates, summed over visible points; within_x: visible points
    closer than x px (strictly) once scaled to `size` = (W, H) (TAP-Vid scores at 256 x 256); n: visible points.
    """
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    vis = np.asarray(vis, bool)
    err = np.abs(pred - target)
    out = {"l1_sum": float(err.mean(-1)[vis].sum()), "n": int(vis.sum())}
    dist2 = (((pred - target) * np.asarray(size)) ** 2).sum(-1)
    for x in TAPVID_THRESHOLDS:
        out[f"within_{x}"] = int(((dist2 < x * x) & vis).sum())
    return out


def trajectory_summary(sums: Sequence[dict]) -> dict:
    """L1 (normalised units) and <delta^x_avg> (x 100) pooled over every visible point of every item."""
    n = sum(s["n"] for s in sums)
    if n == 0:
        return {"n_points": 0, "L1": float("nan"), "delta_avg": float("nan")}
    out = {"n_points": n, "L1": sum(s["l1_sum"] for s in sums) / n}
    deltas = []
    for x in TAPVID_THRESHOLDS:
        d = 100.0 * sum(s[f"within_{x}"] for s in sums) / n
        out[f"delta_{x}"] = d
        deltas.append(d)
    out["delta_avg"] = float(np.mean(deltas))
    return out


# --- open-ended QA --------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, no punctuation, no articles (a/an/the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(question: str, prediction: str, reference: str) -> float:
    """The default judge: 1.0 when the normalised answers are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def load_judge(spec: Optional[str]) -> Callable[[str, str, str], float]:
    """`module:function` -> that callable (question, prediction, reference) -> score in [0, 1]; None = exact match."""
    if not spec:
        return exact_match
    import importlib

    from annotate.errors import ConfigError

    module, _, name = spec.partition(":")
    if not name:
        raise ConfigError(f"--judge {spec!r}: expected module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--judge {spec!r}: cannot load it ({exc})") from exc
