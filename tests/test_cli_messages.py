"""What a user sees at the edges: Ctrl-C ends with one line saying the same command resumes, and `pite inspect
--keys` lists what `pite viz --key` takes."""

from __future__ import annotations

import pipelines.annotate.cli as annotate_cli
import pipelines.train.run as train_run
from pipelines.inspect import main as inspect_main
from tests.train_helpers import make_run


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_in_annotate_is_one_line_that_says_rerun(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(annotate_cli, "run", _interrupt)
    rc = annotate_cli.main(["--config", "configs/annotate/demo.yaml", f"out={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and len(err.splitlines()) == 1
    assert "0 complete shard(s)" in err and "the same command resumes" in err


def test_ctrl_c_in_train_is_one_line_that_says_the_same_command_continues(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(train_run, "run", _interrupt)
    rc = train_run.main(["--config", "configs/train/demo.yaml", f"out={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and len(err.splitlines()) == 1
    assert "the same command continues" in err and "make train" in err and "fresh=true starts over" in err


def test_inspect_keys_lists_the_samples(tmp_path, capsys):
    run = make_run(tmp_path / "run", n_shards=2, per_shard=2)
    assert inspect_main([str(run), "--keys"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "key\tvideo_id\tobjects" and len(lines) == 5


def test_report_names_rejected_videos_and_says_when_quality_is_trivial(tmp_path):
    from pipelines.report import write_report

    stats = {"input_rows": 3, "written": 1, "rejected": 2, "shards": 1, "rejected_by_stage": {"ground": 2},
             "reject_reasons": {"ground: no phrase grounded": 2},
             "reject_examples": {"ground: no phrase grounded": ["clip-7", "clip-9"]},
             "seconds": {"total": 1, "ray_startup": 0, "pipeline": 1, "per_stage": {"ground": 0.5}},
             "quality": {"box_iou": 1.0}, "quality_clips": {"box_iou": 1}, "ground_backend": "given"}
    page = write_report(tmp_path, stats, []).read_text()
    assert "clip-7, clip-9" in page and "Grounding was given" in page and "trivial" in page
    assert "<th></th>" not in page  # the counts table has no empty header row
    assert "no row has ground truth" not in page
    without_truth = write_report(tmp_path, {**stats, "quality": {}, "quality_clips": {}}, []).read_text()
    assert "no row has ground truth" in without_truth and "Grounding was given" not in without_truth


def test_report_tiles_are_drawn_at_a_readable_size_whatever_the_source():
    from pipelines.annotate.outputs import MAX_TILE, MIN_TILE, tile_scale

    for width in (128, 256, 368, 400, 720, 1296, 1920):
        assert MIN_TILE <= round(width * tile_scale(width)) <= MAX_TILE, width
    assert tile_scale(128) == 3.0  # whole factors upward: pixels stay square


def test_progress_in_a_job_log_is_a_line_a_minute_and_the_summary_stays_last(tmp_path):
    """Under `ray job submit` stderr is a pipe: `pite synth` of 40 clips (several seconds) writes its bar at the
    start and the end only, where a terminal would get ten redraws a second."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pipelines.synth", "--out", str(tmp_path / "clips"), "--n", "40",
                        "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    redraws = [part for part in r.stderr.replace("\r", "\n").splitlines() if part.startswith("synth:")]
    assert 1 <= len(redraws) <= 3, redraws
    assert "40/40" in redraws[-1]
