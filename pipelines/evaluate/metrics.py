"""Metrics of `pite evaluate`, pure Python/numpy, each following a published protocol (named per function).

- temporal grounding: VTimeLLM's `iou` (vtimellm/eval/eval.py) and `grounding_metrics` (metric.py);
- dense captioning: ActivityNet's densevid_eval as VTimeLLM ships it (eval_dvc.py) with CIDEr-D written here after
  coco-caption's cider_scorer.py, METEOR from pycocoevalcap when it (and Java) is installed, and SODA_c's
  order-preserving assignment (SODA/soda.py) on METEOR x tIoU;
- trajectories: masked L1 of normalised coordinates and TAP-Vid's <delta^x_avg> (every frame scored: the model
  gets no query point);
- open-ended QA: SQuAD-style normalised exact match, or any judge `(question, prediction, reference) -> score`.

A metric that cannot be computed here is reported as the string "unavailable: <why>", never approximated.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections import Counter, defaultdict
from typing import Callable, Optional, Sequence

import numpy as np

from model.conversation import parse_span

TIOUS = (0.3, 0.5, 0.7, 0.9)  # dense captioning (VTimeLLM / ActivityNet)
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


# --- dense video captioning -----------------------------------------------------------------------------------

# pycocoevalcap's PTBTokenizer drops these tokens after Stanford's PTB tokenisation.
_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_TOKEN = re.compile(r"n't|[a-z0-9]+(?:'[a-z]+)?|'[a-z]+|[^\sa-z0-9]")


def ptb_tokenize(text: str) -> str:
    """Lowercased words, punctuation dropped: a regex stand-in for coco-caption's Java PTB tokenizer.

    It splits clitics ("man's" -> "man 's") and drops the same punctuation; it differs from Stanford's on rare
    constructions (URLs, numbers with separators), which the captions scored here do not contain.
    """
    tokens = []
    for tok in _TOKEN.findall(text.lower().replace("n't", " n't")):
        if "'" in tok and not tok.startswith("'") and tok != "n't":
            head, tail = tok.split("'", 1)
            tokens += [head, "'" + tail]
        else:
            tokens.append(tok)
    return " ".join(t for t in tokens if t not in _PUNCT)


def _ngrams(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(refs: dict, hyps: dict, n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D as coco-caption's Cider().compute_score(gts, res): (mean score, per-id scores).

    refs: id -> list of reference strings; hyps: id -> list with one hypothesis string (already tokenised, as the
    scorer is given them). Document frequencies are counted over the refs of the ids scored together; the
    n-gram vectors are tf x (log(#ids) - log(max(1, df))); similarity = sum over n-grams of min(h, r) x r
    (clipped) over the norms, times a Gaussian penalty exp(-(len_h - len_r)^2 / (2 sigma^2)) where the "length"
    is, as in cider_scorer.py, the number of bigrams; averaged over n = 1..4 and the refs, times 10.
    """
    ids = list(hyps)
    if set(ids) != set(refs):
        raise ValueError("cider_d: refs and hyps must have the same ids")
    crefs = {i: [_ngrams(r.split(), n) for r in refs[i]] for i in ids}
    ctest = {i: _ngrams(hyps[i][0].split(), n) for i in ids}
    df: Counter = Counter()
    for i in ids:
        for gram in set(g for c in crefs[i] for g in c):
            df[gram] += 1
    ref_len = math.log(float(len(ids))) if ids else 0.0

    def vec(counts: Counter):
        v = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            v[k][gram] = float(tf) * (ref_len - math.log(max(1.0, df[gram])))
            norm[k] += v[k][gram] ** 2
            if k == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for i in ids:
        vh, nh, lh = vec(ctest[i])
        total = np.zeros(n)
        for c in crefs[i]:
            vr, nr, lr = vec(c)
            delta = float(lh - lr)
            val = np.zeros(n)
            for k in range(n):
                for gram, w in vh[k].items():
                    val[k] += min(w, vr[k].get(gram, 0.0)) * vr[k].get(gram, 0.0)
                if nh[k] != 0 and nr[k] != 0:
                    val[k] /= nh[k] * nr[k]
                val[k] *= math.exp(-(delta ** 2) / (2 * sigma ** 2))
            total += val
        score = float(np.mean(total)) / max(1, len(crefs[i])) * 10.0
        scores.append(score)
    return (float(np.mean(scores)) if scores else 0.0), scores


