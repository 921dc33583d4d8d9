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


def test_ctrl_c_in_train_is_one_line_that_says_resume(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(train_run, "run", _interrupt)
    rc = train_run.main(["--config", "configs/train/demo.yaml", f"out={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and len(err.splitlines()) == 1 and "resume=true" in err


def test_inspect_keys_lists_the_samples(tmp_path, capsys):
    run = make_run(tmp_path / "run", n_shards=2, per_shard=2)
    assert inspect_main([str(run), "--keys"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "key\tvideo_id\tobjects" and len(lines) == 5
