"""Ray heads (and worker nodes) on a loopback address for tests, started as users start them: `ray start`.

Each node is a separate set of processes with its own ports and temp dir, so an in-process `ray.init` of another
test is left alone. Ray 2.60's catches: the head starts with the venv's bin/ first on PATH (a job's `python` is
the head's, else the system one without Ray), token auth (on by default; a client reads ~/.ray/auth_token only with
RAY_AUTH_MODE=token) is switched off explicitly for this loopback-only head, and every node's address is LOOPBACK. Teardown kills exactly the processes a node started: they carry a marker in their
environment (`ray stop --force` would kill every Ray on the machine). A head declared with `--num-gpus N` has N
logical GPUs without CUDA, so GPU scheduling is testable on this CPU machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import head

VENV_BIN = Path(sys.executable).parent  # the interpreter running the tests: .venv/bin under `make test`
RAY = str(VENV_BIN / "ray")
MARKER = "PITE_TEST_RAY_HEAD"
# Ray turns "127.0.0.1" and "localhost" into the machine's network address (services.resolve_ip_for_localhost), so
# a node started with them registers, and is reached, on that address. Another loopback address is taken as given:
# every node and every connection of these tests stays on the loopback interface.
LOOPBACK = "127.0.0.2"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pids_with_marker(value: str) -> list[int]:
    """Processes whose environment holds MARKER=value (a node's daemons, its workers and a job's driver) and the
    processes they started (head.pids_with_marker)."""
    return head.pids_with_marker(value, MARKER)


def kill_marked(marker: str, grace_s: float = 3.0, sigs=(signal.SIGTERM, signal.SIGKILL)) -> None:
    """SIGTERM, then SIGKILL what is left."""
    head.kill_marked(marker, MARKER, grace_s, sigs)


@dataclass
class Head:
    gcs_address: str  # LOOPBACK:PORT, for ray_address= and worker nodes
    dashboard: str  # http://LOOPBACK:PORT, for `ray job submit`
    env: dict  # the client env (PATH, auth off); the head's marker too
    temp_dir: Path
    marker: str
    nodes: list[str] = field(default_factory=list)  # markers of the worker nodes added

    def add_node(self, num_cpus: int, num_gpus: int = 0) -> str:
        """A worker node joined to this head; returns its marker (kill it with `kill_marked`)."""
        marker = uuid.uuid4().hex
        node_mgr, obj_mgr, metrics, agent, agent_grpc, runtime_env = free_ports(6)
        env = {**self.env, MARKER: marker}
        cmd = [RAY, "start", "--address", self.gcs_address, "--node-ip-address", LOOPBACK,
               "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus), "--object-store-memory", str(200 * 2**20),
               "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
               "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
               "--disable-usage-stats"]
        started = subprocess.run(cmd, env=env, cwd=self.temp_dir, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, f"ray start (worker) failed:\n{started.stdout}\n{started.stderr}"
        self.nodes.append(marker)
        return marker

    def stop(self) -> None:
        for marker in self.nodes:
            kill_marked(marker)
        kill_marked(self.marker)


def start_head(num_cpus: int = 2, num_gpus: int = 0, dashboard: bool = True) -> Head:
    gcs, dash, client, agent, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr = free_ports(9)
    marker = uuid.uuid4().hex
    # Short and under /tmp: Ray's unix sockets live below it and their paths are limited to ~107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="pite-ray-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
                MARKER: marker, "RAY_USAGE_STATS_ENABLED": "0"})
    cmd = [RAY, "start", "--head", "--node-ip-address", LOOPBACK, "--dashboard-host", LOOPBACK,
           "--port", str(gcs), "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus), "--object-store-memory", str(300 * 2**20),
           "--temp-dir", str(temp_dir), "--include-dashboard", "true" if dashboard else "false",
           "--disable-usage-stats"]
    head = Head(f"{LOOPBACK}:{gcs}", f"http://{LOOPBACK}:{dash}", env, temp_dir, marker)
    try:
        started = subprocess.run(cmd, env=env, cwd=temp_dir, capture_output=True, text=True, timeout=180)
    except BaseException:
        head.stop()
        raise
    if started.returncode != 0:
        head.stop()
        raise AssertionError(f"ray start failed:\n{started.stdout}\n{started.stderr}")
    return head