def meteor_scorer() -> tuple[Optional[object], str]:
    """(pycocoevalcap's Meteor, "") or (None, why it cannot run here)."""
    import shutil

    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError:
        return None, f"{UNAVAILABLE}: METEOR needs pycocoevalcap (pip install pycocoevalcap) and Java"
    if shutil.which("java") is None:
        return None, f"{UNAVAILABLE}: METEOR needs Java on PATH (pycocoevalcap runs meteor-1.5.jar)"
    return Meteor(), ""


def dvc_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """densevid_eval's tIoU: the union is capped at the summed lengths, +1e-8 against empty unions."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = min(max(a[1], b[1]) - min(a[0], b[0]), a[1] - a[0] + b[1] - b[0])
    return inter / (union + 1e-8)


def _garbage(rng: random.Random) -> str:
    """densevid_eval pairs a prediction that matches no event with a random string (seeded here)."""
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(10, 20)))


def dense_captioning_scores(preds: dict, gts: dict, tious: Sequence[float] = TIOUS, meteor=None,
                            seed: int = 0) -> dict:
    """CIDEr (and METEOR when a scorer is given) as densevid_eval: per tIoU, per video over its matched pairs,
    mean over videos, then mean over tIoUs. x 100 as VTimeLLM reports them.

    preds: video -> [{"timestamp": [s, e] seconds, "sentence"}]; gts: video -> {"timestamps", "sentences"}.
    Only videos with a prediction entry are scored (as densevid_eval); an empty prediction list scores 0.
    Also the detection precision/recall at each tIoU (prediction/event matched with tIoU > threshold).
    """
    rng = random.Random(seed)
    vids = [v for v in gts if v in preds]
    out: dict = {}
    cider_t, meteor_t, prec_t, rec_t = [], [], [], []
    for tiou in tious:
        cid, met, prec, rec = [], [], [], []
        for vid in vids:
            g, p = gts[vid], preds[vid]
            refs, hyps = {}, {}
            covered_g, covered_p = set(), set()
            for pi, pred in enumerate(p):
                added = False
                for gi, (ts, sent) in enumerate(zip(g["timestamps"], g["sentences"])):
                    u = dvc_iou(pred["timestamp"], ts)
                    if u > tiou:
                        covered_g.add(gi)
                        covered_p.add(pi)
                    if u >= tiou:
                        key = len(hyps)
                        hyps[key] = [ptb_tokenize(pred["sentence"])]
                        refs[key] = [ptb_tokenize(sent)]
                        added = True
                if not added:
                    key = len(hyps)
                    hyps[key] = [ptb_tokenize(pred["sentence"])]
                    refs[key] = [_garbage(rng)]
            prec.append(len(covered_p) / max(1, len(p)))
            rec.append(len(covered_g) / max(1, len(g["timestamps"])))
            cid.append(cider_d(refs, hyps)[0] if hyps else 0.0)
            if meteor is not None:
                met.append(meteor.compute_score(refs, hyps)[0] if hyps else 0.0)
        cider_t.append(float(np.mean(cid)) if cid else 0.0)
        prec_t.append(float(np.mean(prec)) if prec else 0.0)
        rec_t.append(float(np.mean(rec)) if rec else 0.0)
        if meteor is not None:
            meteor_t.append(float(np.mean(met)) if met else 0.0)
        out[f"CIDEr@{tiou}"] = 100 * cider_t[-1]
    out["CIDEr"] = 100 * float(np.mean(cider_t))
    out["Precision"] = 100 * float(np.mean(prec_t))
    out["Recall"] = 100 * float(np.mean(rec_t))
    if meteor is not None:
        out["METEOR"] = 100 * float(np.mean(meteor_t))
    out["n_videos"] = len(vids)
    return out


def chased_dp_assignment(scores: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """SODA's order-preserving assignment: the best total score of pairs (i, j) increasing in both i and j.

    dp[i, j] = max(dp[i-1, j], dp[i, j-1], dp[i-1, j-1] + s[i, j]) (the first row/column take s alone), as
    SODA's recursive `chased_dp_assignment`, written as a loop.
    """
    m, n = scores.shape
    if m == 0 or n == 0:
        return 0.0, []
    dp = np.zeros((m, n))
    move = np.zeros((m, n), dtype=np.int8)  # 0 up, 1 left, 2 diagonal (a pair)
    for i in range(m):
        for j in range(n):
            up = dp[i - 1, j] if i > 0 else -1.0
            left = dp[i, j - 1] if j > 0 else -1.0
            diag = (dp[i - 1, j - 1] if i > 0 and j > 0 else 0.0) + scores[i, j]
            options = (up, left, diag)
            move[i, j] = int(np.argmax(options))
            dp[i, j] = options[move[i, j]]
    pairs, i, j = [], m - 1, n - 1
    while i >= 0 and j >= 0:
        if move[i, j] == 2:
            pairs.append((i, j))
            i, j = i - 1, j - 1
        elif move[i, j] == 0:
            i -= 1
        else:
            j -= 1
    return float(dp[m - 1, n - 1]), pairs[::-1]


def soda_c(preds: dict, gts: dict, pair_score: Callable[[str, str], float]) -> float:
    """SODA_c x 100: per video the F-measure of the best order-preserving matching of METEOR x tIoU, averaged.

    Predictions are taken in time order (SODA sorts them); a video with no prediction scores 0.
    """
    f_all = []
    for vid, g in gts.items():
        p = sorted(preds.get(vid, []), key=lambda x: tuple(x["timestamp"]))
        if not p:
            f_all.append(0.0)
            continue
        iou = np.array([[dvc_iou(q["timestamp"], ts) for q in p] for ts in g["timestamps"]])
        score = np.array([[pair_score(q["sentence"], sent) for q in p] for sent in g["sentences"]])
        best, _ = chased_dp_assignment(iou * score)
        prec, rec = best / len(p), best / len(g["timestamps"])
        f_all.append(2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)
    return 100 * float(np.mean(f_all)) if f_all else float("nan")


_DENSE_JSON = re.compile(r"\[.*\]", re.S)
_DENSE_TEXT = re.compile(r"[Ff]rom (\d{2}) to (\d{2}),\s*(.*?)(?=(?:\s*[Ff]rom \d{2} to \d{2},)|$)", re.S)


def parse_dense(answer: str, duration: float) -> list[dict]:
    """Events of a dense-captioning answer, as VTimeLLM's metric.py converts them: start s*duration/100,
    end (e+1)*duration/100. Reads VTimeLLM's JSON answers ([{"event", "timestamps": "from xx to xx"}]) and
    our "From 00 to 17, text. From ..." answers; anything else gives no events."""
    import json

    events = []
    m = _DENSE_JSON.search(answer)
    if m:
        try:
            for item in json.loads(m.group(0)):
                ts = item["timestamps"]
                events.append((int(ts[5:7]), int(ts[-2:]), str(item["event"])))
        except (ValueError, KeyError, TypeError, IndexError):
            events = []
    if not events:
        for s, e, text in _DENSE_TEXT.findall(answer):
            events.append((int(s), int(e), text.strip().rstrip(".").strip()))
    return [{"timestamp": [s * duration / 100, (e + 1) * duration / 100], "sentence": text}
            for s, e, text in events]


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
