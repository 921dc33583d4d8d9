"""`pite evaluate TASK`: temporal grounding, dense captioning, trajectory accuracy and open-ended QA.

    pite evaluate grounding  --checkpoint CKPT --data ANNOTATIONS --features FEAT_DIR --out OUT
    pite evaluate captioning --checkpoint CKPT --data ANNOTATIONS --features FEAT_DIR --out OUT
    pite evaluate trajectory --checkpoint CKPT --run RUN_DIR --out OUT
    pite evaluate qa         --checkpoint CKPT --data QA.json --features FEAT_DIR --out OUT [--judge mod:fn]
    pite evaluate score --task grounding|captioning|qa --data GT --log LOG --out OUT    (no model: re-score a log)

Each writes OUT/metrics.json (the figures, the protocol, the baselines) and OUT/items.jsonl (one line per query:
its question, the model's answer and its score), so any figure can be traced back to answers. The release layout
loads with --model_base/--stage1/--stage2/--stage3 instead of --checkpoint (see `pite infer`).

Accepted annotation layouts (grounding and captioning), one entry per video:
  * ActivityNet Captions / VTimeLLM (`val_2.json`), also Charades-STA converted to it (2D-TAN's JSON):
      {"VIDEO_ID": {"duration": 73.1, "timestamps": [[6.94, 69.08], ...], "sentences": ["...", ...]}, ...}
  * a list of queries: [{"video" | "video_id": ID, "duration": s, "timestamp": [s, e], "sentence" | "query": str}]
  * Charades-STA's own text file (`charades_sta_test.txt`): lines "ID START END##sentence", with --durations
    a JSON {ID: seconds} or a CSV with columns id and length (Charades_v1_test.csv).
Features: FEAT_DIR/ID.npy, (T, D) per video as VTimeLLM's feat folder (a video without one is skipped and
counted, as VTimeLLM's eval does). QA files: a JSON list of {"video_id" | "video_name" | "video", "question",
"answer"}.

Protocols: grounding asks "During which frames can we see {sentence}?" (sentence lower-cased, final period
dropped), parses "NN to NN", IoU against [start, end] / duration rounded to 2 decimals, R@1 at 0.3/0.5/0.7 and
mIoU x 100; an answer with no span is a miss (IoU 0). Captioning: exactly VTimeLLM's metric.py, densevid_eval
and SODA_c (pipelines/evaluate/dense.py; CIDEr, METEOR, SODA_c, Precision, Recall x 100; --parse project and
--soda-standard are named departures). A log of answers is re-scored by `score` (pipelines/evaluate/score.py). Trajectories: the
caption is teacher-forced and the trajectory head read at each annotated phrase's last token (docs/design.md, "Readout rule").
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from annotate.errors import ConfigError
from model.config import LabelConfig
from pipelines.evaluate import dense
from pipelines.evaluate import metrics as M
from pipelines.evaluate.data import load_feature

GROUNDING_QUERY = LabelConfig().grounding_query  # "During which frames can we see {query}?"
DENSE_QUERY = LabelConfig().dense_query

AnswerFn = Callable[[list[np.ndarray], list[str]], list[str]]


# --- inputs -----------------------------------------------------------------------------------------------------


def grounding_sentence(sentence: str) -> str:
    """VTimeLLM's query text: stripped, lower-cased, without a final period."""
    s = sentence.strip().lower()
    return s[:-1] if s.endswith(".") else s


# --- the model side ---------------------------------------------------------------------------------------------


def model_answers(predictor, batch_size: int = 8, max_new_tokens: int = 64) -> AnswerFn:
    """An AnswerFn that generates greedily in left-padded batches."""
    from model.encoding import encode_prompt

    model, tok, template = predictor.model, predictor.tokenizer, predictor.template
    device = model.device

    def answer(feats: list[np.ndarray], queries: list[str]) -> list[str]:
        out = []
        for s in range(0, len(queries), batch_size):
            ids = [encode_prompt(tok, template, model.video_token_id, q, n_video=len(f))
                   for f, q in zip(feats[s:s + batch_size], queries[s:s + batch_size])]
            length = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), length), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(ids), length), dtype=torch.long)
            for i, x in enumerate(ids):
                input_ids[i, length - len(x):] = x
                mask[i, length - len(x):] = 1
            video = [torch.from_numpy(f).float().to(device) for f in feats[s:s + batch_size]]
            gens = model.generate(input_ids.to(device), attention_mask=mask.to(device), video_features=video,
                                  max_new_tokens=max_new_tokens, tokenizer=tok)
            out += [(g.text or "").strip() for g in gens]
        return out

    return answer


