"""`pite evaluate score`: re-score a log of answers without a model, as VTimeLLM's metric.py does.

    pite evaluate score --task captioning --data val_2.json --log log.jsonl --out DIR [--parse project]
                        [--soda-standard]
    pite evaluate score --task grounding --data val_2.json --log log.jsonl --out DIR
    pite evaluate score --task qa --data qa.json --log items.jsonl --out DIR

A log is JSON lines, either VTimeLLM's (`video_id`, `task`, `query_id`, `answer`, and `info` {sentence_id, iou} for
grounding) or the `items.jsonl` that `pite evaluate` writes. A line that is not JSON is skipped and counted, as in
metric.py; for captioning a later line of a video replaces an earlier one. OUT gets metrics.json (VTimeLLM's
names, x 100) and items.jsonl (per video or question).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from annotate.errors import ConfigError
from pipelines.evaluate import dense
from pipelines.evaluate import metrics as M


def read_log(path: str | Path, task: str) -> tuple[list[dict], int]:
    """(the log's records of `task`, lines that were not JSON objects). Records without a `task` key (the
    project's items.jsonl) count as `task`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--log: {p} not found")
    records, bad = [], 0
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(record, dict):
            bad += 1
        elif record.get("task", task) == task:
            records.append(record)
    return records, bad


def _answer(record: dict, where: str) -> str:
    answer = record.get("answer", record.get("prediction"))
    if not isinstance(answer, str) or "video_id" not in record:
        raise ConfigError(f"{where}: a record needs video_id and answer (a string), got keys {sorted(record)}")
    return answer


def score_captioning_log(records: list[dict], gts: dict, log: str, parse: str, soda_standard: bool) -> dict:
    answers: dict[str, str] = {}
    for i, r in enumerate(records):
        answers[str(r.get("video_id"))] = _answer(r, f"{log}: record {i}")  # a later record replaces
    unknown = sorted(set(answers) - set(gts))
    if unknown:
        raise ConfigError(f"{log}: {len(unknown)} video(s) not in --data, e.g. {unknown[0]!r}")
    metrics, rows, protocol = dense.score_answers(answers, gts, parse=parse, soda_standard=soda_standard)
    return {"task": "captioning", "metrics": metrics, "rows": rows, "protocol": protocol}


def score_grounding_log(records: list[dict], gts: dict, log: str) -> dict:
    """IoU of each answer recomputed from the answer and the event (`info.sentence_id`, or the project's
    `sentence_id`), as VTimeLLM's eval.py does at inference; a record without one keeps its logged `info.iou`."""
    rows, ious = [], []
    for i, r in enumerate(records):
        answer = _answer(r, f"{log}: record {i}")
        info = r.get("info") or {}
        sid = info.get("sentence_id", r.get("sentence_id"))
        vid = str(r["video_id"])
        if vid in gts and isinstance(sid, int) and 0 <= sid < len(gts[vid]["timestamps"]):
            span, iou = M.grounding_iou(answer, gts[vid]["timestamps"][sid], gts[vid]["duration"])
        elif isinstance(info.get("iou"), (int, float)):
            span, iou = None, float(info["iou"])
        else:
            raise ConfigError(f"{log}: record {i}: video {vid!r} sentence {sid!r} is not in --data and the record "
                              f"has no info.iou")
        ious.append(iou)
        rows.append({"video_id": vid, "sentence_id": sid, "answer": answer, "iou": iou,
                     "pred_frames": list(span) if span else None})
    return {"task": "grounding", "metrics": M.grounding_summary(ious), "rows": rows}


def score_qa_log(records: list[dict], items: list[dict], log: str) -> dict:
    """SQuAD-normalised exact match of each logged answer against the question's reference."""
    by_id = {(it["video_id"], str(it["question_id"])): it for it in items}
    rows = []
    for i, r in enumerate(records):
        answer = _answer(r, f"{log}: record {i}")
        key = (str(r["video_id"]), str(r.get("question_id", r.get("query_id"))))
        if key not in by_id:
            raise ConfigError(f"{log}: record {i}: question {key} is not in --data")
        it = by_id[key]
        rows.append({**it, "prediction": answer,
                     "score": float(M.exact_match(it["question"], answer, it["answer"]))})
    acc = 100.0 * sum(r["score"] for r in rows) / max(1, len(rows))
    return {"task": "qa", "metrics": {"n": len(rows), "accuracy": acc}, "rows": rows}


def score(task: str, data: str, log: str, parse: str = "vtimellm", soda_standard: bool = False,
          durations: Optional[str] = None) -> dict:
    from pipelines.evaluate.data import load_qa, load_temporal_annotations

    records, bad = read_log(log, task)
    if not records:
        raise ConfigError(f"--log: {log} has no {task!r} record ({bad} line(s) not JSON)")
    if task == "captioning":
        result = score_captioning_log(records, load_temporal_annotations(data, durations), log, parse, soda_standard)
    elif task == "grounding":
        result = score_grounding_log(records, load_temporal_annotations(data, durations), log)
    elif task == "qa":
        result = score_qa_log(records, load_qa(data), log)
    else:
        raise ConfigError(f"--task: expected grounding, captioning or qa, got {task!r}")
    result["log"], result["skipped_lines"] = str(log), bad
    return result
