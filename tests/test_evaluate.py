"""`pite evaluate`: metric code on worked examples, annotation layouts, and the tasks end to end on a tiny model."""

import json

import numpy as np
import pytest

from annotate.errors import ConfigError
from pipelines.evaluate import metrics as M
from pipelines.evaluate import data as D
from pipelines.evaluate import tasks as E


# --- temporal IoU and grounding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pred, gt, want", [
    ((0.1, 0.5), (0.1, 0.5), 1.0),  # identical
    ((0.0, 0.2), (0.3, 0.5), 0.0),  # disjoint
    ((0.0, 0.3), (0.3, 0.5), 0.0),  # touching
    ((0.2, 0.3), (0.1, 0.5), 0.25),  # contained: 0.1 / 0.4
    ((0.0, 1.0), (0.2, 0.4), 0.2),  # containing
    ((0.2, 0.4), (0.3, 0.7), 0.2),  # partial: 0.1 / 0.5
    ((0.3, 0.3), (0.1, 0.5), 0.0),  # zero-length prediction inside the event
    ((0.3, 0.3), (0.3, 0.3), 0.0),  # both zero-length and equal: empty union, no division by zero
    ((0.4, 0.12), (0.1, 0.5), 0.0),  # reversed prediction overlaps nothing
])
def test_span_iou_edge_cases(pred, gt, want):
    assert M.span_iou(pred, gt) == pytest.approx(want)


def test_grounding_iou_parses_frames_and_rounds_like_vtimellm():
    # "10 to 30" of a 20 s clip = 2..6 s
    assert M.grounding_iou("From 10 to 30.", (2.0, 6.0), 20.0) == ((10, 30), 1.0)
    assert M.grounding_iou("between 10 and 30", (2.0, 6.0), 20.0) == ((10, 30), 1.0)
    # Unparseable answers are misses.
    assert M.grounding_iou("at frame 5", (2.0, 6.0), 20.0) == (None, 0.0)
    assert M.grounding_iou("From 5 to 30.", (2.0, 6.0), 20.0) == (None, 0.0)  # one digit: not a VTimeLLM span
    # IoU 0.4975 (= 0.199 / 0.4 ...) rounds to 0.5 and then counts for R@0.5, as in VTimeLLM.
    span, iou = M.grounding_iou("From 00 to 20.", (0.0, 40.2), 100.0)
    assert span == (0, 20) and iou == 0.5 and 0.2 / 0.402 < 0.5


def test_grounding_summary_worked_example():
    s = M.grounding_summary([1.0, 0.5, 0.29, 0.0])
    assert s == {"n": 4, "mIoU": pytest.approx(44.75), "R1@0.3": 50.0, "R1@0.5": 50.0, "R1@0.7": 25.0}


def _layouts(tmp_path):
    """The same two queries in the three accepted layouts."""
    anet = {"v1": {"duration": 20.0, "timestamps": [[2.0, 6.0], [10.0, 20.0]],
                   "sentences": ["A man opens a door.", "He sits"]}}
    (tmp_path / "anet.json").write_text(json.dumps(anet))
    rows = [{"video": "v1", "duration": 20.0, "timestamp": [2.0, 6.0], "sentence": "A man opens a door."},
            {"video_id": "v1", "duration": 20.0, "timestamp": [10.0, 20.0], "query": "He sits"}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "sta.txt").write_text("v1 2.0 6.0##A man opens a door.\nv1 10.0 20.0##He sits\n")
    (tmp_path / "dur.csv").write_text("id,length\nv1,20.0\n")
    return anet


def test_annotation_layouts_agree(tmp_path):
    anet = _layouts(tmp_path)
    a = D.load_temporal_annotations(tmp_path / "anet.json")
    b = D.load_temporal_annotations(tmp_path / "list.json")
    c = D.load_temporal_annotations(tmp_path / "sta.txt", durations=str(tmp_path / "dur.csv"))
    assert a == b == c == anet
    with pytest.raises(ConfigError, match="no duration for 'v1'"):
        D.load_temporal_annotations(tmp_path / "sta.txt")
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "v1", "timestamp": [1, 2], "sentence": "x"}]))
    with pytest.raises(ConfigError, match="bad.json: item 0: needs a duration"):
        D.load_temporal_annotations(tmp_path / "bad.json")