# --- temporal grounding -----------------------------------------------------------------------------------------


def grounding_items(annotations: dict, features: str | Path, limit: int = 0) -> tuple[list[dict], list[str]]:
    """One item per (video, sentence) that has features; and the videos skipped for lack of them."""
    items, missing = [], []
    for vid, entry in annotations.items():
        feat = load_feature(features, vid)
        if feat is None:
            missing.append(vid)
            continue
        for i, (ts, sent) in enumerate(zip(entry["timestamps"], entry["sentences"])):
            items.append({"video_id": vid, "sentence_id": i, "sentence": sent, "gt": list(ts),
                          "duration": entry["duration"], "feat": feat,
                          "query": GROUNDING_QUERY.format(query=grounding_sentence(sent))})
            if limit and len(items) >= limit:
                return items, missing
    return items, missing


def score_grounding(items: list[dict], answers: list[str]) -> tuple[dict, list[dict]]:
    rows, ious = [], []
    for item, answer in zip(items, answers):
        span, iou = M.grounding_iou(answer, item["gt"], item["duration"])
        ious.append(iou)
        rows.append({"video_id": item["video_id"], "sentence_id": item["sentence_id"], "query": item["query"],
                     "answer": answer, "pred_frames": list(span) if span else None,
                     "pred_seconds": [span[0] / 100 * item["duration"], span[1] / 100 * item["duration"]]
                     if span else None, "gt_seconds": item["gt"], "iou": iou})
    metrics = M.grounding_summary(ious)
    metrics["unparsed"] = sum(r["pred_frames"] is None for r in rows)
    return metrics, rows


def grounding_baselines(items: list[dict], seed: int = 0) -> dict:
    """Answers that look at nothing: a random span (two uniform frame indices, sorted) and the whole clip."""
    rng = random.Random(seed)
    rand = []
    for _ in items:
        a, b = sorted(rng.randrange(100) for _ in range(2))
        rand.append(f"From {a:02d} to {b:02d}.")
    return {"random": score_grounding(items, rand)[0],
            "constant (00 to 99)": score_grounding(items, ["From 00 to 99."] * len(items))[0]}


def run_grounding(answer_fn: AnswerFn, annotations: dict, features: str | Path, limit: int = 0) -> dict:
    items, missing = grounding_items(annotations, features, limit)
    if not items:
        raise ConfigError(f"--features: no features for any of the {len(annotations)} videos in {features}")
    answers = answer_fn([it["feat"] for it in items], [it["query"] for it in items])
    metrics, rows = score_grounding(items, answers)
    return {"task": "grounding", "metrics": metrics, "baselines": grounding_baselines(items),
            "skipped_videos": missing, "rows": rows,
            "protocol": "VTimeLLM: 'During which frames can we see {q}?', (\\d{2}) (to|and) (\\d{2}) / 100, "
                        "IoU vs [s, e] / duration rounded to 2 d.p., R1@m = IoU >= m, x 100; no span = IoU 0"}


# --- dense captioning -------------------------------------------------------------------------------------------


def run_captioning(answer_fn: AnswerFn, annotations: dict, features: str | Path, query: str = DENSE_QUERY,
                   limit: int = 0, parse: str = "vtimellm", soda_standard: bool = False) -> dict:
    """The model's dense captions of each video with features, scored as VTimeLLM (pipelines/evaluate/dense.py)."""
    vids, feats, missing = [], [], []
    for vid in annotations:
        feat = load_feature(features, vid)
        if feat is None:
            missing.append(vid)
            continue
        vids.append(vid)
        feats.append(feat)
        if limit and len(vids) >= limit:
            break
    if not vids:
        raise ConfigError(f"--features: no features for any of the {len(annotations)} videos in {features}")
    answers = dict(zip(vids, answer_fn(feats, [query] * len(vids))))
    metrics, rows, protocol = dense.score_answers(answers, annotations, parse=parse, soda_standard=soda_standard)
    return {"task": "captioning", "metrics": metrics, "skipped_videos": missing, "rows": rows, "protocol": protocol}


# --- trajectories -----------------------------------------------------------------------------------------------


