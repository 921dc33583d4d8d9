"""The README's commands, extracted and run as printed (bench/readme_commands.py): each runs, or is skipped for a
named reason (weights, a cluster, the suite itself, long)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "readme_commands.py"


def _report(*args: str, env: dict | None = None, timeout: float = 60) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    rc, report, _ = _report("--list")
    assert rc == 0
    commands = report["commands"]
    skipped = [c for c in commands if c["status"] == "skipped"]
    assert {c["kind"] for c in skipped} <= {"weights", "cluster", "suite", "hour", "long"}
    assert all(c["why"] for c in skipped)
    for c in commands:  # anything that names weights or a cluster's address is never run here
        if "/models/" in c["text"] or "HEAD" in c["text"]:
            assert c["kind"] in ("weights", "cluster"), c["text"]
    pending = [c["text"] for c in commands if c["status"] == "pending"]
    assert len(pending) >= 15
    for must in ("make annotate", "make train", "make eval", "pite infer", "pite head start", "pite viz"):
        assert any(must in text for text in pending), must
    # every quote and size the README claims for a command stands in the README beside that command
    assert report["claims"] and all(c["status"] == "pending" for c in report["claims"]), report["claims"]


def test_fenced_blocks_are_parsed_as_a_shell_reads_them(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("text\n```bash\n# a comment\necho one \\\n  two   # trailing\n\n  echo three\n```\n"
                      "```yaml\nkey: echo no\n```\n  ```bash\n  echo four\n  ```\n")
    rc, report, _ = _report("--list", "--readme", str(readme))
    assert rc == 0
    assert [(c["line"], c["text"]) for c in report["commands"]] == [
        (4, "echo one two   # trailing"), (7, "echo three"), (13, "echo four")]


@pytest.mark.slow
def test_the_readme_commands_run_as_printed(tmp_path):
    """About 4 minutes: make annotate/train/eval shrunk by ARGS, the production recipe on one generated clip with
    random tiny weights (twice: local Ray with a logical GPU, and the `pite head` example)."""
    scratch = tmp_path / "checkout"
    rc, report, stderr = _report("--scratch", str(scratch), "--timeout", "600", timeout=1500)
    failed = [(c["line"], c["ran"], c["tail"]) for c in report["commands"] if c["status"] == "failed"]
    assert rc == 0 and not failed, failed
    # what the README says a command prints or writes is what it printed or wrote
    assert all(c["status"] in ("ok", "skipped") for c in report["claims"]), report["claims"]
    assert sum(c["status"] == "ok" for c in report["claims"]) >= 2, report["claims"]
    assert report["counts"]["pending"] == 0 and report["counts"]["ok"] >= 15
    # what the commands promise is there
    paths = ["runs/clip/cat/viz", "runs/viz/tracks.mp4", "runs/infer/answer.png", "runs/infer/answer.json",
             "runs/eval/demo/summary.json", "runs/eval/rescored/metrics.json", "runs/convert/vtimellm/stats.json"]
    if any("pite143k" in c["text"] and c["status"] == "ok" for c in report["commands"]):  # CoTracker3 installed
        paths += ["runs/annotate/w-tiny/stats.json", "runs/annotate/cluster-demo/stats.json"]
    for path in paths:
        assert (scratch / path).exists(), path
    stop = next(c for c in report["commands"] if c["text"].startswith(".venv/bin/pite head stop"))
    stopped = any("stopped the head at 127.0.0.2:6390" in line for line in stop["tail"])
    assert stop["status"] == "skipped" or stopped, stop["tail"]
