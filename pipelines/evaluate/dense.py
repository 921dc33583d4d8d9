"""Dense video captioning scored as VTimeLLM reports it: its metric.py (answer parsing, merge_similar_sentences),
its densevid_eval (CIDEr, METEOR, Precision, Recall over tIoU 0.3/0.5/0.7/0.9) and SODA_c as fujiso/SODA.

Tokenisation, CIDEr and METEOR are pycocoevalcap's own (the PTB tokenizer and METEOR 1.5 run on Java), not copies.
Each step follows the reference where it is surprising, because published figures include those choices:
  - answers: the first `[...]` on one line (`re.search(r"\\[.*\\]")`, no DOTALL), items read until one fails
    (those before it kept), timestamps by position (`s[5:7]`, `s[-2:]`), a later log line for a video replaces
    an earlier one; only videos in the log are scored;
  - events in answer order merge into the one before when their sentences are near-identical (difflib ratio >
    0.98) and they touch (-1 <= start - previous end <= 1); frames f become seconds f*d/100 and (f+1)*d/100;
  - densevid_eval: a prediction pairs with every event at tIoU >= t (a prediction matching none with a random
    string), CIDEr and METEOR per video on its pairs, then the mean over videos and over the four tIoUs;
    Precision / Recall count matches at tIoU > t (strict); non-ASCII characters become spaces;
  - SODA_c: events and predictions each sorted by start only (ties keep their order), no tIoU threshold, the best
    order-preserving matching of tIoU x METEOR, F per video, averaged. Its METEOR call passes the prediction as the
    reference and the event's sentence as the hypothesis; `standard=True` scores the prediction against the event.
Departures are switches and are written into the metrics: `parse="project"` also reads the project's
"From 00 to 17, text." answers.
"""

from __future__ import annotations

import difflib
import json
import random
import re
import shutil
import string
from typing import Optional, Sequence

import numpy as np

from pipelines.evaluate.metrics import UNAVAILABLE

TIOUS = (0.3, 0.5, 0.7, 0.9)
PARSERS = ("vtimellm", "project")
MAX_PROPOSALS = 1000  # densevid_eval keeps a video's first 1000 predictions
INSTALL_HINT = "pip install pycocoevalcap (in the lock file: make setup) and Java (apt-get install default-jre-headless)"


class LanguageUnavailable(RuntimeError):
    """pycocoevalcap or Java is missing: the message says what to install."""


def remove_nonascii(text: str) -> str:
    return "".join(c if ord(c) < 128 else " " for c in text)


class Language:
    """pycocoevalcap's PTB tokenizer, CIDEr and METEOR (one METEOR process for the whole scoring)."""

    def __init__(self):
        if shutil.which("java") is None:
            raise LanguageUnavailable(f"METEOR, CIDEr and SODA_c need Java for PTB tokenisation and METEOR: "
                                      f"{INSTALL_HINT}")
        try:
            from pycocoevalcap.cider.cider import Cider
            from pycocoevalcap.meteor.meteor import Meteor
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        except ImportError as exc:
            raise LanguageUnavailable(f"METEOR, CIDEr and SODA_c need pycocoevalcap ({exc}): {INSTALL_HINT}") from None
        self.cider, self.meteor, self.ptb = Cider(), Meteor(), PTBTokenizer()
        self.tokens: dict[str, str] = {}

    def tokenize(self, sentences: Sequence[str]) -> None:
        """PTB-tokenise every new sentence in one Java call (the tokenizer works line by line, so this equals
        densevid_eval's per-video calls)."""
        new = sorted({s for s in sentences if s not in self.tokens})
        if new:
            out = self.ptb.tokenize({i: [{"caption": remove_nonascii(s)}] for i, s in enumerate(new)})
            self.tokens.update({s: out[i][0] for i, s in enumerate(new)})

    def tok(self, sentence: str) -> str:
        return self.tokens[sentence]

    def close(self) -> None:
        close = getattr(self.meteor, "close", None)
        if close is not None:
            close()


# --- answers -> events (frame indices 0-99) -------------------------------------------------------------------

_ONE_LINE_LIST = re.compile(r"\[.*\]")
_FROM_TO = re.compile(r"[Ff]rom (\d{2}) to (\d{2}),\s*(.*?)(?=(?:\s*[Ff]rom \d{2} to \d{2},)|$)", re.S)


def parse_vtimellm(answer: str) -> list[tuple[int, int, str]]:
    """VTimeLLM metric.py's reading of a dense-captioning answer: (start frame, end frame, sentence)."""
    events: list[tuple[int, int, str]] = []
    match = _ONE_LINE_LIST.search(answer)
    if match is None:
        return events
    try:
        for item in json.loads(match.group(0)):
            ts = item["timestamps"]
            events.append((int(ts[5:7]), int(ts[-2:]), str(item["event"])))
    except (ValueError, KeyError, TypeError, IndexError):
        pass  # the items read before the bad one stay, as in the reference
    return events