@torch.no_grad()
def trajectory_predictions(model, tokenizer, template, run_dir: str | Path, limit: int = 0):
    """Yield (sample, phrases, pred (M, K, T, 2), target, mask) per sample: the caption teacher-forced (stage-2
    conversation with the first caption query) and the trajectory head read at each phrase's last token."""
    from model.batch import collate, to_device
    from model.labels import build_examples
    from pipelines.shards import iter_samples, list_done_shards, shard_paths

    run = Path(run_dir)
    shards = list_done_shards(run)
    if not shards:
        raise ConfigError(f"--run: {run} has no finished shards")
    device = model.device
    model.eval()
    n = 0
    for i in shards:
        for sample in iter_samples(shard_paths(run, i)["tar"]):
            examples, _ = build_examples(sample, tokenizer, template, model.video_token_id, LabelConfig(stage=2))
            if not examples or not len(examples[0].head_pos):
                continue
            batch = to_device(collate(examples, tokenizer.pad_token_id), device)
            out = model(**batch)
            yield (sample, examples[0].phrases, out.traj_pred.float().cpu().numpy(),
                   batch["traj_target"].cpu().numpy(), batch["traj_mask"].cpu().numpy())
            n += 1
            if limit and n >= limit:
                return


def run_trajectory(model, tokenizer, template, run_dir: str | Path, limit: int = 0, seed: int = 0) -> dict:
    rows, sums, base_sums = [], [], {"constant (0.5, 0.5)": [], "random": []}
    rng = np.random.default_rng(seed)
    for sample, phrases, pred, target, mask in trajectory_predictions(model, tokenizer, template, run_dir, limit):
        for j, phrase in enumerate(phrases):
            s = M.trajectory_errors(pred[j], target[j], mask[j])
            sums.append(s)
            base_sums["constant (0.5, 0.5)"].append(M.trajectory_errors(np.full_like(target[j], 0.5), target[j],
                                                                        mask[j]))
            base_sums["random"].append(M.trajectory_errors(rng.uniform(size=target[j].shape), target[j], mask[j]))
            one = M.trajectory_summary([s])
            rows.append({"video_id": sample.meta["video_id"], "phrase": phrase, "n_points": s["n"],
                         "L1": one["L1"], "delta_avg": one["delta_avg"]})
    if not sums:
        raise ConfigError(f"--run: {run_dir} has no sample with a supervised phrase")
    return {"task": "trajectory", "metrics": M.trajectory_summary(sums),
            "baselines": {k: M.trajectory_summary(v) for k, v in base_sums.items()}, "rows": rows,
            "protocol": "caption teacher-forced, trajectory head at each phrase's last token; L1 of normalised "
                        "x/y over visible points; <delta^x_avg> at 256x256, x in 1,2,4,8,16 px, every frame scored"}


# --- open-ended QA ----------------------------------------------------------------------------------------------


def run_qa(answer_fn: AnswerFn, items: list[dict], features: str | Path, judge=None, limit: int = 0) -> dict:
    judge = judge or M.exact_match
    kept, feats, missing = [], [], set()
    for it in items[: limit or None]:
        feat = load_feature(features, it["video_id"])
        if feat is None:
            missing.add(it["video_id"])
            continue
        kept.append(it)
        feats.append(feat)
    if not kept:
        raise ConfigError(f"--features: no features for any question's video in {features}")
    answers = answer_fn(feats, [it["question"] for it in kept])
    rows = []
    for it, a in zip(kept, answers):
        rows.append({**it, "prediction": a, "score": float(judge(it["question"], a, it["answer"]))})
    acc = 100.0 * sum(r["score"] for r in rows) / len(rows)
    return {"task": "qa", "metrics": {"n": len(rows), "accuracy": acc}, "skipped_videos": sorted(missing),
            "rows": rows, "protocol": "judge(question, prediction, reference) averaged x 100; default: SQuAD-"
                                      "normalised exact match"}


# --- output -----------------------------------------------------------------------------------------------------


def write_result(result: dict, out: str | Path) -> Path:
    """OUT/metrics.json (everything but the rows) and OUT/items.jsonl (the rows)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w") as f:
        for row in result["rows"]:
            f.write(json.dumps(row) + "\n")
    summary = {k: v for k, v in result.items() if k != "rows"}
    summary["items"] = "items.jsonl"
    (out / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    return out / "metrics.json"


def format_metrics(result: dict) -> str:
    """One line per figure, baselines beside the model's."""
    lines = [f"{result['task']}:"]
    base = result.get("baselines", {})
    for k, v in result["metrics"].items():
        if isinstance(v, float):
            extra = "  ".join(f"{name} {b[k]:.3f}" for name, b in base.items() if isinstance(b.get(k), float))
            lines.append(f"  {k:<12} {v:8.3f}" + (f"   ({extra})" if extra else ""))
        else:
            lines.append(f"  {k:<12} {v}")
    return "\n".join(lines)
