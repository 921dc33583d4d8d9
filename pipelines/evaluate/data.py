"""What `pite evaluate` reads besides a checkpoint: temporal annotations in the layouts tasks.py's docstring lists
(ActivityNet Captions / VTimeLLM JSON, a list of queries, Charades-STA's text file with durations), per-video
features (FEAT_DIR/ID.npy) and QA files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import numpy as np

from annotate.errors import ConfigError


def read_durations(path: Optional[str]) -> dict[str, float]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--durations: {p} not found")
    if p.suffix == ".json":
        return {str(k): float(v) for k, v in json.loads(p.read_text()).items()}
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "id" not in rows[0] or "length" not in rows[0]:
        raise ConfigError(f"--durations: {p} needs columns id and length (Charades_v1_*.csv)")
    return {r["id"]: float(r["length"]) for r in rows}


def load_temporal_annotations(path: str | Path, durations: Optional[str] = None) -> dict[str, dict]:
    """video -> {"duration", "timestamps": [[s, e], ...], "sentences": [...]} from any accepted layout."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--data: {p} not found")
    out: dict[str, dict] = {}

    def add(vid: str, duration, ts, sentence, where: str):
        try:
            duration, s, e = float(duration), float(ts[0]), float(ts[1])
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise ConfigError(f"{p}: {where}: needs a duration and a [start, end] timestamp ({exc})") from None
        if not duration > 0:
            raise ConfigError(f"{p}: {where}: duration {duration} is not positive")
        if not isinstance(sentence, str):
            raise ConfigError(f"{p}: {where}: sentence is not a string")
        entry = out.setdefault(vid, {"duration": duration, "timestamps": [], "sentences": []})
        entry["timestamps"].append([s, e])
        entry["sentences"].append(sentence)

    if p.suffix == ".txt":
        dur = read_durations(durations)
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            head, sep, sentence = line.partition("##")
            parts = head.split()
            if not sep or len(parts) != 3:
                raise ConfigError(f"{p}:{n}: expected 'ID START END##sentence'")
            if parts[0] not in dur:
                raise ConfigError(f"{p}:{n}: no duration for {parts[0]!r} (pass --durations)")
            add(parts[0], dur[parts[0]], parts[1:], sentence, f"line {n}")
        return out
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        for vid, entry in data.items():
            if not isinstance(entry, dict) or len(entry.get("timestamps", [])) != len(entry.get("sentences", [None])):
                raise ConfigError(f"{p}: {vid!r}: needs duration, timestamps and as many sentences")
            for i, (ts, sent) in enumerate(zip(entry["timestamps"], entry["sentences"])):
                add(str(vid), entry.get("duration"), ts, sent, f"{vid!r} event {i}")
    elif isinstance(data, list):
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise ConfigError(f"{p}: item {i}: expected an object")
            vid = row.get("video_id", row.get("video"))
            if vid is None:
                raise ConfigError(f"{p}: item {i}: no video_id / video")
            add(str(vid), row.get("duration"), row.get("timestamp", row.get("timestamps")),
                row.get("sentence", row.get("query")), f"item {i}")
    else:
        raise ConfigError(f"{p}: expected an object of videos or a list of queries")
    return out


def load_feature(folder: str | Path, vid: str) -> Optional[np.ndarray]:
    """FEAT_DIR/ID.npy as float32 (T, D) (a 1-d vector is one frame), or None when there is none."""
    path = Path(folder) / f"{vid}.npy"
    if not path.is_file():
        return None
    try:
        feat = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable .npy ({exc})") from None
    feat = np.asarray(feat, np.float32)
    if feat.ndim == 1:
        feat = feat[None]
    if feat.ndim != 2:
        raise ConfigError(f"{path}: features of shape {feat.shape}, expected (T, D)")
    return feat


def load_qa(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--data: {p} not found")
    data = json.loads(p.read_text())
    if not isinstance(data, list):
        raise ConfigError(f"{p}: expected a list of {{video_id, question, answer}}")
    items = []
    for i, row in enumerate(data):
        vid = row.get("video_id", row.get("video_name", row.get("video"))) if isinstance(row, dict) else None
        if vid is None or not isinstance(row.get("question"), str) or "answer" not in row:
            raise ConfigError(f"{p}: item {i}: needs video_id (or video_name / video), question and answer")
        items.append({"video_id": str(vid), "question": row["question"], "answer": str(row["answer"]),
                      "question_id": row.get("question_id", i)})
    return items