def parse_project(answer: str) -> list[tuple[int, int, str]]:
    """`parse="project"`: VTimeLLM's JSON answers, else the project's "From 00 to 17, text. From ..." answers."""
    events = parse_vtimellm(answer)
    if events:
        return events
    return [(int(s), int(e), text.strip().rstrip(".").strip()) for s, e, text in _FROM_TO.findall(answer)]


def merge_similar_sentences(events: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """VTimeLLM's merge: an event joins the run before it when its sentence is near-identical to the run's first
    (difflib ratio > 0.98) and it starts within one frame of the run's end; the run keeps its first sentence."""
    if not events:
        return []
    out = []
    start, end, sentence = events[0]
    for s, e, text in events[1:]:
        if difflib.SequenceMatcher(None, sentence, text).ratio() > 0.98 and -1 <= s - end <= 1:
            end = e
        else:
            out.append((start, end, sentence))
            start, end, sentence = s, e, text
    out.append((start, end, sentence))
    return out


def to_seconds(events: list[tuple[int, int, str]], duration: float) -> list[dict]:
    return [{"timestamp": [s * duration / 100, (e + 1) * duration / 100], "sentence": text} for s, e, text in events]


def answer_events(answer: str, duration: float, parse: str = "vtimellm") -> list[dict]:
    """An answer's events in seconds, parsed and merged as VTimeLLM's metric.py (or with the project's parser)."""
    if parse not in PARSERS:
        raise ValueError(f"parse: expected one of {PARSERS}, got {parse!r}")
    events = parse_vtimellm(answer) if parse == "vtimellm" else parse_project(answer)
    return to_seconds(merge_similar_sentences(events), duration)


# --- densevid_eval ----------------------------------------------------------------------------------------------


def dvc_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """densevid_eval's and SODA's tIoU: the union capped at the summed lengths, +1e-8 in the denominator."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = min(max(a[1], b[1]) - min(a[0], b[0]), a[1] - a[0] + b[1] - b[0])
    return inter / (union + 1e-8)


def _garbage(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(10, 20)))


def _video_pairs(preds: list[dict], gt: dict, tiou: float, lang: Language, rng: random.Random):
    """(references, hypotheses) of one video at one tIoU, as pycocoevalcap takes them."""
    refs, hyps = {}, {}
    for p in preds:
        matched = [s for ts, s in zip(gt["timestamps"], gt["sentences"]) if dvc_iou(p["timestamp"], ts) >= tiou]
        for sentence in matched or [None]:
            k = len(hyps)
            hyps[k] = [lang.tok(p["sentence"])]
            refs[k] = [lang.tok(sentence) if sentence is not None else _garbage(rng)]
    return refs, hyps


def _detection(preds: list[dict], gt: dict, tiou: float) -> tuple[float, float]:
    hit_p, hit_g = set(), set()
    for i, p in enumerate(preds):
        for j, ts in enumerate(gt["timestamps"]):
            if dvc_iou(p["timestamp"], ts) > tiou:
                hit_p.add(i)
                hit_g.add(j)
    return len(hit_p) / max(len(preds), 1), len(hit_g) / max(len(gt["timestamps"]), 1)


def eval_dvc(preds: dict, gts: dict, lang: Optional[Language], tious: Sequence[float] = TIOUS,
             seed: int = 0) -> tuple[dict, dict]:
    """(metrics x 100, per-video scores): CIDEr, METEOR (with `lang`), Precision, Recall, each also per tIoU.
    `gts` are the videos to score (those in the log); a video without prediction scores 0."""
    rng = random.Random(seed)
    if lang is not None:
        lang.tokenize([p["sentence"] for v in gts for p in preds.get(v, [])]
                      + [s for v in gts for s in gts[v]["sentences"]])
    out: dict = {}
    per_video = {v: {} for v in gts}
    series = {"CIDEr": [], "METEOR": [], "Precision": [], "Recall": []}
    for tiou in tious:
        at = {k: [] for k in series}
        for vid, gt in gts.items():
            p = preds.get(vid, [])[:MAX_PROPOSALS]
            prec, rec = _detection(p, gt, tiou)
            at["Precision"].append(prec)
            at["Recall"].append(rec)
            if lang is not None:
                refs, hyps = _video_pairs(p, gt, tiou, lang, rng) if p else ({}, {})
                cider = lang.cider.compute_score(refs, hyps)[0] if hyps else 0.0
                meteor = lang.meteor.compute_score(refs, hyps)[0] if hyps else 0.0
                at["CIDEr"].append(float(cider))
                at["METEOR"].append(float(meteor))
                per_video[vid][f"CIDEr@{tiou}"], per_video[vid][f"METEOR@{tiou}"] = 100 * cider, 100 * meteor
        for key, values in at.items():
            if values:
                series[key].append(float(np.mean(values)))
                out[f"{key}@{tiou}"] = 100 * series[key][-1]
    for key, values in series.items():
        if values:
            out[key] = 100 * float(np.mean(values))
    return out, per_video


# --- SODA_c -----------------------------------------------------------------------------------------------------


def soda_max_score(weights: np.ndarray) -> float:
    """SODA's order-preserving assignment: dp[i, j] = max(dp[i-1, j], dp[i, j-1], dp[i-1, j-1] + w[i, j])."""
    m, n = weights.shape
    if m == 0 or n == 0:
        return 0.0
    dp = np.zeros((m + 1, n + 1))
    for i in range(m):
        for j in range(n):
            dp[i + 1, j + 1] = max(dp[i, j + 1], dp[i + 1, j], dp[i, j] + weights[i, j])
    return float(dp[m, n])


def soda_c(preds: dict, gts: dict, lang: Language, standard: bool = False) -> tuple[float, dict]:
    """(SODA_c x 100, per-video F x 100). `standard`: METEOR of the prediction against the event's sentence
    (fujiso/SODA passes them the other way round, and published SODA_c figures include that)."""
    lang.tokenize([p["sentence"] for v in gts for p in preds.get(v, [])] + [s for v in gts for s in gts[v]["sentences"]])
    per_video = {}
    for vid, gt in gts.items():
        events = sorted(zip(gt["timestamps"], gt["sentences"]), key=lambda x: x[0][0])
        p = sorted(preds.get(vid, []), key=lambda x: x["timestamp"][0])
        if not p or not events:
            per_video[vid] = 0.0
            continue
        iou = np.array([[dvc_iou(q["timestamp"], ts) for q in p] for ts, _ in events])
        meteor = np.zeros_like(iou)
        for i, (_, sentence) in enumerate(events):
            gold = {j: [lang.tok(sentence)] for j in range(len(p))}
            cand = {j: [lang.tok(q["sentence"])] for j, q in enumerate(p)}
            refs, hyps = (gold, cand) if standard else (cand, gold)
            meteor[i] = lang.meteor.compute_score(refs, hyps)[1]
        best = soda_max_score(iou * meteor)
        prec, rec = best / len(p), best / len(events)
        per_video[vid] = 100 * (2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)
    return (float(np.mean(list(per_video.values()))) if per_video else float("nan")), per_video


# --- the whole protocol -----------------------------------------------------------------------------------------


def score_answers(answers: dict[str, str], gts: dict, parse: str = "vtimellm", soda_standard: bool = False,
                  seed: int = 0) -> tuple[dict, list[dict], dict]:
    """(metrics, per-video rows, the protocol's switches) of dense-captioning answers {video: answer text} against `gts` (video ->
    {duration, timestamps, sentences}), VTimeLLM's names and units (x 100). Without pycocoevalcap or Java, the
    metrics that need them say so in one line and Precision / Recall are still given."""
    gts = {v: gts[v] for v in answers if v in gts}
    preds = {v: answer_events(a, gts[v]["duration"], parse) for v, a in answers.items() if v in gts}
    try:
        lang: Optional[Language] = Language()
    except LanguageUnavailable as exc:
        lang, why = None, f"{UNAVAILABLE}: {exc}"
    metrics, per_video = eval_dvc(preds, gts, lang, seed=seed)
    soda_rows: dict = {}
    if lang is not None:
        try:
            metrics["SODA_c"], soda_rows = soda_c(preds, gts, lang, standard=soda_standard)
        finally:
            lang.close()
    else:
        metrics.update({"CIDEr": why, "METEOR": why, "SODA_c": why})
    metrics["n_videos"] = len(gts)
    protocol = {"reference": "VTimeLLM metric.py + densevid_eval + fujiso/SODA, pycocoevalcap tokenizer/CIDEr/METEOR",
                "parse": parse if parse == "vtimellm" else f"{parse} (a departure: also 'From 00 to 17, text.' answers)",
                "soda": "standard METEOR order (prediction vs event), a departure" if soda_standard
                else "as published (fujiso/SODA's METEOR argument order)", "tious": list(TIOUS)}
    rows = [{"video_id": v, "answer": answers[v], "events": preds[v], **per_video.get(v, {}),
             **({"SODA_c": soda_rows[v]} if v in soda_rows else {})} for v in gts]
    return metrics, rows, protocol