def test_run_grounding_with_given_answers(tmp_path):
    _layouts(tmp_path)
    feats = tmp_path / "feat"
    feats.mkdir()
    np.save(feats / "v1.npy", np.zeros((100, 8), np.float16))
    ann = D.load_temporal_annotations(tmp_path / "anet.json")
    ann["v2"] = {"duration": 5.0, "timestamps": [[0, 1]], "sentences": ["x"]}  # no features: skipped, counted
    seen = {}

    def answers(feats_, queries):
        seen["queries"] = queries
        assert all(f.shape == (100, 8) and f.dtype == np.float32 for f in feats_)
        return ["From 10 to 30.", "I do not know."]

    result = E.run_grounding(answers, ann, feats)
    assert seen["queries"] == ["During which frames can we see a man opens a door?",
                               "During which frames can we see he sits?"]
    m = result["metrics"]
    assert m["n"] == 2 and m["R1@0.7"] == 50.0 and m["mIoU"] == 50.0 and m["unparsed"] == 1
    assert result["skipped_videos"] == ["v2"]
    assert result["rows"][0]["pred_seconds"] == [2.0, 6.0]
    # Baselines score the same items: "00 to 99" is [0, 0.99]: IoU 0.2/0.99 -> 0.2 and 0.49/1.0 = 0.49.
    assert result["baselines"]["constant (00 to 99)"]["mIoU"] == pytest.approx(100 * (0.2 + 0.49) / 2)
    path = E.write_result(result, tmp_path / "out")
    assert json.loads(path.read_text())["metrics"]["n"] == 2
    assert len((tmp_path / "out" / "items.jsonl").read_text().splitlines()) == 2


# --- trajectories and QA ----------------------------------------------------------------------------------------


def test_trajectory_errors_worked_example():
    target = np.zeros((2, 4, 2)) + 0.5
    pred = target.copy()
    pred[..., 0] += 1.5 / 256  # 1.5 px at 256 x 256: within 2, 4, 8, 16 but not 1
    vis = np.ones((2, 4), bool)
    vis[1, :2] = False
    pred[1, :2] = 5.0  # far off, but not visible: not scored
    s = M.trajectory_errors(pred, target, vis)
    assert s["n"] == 6 and s["l1_sum"] == pytest.approx(6 * 0.75 / 256)
    out = M.trajectory_summary([s])
    assert out["L1"] == pytest.approx(0.75 / 256) and out["delta_avg"] == pytest.approx(80.0)
    assert out["delta_1"] == 0.0 and out["delta_2"] == 100.0


def test_qa_exact_match_and_pluggable_judge(tmp_path):
    assert M.exact_match("q", "The Red ball.", "red ball") == 1.0
    assert M.exact_match("q", "a blue ball", "red ball") == 0.0
    judge = M.load_judge("tests.test_evaluate:_contains_judge")
    feats = tmp_path / "feat"
    feats.mkdir()
    np.save(feats / "v.npy", np.zeros((4, 8), np.float32))
    (tmp_path / "qa.json").write_text(json.dumps([
        {"video_name": "v", "question": "What rolls?", "answer": "a ball"},
        {"video_id": "v", "question": "What colour?", "answer": "red"},
        {"video_id": "missing", "question": "?", "answer": "x"}]))
    items = D.load_qa(tmp_path / "qa.json")
    answer = lambda feats_, qs: ["The ball.", "It is blue."]  # noqa: E731
    assert E.run_qa(answer, items, feats)["metrics"] == {"n": 2, "accuracy": 50.0}
    r = E.run_qa(lambda f, q: ["a red ball rolls", "blue"], items, feats, judge)
    assert r["metrics"]["accuracy"] == 50.0 and r["skipped_videos"] == ["missing"]
    with pytest.raises(ConfigError, match="module:function"):
        M.load_judge("nojudge")


def _contains_judge(question, prediction, reference):
    return float(M.normalize_answer(reference) in M.normalize_answer(prediction))


# --- end to end with a tiny trained model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pipelines.shards import ShardWriter
    from tests.test_infer import train_tiny_checkpoint

    root = tmp_path_factory.mktemp("eval")
    ckpt, video, target, sample = train_tiny_checkpoint(root, steps=120)
    with ShardWriter(root / "run", 0) as w:
        w.add(sample)
    return ckpt, root / "run", sample


