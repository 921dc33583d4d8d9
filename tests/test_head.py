"""`pite head`: a loopback head with token authentication on, what it listens on, and a stop that ends only its own
processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import head

pytestmark = pytest.mark.slow


def _read(path: str) -> str:
    """A /proc file's text; "" once the process is gone."""
    try:
        return Path(path).read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_head_starts_on_loopback_with_token_auth_and_stops_only_itself(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(head, "STATE", tmp_path / "state" / "head.json")  # a folder that does not exist yet
    home = tmp_path / "home"  # ray start writes its token under HOME/.ray: not the user's
    home.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 env={**os.environ, head.MARKER: "someone-else"})
    try:
        state = head.start(cpus=1, gpus=2, port=6397, dashboard_port=8297, home=str(home))
        assert state["address"] == "127.0.0.2:6397" and (home / ".ray" / "auth_token").is_file()
        s = head.status()
        assert s["processes"] > 3 and s["listening"]
        ours = head.pids_with_marker(state["marker"])
        # Ray's agents rewrite their environment for their process title: found as the raylet's children
        names = {_read(f"/proc/{pid}/cmdline").split("\0")[0] for pid in ours}
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
        # the ports that take the loopback address do; the GCS listens on every interface (Ray 2.60), token-guarded
        addresses = dict(s["listening"])
        assert "127.0.0.2:8297" in addresses
        assert any(addr.endswith(":6397") for addr, _ in s["beyond_loopback"])
        client = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token"}
        code = ("import ray; ray.init(address='127.0.0.2:6397', log_to_driver=False); "
                "print(ray.cluster_resources().get('GPU')); ray.shutdown()")
        out = subprocess.run([sys.executable, "-c", code], env=client, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "2.0", out.stderr[-2000:]
    finally:
        head.stop()
    assert head.pids_with_marker(state["marker"]) == []
    left = {pid: _read(f"/proc/{pid}/stat") for pid in ours}
    assert not {pid: stat for pid, stat in left.items() if stat and stat.rpartition(")")[2].split()[0] != "Z"}, left
    assert bystander.poll() is None  # another process with the same kind of marker is left alone
    bystander.kill()
    assert "stopped the head at 127.0.0.2:6397" in capsys.readouterr().out
