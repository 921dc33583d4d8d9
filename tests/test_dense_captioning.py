"""Dense captioning scored as VTimeLLM reports it (pipelines/evaluate/dense.py) against the reference code itself.

tests/data/dvc/<case>/ holds five logs written for this project (VTimeLLM's log format) and their ground truth. The
expected figures were computed by running the reference implementations unmodified: VTimeLLM's metric.py with its
densevid_eval and SODA (commit c34ae56), on pycocoevalcap 1.2 with Java 17:
    cd VTimeLLM/vtimellm/eval && python metric.py --task captioning --log_path LOG --data_path GT
Precision and Recall are eval_dvc's (metric.py computes and drops them), averaged over tIoU 0.3/0.5/0.7/0.9.
Each case exercises what the project's earlier scorer got wrong: PTB tokenisation (c1), merge_similar_sentences
(c2), partial JSON answers and broken log lines (c3), ground truth out of order and tied starts for SODA (c4),
the tIoU edges (c5).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.evaluate import dense
from pipelines.evaluate.score import read_log, score
from pipelines.evaluate.cli import main as evaluate_main

DATA = Path(__file__).parent / "data" / "dvc"
REFERENCE = {  # x 100, as metric.py reports
    "c1_ptb_tokenization": {"SODA_c": 35.76906736381994, "METEOR": 36.40163213680046, "CIDEr": 342.93121683897596,
                            "Precision": 94.44444444444444, "Recall": 94.44444444444444},
    "c2_merge_similar": {"SODA_c": 15.972052997603834, "METEOR": 25.953372941418333, "CIDEr": 150.35669203725305,
                         "Precision": 54.166666666666664, "Recall": 58.333333333333336},
    "c3_malformed_answers": {"SODA_c": 24.357380540541275, "METEOR": 28.785101345960644,
                             "CIDEr": 280.5903357146515, "Precision": 58.33333333333333, "Recall": 38.33333333333333},
    "c4_gt_unsorted_tied_preds": {"SODA_c": 67.79843726223554, "METEOR": 45.54228452928463,
                                  "CIDEr": 600.0048479174673, "Precision": 97.22222222222221,
                                  "Recall": 88.88888888888889},
    "c5_tiou_edges": {"SODA_c": 45.4981259662558, "METEOR": 44.11633520299261, "CIDEr": 62.15650175807272,
                      "Precision": 58.33333333333333, "Recall": 66.66666666666666},
}


def _has_language() -> bool:
    try:
        dense.Language().close()
        return True
    except dense.LanguageUnavailable:
        return False


needs_java = pytest.mark.skipif(not _has_language(), reason="pycocoevalcap and Java (apt-get install "
                                                            "default-jre-headless) are needed for METEOR")


@needs_java
@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_score_equals_the_reference_implementation(case, tmp_path):
    assert evaluate_main(["score", "--task", "captioning", "--data", str(DATA / case / "gt.json"),
                          "--log", str(DATA / case / "log.jsonl"), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for name, want in REFERENCE[case].items():
        assert metrics[name] == pytest.approx(want, abs=1e-3), name


@needs_java
def test_soda_standard_is_a_labelled_departure():
    case = DATA / "c4_gt_unsorted_tied_preds"
    published = score("captioning", str(case / "gt.json"), str(case / "log.jsonl"))
    standard = score("captioning", str(case / "gt.json"), str(case / "log.jsonl"), soda_standard=True)
    assert standard["metrics"]["SODA_c"] != pytest.approx(published["metrics"]["SODA_c"], abs=1e-3)
    assert standard["metrics"]["CIDEr"] == pytest.approx(published["metrics"]["CIDEr"])
    assert "departure" in standard["protocol"]["soda"] and "published" in published["protocol"]["soda"]


def test_answers_are_parsed_as_metric_py_does():
    # the first [...] on one line; items until the first bad one; timestamps by position
    good = '[{"event": "a", "timestamps": "from 00 to 10"}, {"event": "b", "timestamps": "from 5 to 9"}]'
    assert dense.parse_vtimellm("Sure:\n" + good + "\nThanks") == [(0, 10, "a"), (5, 9, "b")]
    partial = '[{"event": "a", "timestamps": "from 00 to 10"}, {"timestamps": "from 20 to 30"}, ' \
              '{"event": "c", "timestamps": "from 40 to 50"}]'
    assert dense.parse_vtimellm(partial) == [(0, 10, "a")]
    assert dense.parse_vtimellm('[\n{"event": "a", "timestamps": "from 00 to 10"}\n]') == []  # across lines
    assert dense.parse_vtimellm('[{"event": "a", "timestamps": "from 10 to 100"}]') == [(10, 0, "a")]
    assert dense.parse_vtimellm("From 00 to 17, a man walks.") == []
    # the project's parser, a named departure, also reads "From 00 to 17, text." answers
    assert dense.parse_project("From 00 to 17, a man walks. From 20 to 99, a dog runs.") == [
        (0, 17, "a man walks"), (20, 99, "a dog runs")]


def test_similar_consecutive_sentences_merge_as_vtimellm():
    long = "a man in a red shirt is playing the guitar on a stage in front of a crowd"
    near = long[:-1] + "x"  # one character of 74 differs: ratio 0.986 > 0.98
    assert dense.merge_similar_sentences([(0, 10, long), (11, 20, near), (21, 30, long)]) == [(0, 30, long)]
    assert dense.merge_similar_sentences([(0, 10, long), (12, 20, long)]) == [(0, 10, long), (12, 20, long)]
    assert dense.merge_similar_sentences([(0, 10, "a dog"), (10, 20, "a cat")]) == [(0, 10, "a dog"),
                                                                                     (10, 20, "a cat")]
    assert dense.to_seconds([(0, 17, "a")], 50.0) == [{"timestamp": [0.0, 9.0], "sentence": "a"}]


def test_soda_matching_keeps_order_and_the_log_reader_skips_broken_lines(tmp_path):
    assert dense.soda_max_score(np.array([[1.0, 0.0], [0.0, 1.0]])) == 2.0
    assert dense.soda_max_score(np.array([[0.0, 1.0], [1.0, 0.0]])) == 1.0  # crossing pairs: only one counts
    assert dense.soda_max_score(np.array([[0.2, 0.9, 0.1], [0.8, 0.3, 0.7]])) == pytest.approx(1.6)
    log = tmp_path / "log.jsonl"
    log.write_text('{"video_id": "a", "task": "captioning", "answer": "x"}\n{"video_id": "b", "task": \n'
                   '"captioning"}\n{"video_id": "c", "task": "grounding", "answer": "y"}\n')
    records, bad = read_log(log, "captioning")
    assert [r["video_id"] for r in records] == ["a"] and bad == 2


def test_without_java_the_message_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    case = DATA / "c5_tiou_edges"
    result = score("captioning", str(case / "gt.json"), str(case / "log.jsonl"))
    m = result["metrics"]
    assert m["METEOR"].startswith("unavailable:") and "default-jre-headless" in m["METEOR"]
    assert "\n" not in m["METEOR"] and m["SODA_c"] == m["METEOR"]
    assert m["Precision"] == pytest.approx(REFERENCE["c5_tiou_edges"]["Precision"], abs=1e-3)
    assert m["Recall"] == pytest.approx(REFERENCE["c5_tiou_edges"]["Recall"], abs=1e-3)


def test_score_grounding_and_qa_logs(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"v1": {"duration": 20.0, "timestamps": [[2.0, 6.0], [10.0, 20.0]],
                                     "sentences": ["a man walks", "a dog runs"]}}))
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"video_id": "v1", "task": "grounding", "query_id": 0, "answer": "From 10 to 30.",
         "info": {"sentence_id": 0, "iou": 0.0}},  # recomputed from the answer: IoU 1.0
        {"video_id": "v1", "task": "grounding", "query_id": 1, "answer": "nothing", "info": {"sentence_id": 1}},
        {"video_id": "v9", "task": "grounding", "query_id": 2, "answer": "?", "info": {"iou": 0.5}},  # logged IoU
    ]) + "\n")
    result = score("grounding", str(gt), str(log))
    assert [r["iou"] for r in result["rows"]] == [1.0, 0.0, 0.5]
    assert result["metrics"]["R1@0.5"] == pytest.approx(200 / 3) and result["metrics"]["mIoU"] == pytest.approx(50.0)
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"video_id": "v1", "question": "What walks?", "answer": "A man", "question_id": 7}]))
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"video_id": "v1", "question_id": 7, "prediction": "a man."}) + "\n")
    assert score("qa", str(qa), str(items))["metrics"]["accuracy"] == 100.0