@pytest.mark.slow
def test_evaluate_trajectory_cli_beats_baselines(trained_run, tmp_path):
    from pipelines.cli import main as cli_main

    ckpt, run, _ = trained_run
    assert cli_main(["evaluate", "trajectory", "--checkpoint", str(ckpt), "--run", str(run),
                     "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    m, base = result["metrics"], result["baselines"]
    assert m["n_points"] == 2 * 3 * 32
    assert m["L1"] < 0.05 and m["L1"] < base["constant (0.5, 0.5)"]["L1"] / 3 and m["L1"] < base["random"]["L1"] / 3
    assert m["delta_avg"] > base["constant (0.5, 0.5)"]["delta_avg"]
    rows = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert [r["phrase"] for r in rows] == ["A red ball", "a blue box"]


@pytest.mark.slow
def test_evaluate_grounding_cli_counts_unparseable_answers_as_misses(trained_run, tmp_path, capsys):
    """The model was trained to describe, not to ground: it answers with its caption, which has no span."""
    from pipelines.cli import main as cli_main

    ckpt, run, sample = trained_run
    feats = tmp_path / "feat"
    feats.mkdir()
    np.save(feats / "clip.npy", sample.feat)
    (tmp_path / "ann.json").write_text(json.dumps({"clip": {"duration": 4.0, "timestamps": [[0, 2], [1, 4]],
                                                            "sentences": ["the red ball", "the blue box"]}}))
    assert cli_main(["evaluate", "grounding", "--checkpoint", str(ckpt), "--data", str(tmp_path / "ann.json"),
                     "--features", str(feats), "--out", str(tmp_path / "out"), "--max-new-tokens", "12"]) == 0
    result = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert result["metrics"]["n"] == 2 and result["metrics"]["unparsed"] == 2 and result["metrics"]["mIoU"] == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    assert all(r["answer"] and r["iou"] == 0.0 for r in rows)
    assert "R1@0.5" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_bench_end_to_end_on_a_hand_made_heldout_run(trained_run, tmp_path):
    """`make eval`'s pipeline: export to the public layouts, every metric with baselines, the picture."""
    import argparse

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.evaluate import bench as eval_bench
    from pipelines.shards import ShardWriter

    ckpt, _, sample = trained_run
    heldout = tmp_path / "heldout"
    sample.meta["events"] = [{"start": 0.0, "end": 2.0, "text": "the red ball moves"},
                             {"start": 1.0, "end": 4.0, "text": "the blue box falls"}]
    with ShardWriter(heldout, 0) as w:
        w.add(sample)
    (heldout / "stats.json").write_text("{}")
    (heldout / "input").mkdir()
    video = ckpt.parent / "clip.mp4"
    pq.write_table(pa.Table.from_pylist([{"video_id": "clip", "video": str(video), "tar_member": None}]),
                   heldout / "input" / "pite-000000.parquet")
    args = argparse.Namespace(checkpoint=str(ckpt), heldout=str(heldout), train_data=str(heldout),
                              out=str(tmp_path / "out"), device="cpu", batch_size=4, synth_out="unused",
                              synth_seed=0, synth_start=0, synth_n=0, annotate_config="unused")
    summary = eval_bench.run_bench(args)
    figures = summary["figures"]
    assert set(figures) == {"grounding R1@0.5", "grounding mIoU", "trajectory L1", "trajectory delta_avg"}
    # The model was trained on this clip's trajectories: it beats every trajectory baseline, incl. the mean.
    assert figures["trajectory L1"]["beats_all_baselines"]
    assert set(figures["trajectory L1"]["baselines"]) == {"constant (0.5, 0.5)", "random", "train mean"}
    # mean start 0.5 s / 4 s = 12.5 % -> 12 (round half to even, as frame_index), mean end 3 s / 4 s -> 75
    assert "train mean (12 to 75)" in figures["grounding mIoU"]["baselines"]
    exported = json.loads((tmp_path / "out" / "data" / "grounding.json").read_text())
    assert exported == {"clip": {"duration": sample.meta["duration"], "timestamps": [[0.0, 2.0], [1.0, 4.0]],
                                 "sentences": ["the red ball moves", "the blue box falls"]}}
    for task in ("grounding", "captioning", "trajectory"):
        assert (tmp_path / "out" / task / "metrics.json").is_file()
    import cv2

    img = cv2.imread(summary["picture"])
    assert img is not None and img.shape[0] == 2 * 48 + 2  # ground truth row over predicted row
    text = eval_bench.format_summary(summary)
    assert "trajectory L1" in text and summary["picture"] in text
