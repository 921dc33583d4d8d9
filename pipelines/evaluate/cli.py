"""`pite evaluate`'s command line: the tasks (pipelines/evaluate/tasks.py) on a checkpoint, or `score` on a log
(pipelines/evaluate/score.py)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from annotate.errors import PiteError
from pipelines.evaluate import dense
from pipelines.evaluate import metrics as M
from pipelines.evaluate.data import load_qa, load_temporal_annotations
from pipelines.evaluate.tasks import (DENSE_QUERY, __doc__ as TASKS_DOC, format_metrics, model_answers, run_captioning,
                                      run_grounding, run_qa, run_trajectory, write_result)


def _parser() -> argparse.ArgumentParser:
    from pipelines.infer import add_release_args

    ap = argparse.ArgumentParser(prog="pite evaluate", description=TASKS_DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="task", required=True)
    for task in ("grounding", "captioning", "trajectory", "qa"):
        p = sub.add_parser(task, help=f"ask a checkpoint the {task} benchmark and score its answers")
        p.add_argument("--checkpoint", default=None)
        p.add_argument("--out", required=True, help="output dir (metrics.json, items.jsonl)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--dtype", default="float32")
        p.add_argument("--clip_path", default=None)
        p.add_argument("--limit", type=int, default=0, help="evaluate only the first N items (0 = all)")
        add_release_args(p)
        if task == "trajectory":
            p.add_argument("--run", required=True, help="annotation run dir (shards) with ground-truth tracks")
        else:
            p.add_argument("--data", required=True, help="ground truth: VTimeLLM / ActivityNet val JSON {ID: {duration, "
                                                         "timestamps, sentences}}, a JSON list of {video_id, duration, "
                                                         "timestamp, sentence}, Charades-STA .txt (with --durations), or "
                                                         "for qa a JSON list of {video_id, question, answer} "
                                                         "(`pite evaluate --help` shows all)")
            p.add_argument("--features", required=True, help="dir of ID.npy features")
            p.add_argument("--batch-size", type=int, default=8)
            p.add_argument("--max-new-tokens", type=int, default=256 if task == "captioning" else 64)
        if task in ("grounding", "captioning"):
            p.add_argument("--durations", default=None, help="Charades-STA .txt: JSON {id: s} or CSV id,length")
        if task == "captioning":
            p.add_argument("--query", default=DENSE_QUERY)
            _caption_switches(p)
        if task == "qa":
            p.add_argument("--judge", default=None, help="module:function(question, prediction, reference)")
    p = sub.add_parser("score", help="re-score a log of answers (VTimeLLM's or items.jsonl) without a model")
    p.add_argument("--task", dest="log_task", required=True, choices=["grounding", "captioning", "qa"])
    p.add_argument("--data", required=True, help="ground truth: VTimeLLM's val JSON, or the layouts above")
    p.add_argument("--log", required=True, help="JSON lines: video_id, task, query_id, answer (, info)")
    p.add_argument("--out", required=True, help="output dir (metrics.json, items.jsonl)")
    p.add_argument("--durations", default=None, help="Charades-STA .txt: JSON {id: s} or CSV id,length")
    _caption_switches(p)
    return ap


def _caption_switches(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parse", default="vtimellm", choices=list(dense.PARSERS),
                   help="vtimellm: answers as VTimeLLM's metric.py reads them (default); project: also the "
                        "project's 'From 00 to 17, text.' answers (a departure, written into metrics.json)")
    p.add_argument("--soda-standard", action="store_true",
                   help="SODA_c with METEOR of the prediction against the event (published SODA_c passes them "
                        "the other way round); labelled in metrics.json")


def _run_task(args) -> dict:
    from pipelines.evaluate.score import score
    from pipelines.infer import load_predictor

    if args.task == "score":
        result = score(args.log_task, args.data, args.log, args.parse, args.soda_standard, args.durations)
        result["task"] = args.log_task
        return result
    predictor = load_predictor(args)
    if args.task == "trajectory":
        result = run_trajectory(predictor.model, predictor.tokenizer, predictor.template, args.run, args.limit)
    else:
        answer = model_answers(predictor, args.batch_size, args.max_new_tokens)
        if args.task == "qa":
            result = run_qa(answer, load_qa(args.data), args.features, M.load_judge(args.judge), args.limit)
        else:
            ann = load_temporal_annotations(args.data, args.durations)
            if args.task == "grounding":
                result = run_grounding(answer, ann, args.features, args.limit)
            else:
                result = run_captioning(answer, ann, args.features, args.query, args.limit, args.parse,
                                        args.soda_standard)
    result["checkpoint"] = predictor.source
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        result = _run_task(args)
        path = write_result(result, args.out)
    except PiteError as exc:
        print(f"pite evaluate: {exc}", file=sys.stderr)
        return 2
    print(format_metrics(result))
    print(f"wrote {path}")
    return 0
