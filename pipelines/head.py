"""`pite head start|status|stop`: a Ray head for this machine on a loopback address, token authentication on, and a
stop that ends only this head's processes (`ray stop` ends every Ray node of the user).

    .venv/bin/pite head start --cpus 4 --gpus 2      # logical GPUs: the production recipe's scheduling on a laptop
    RAY_AUTH_MODE=token .venv/bin/pite annotate --config ... ray_address=127.0.0.2:6390
    .venv/bin/pite head status                       # every port it listens on, and on which address
    .venv/bin/pite head stop

What binds where (Ray 2.60, measured with `ss -ltnp`): the dashboard, the Ray client server and the runtime-env
agent listen on the loopback address given; the GCS, the raylet (node manager, object manager), the dashboard
agent (two ports), and one port each of the dashboard and the autoscaler monitor listen on every interface, and no
Ray option binds them to one address. Token authentication stays on, so those ports refuse a client without the
token `ray start` writes to ~/.ray/auth_token. On a shared network, also firewall them or run inside a network
namespace (`unshare -n`).
Ray replaces 127.0.0.1 and localhost with the machine's network address, so the head uses 127.0.0.2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

LOOPBACK = "127.0.0.2"
MARKER = "PITE_HEAD"  # in the environment of every process the head starts (inherited by all of Ray's)
# Where the head is recorded (its address and marker), so that `stop` finds exactly its processes.
STATE = Path(os.environ.get("PITE_HEAD_STATE", f"/tmp/pite-head-{os.getuid()}/head.json"))


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a process; None when it is gone."""
    try:  # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _own_processes() -> dict[int, tuple[str, int, int]]:
    """pid -> _stat of this user's processes (another user's cannot be signalled, nor is it ours to stop)."""
    procs = {}
    for entry in os.scandir("/proc"):
        try:
            if not entry.name.isdigit() or entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if (st := _stat(int(entry.name))) is not None:
            procs[int(entry.name)] = st
    return procs


def _marked(value: str, name: str, procs: dict[int, tuple[str, int, int]]) -> set[int]:
    needle = f"{name}={value}".encode()
    spared, pid = set(), os.getpid()
    while pid > 1 and pid not in spared:  # the caller and its parents, even when a head started them (a job's shell)
        spared.add(pid)
        pid = procs[pid][1] if pid in procs else 0
    found = set()
    for pid in procs:
        try:
            if pid not in spared and needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(pid)
        except OSError:  # gone
            continue
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in procs.items():
        children.setdefault(parent, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child not in spared:
                found.add(child)
                todo.append(child)
    return found


def pids_with_marker(value: str, name: str = MARKER) -> list[int]:
    """Processes whose environment holds name=value (a node's daemons, its workers, a job's driver), and every
    process they started: Ray's dashboard and runtime-env agents overwrite their environment block with their
    process title, so the marker alone misses them while the raylet, their parent, is alive."""
    return sorted(_marked(value, name, _own_processes()))


def kill_marked(value: str, name: str = MARKER, grace_s: float = 3.0,
                sigs: Sequence[int] = (signal.SIGTERM, signal.SIGKILL)) -> int:
    """SIGTERM, then SIGKILL what is left (or the `sigs` given); returns how many processes there were. Every
    process found once stays a target (an agent whose raylet died is re-parented and no longer found by descent),
    known by its pid and start time, so that a pid the system has since given to another process is left alone."""
    targets: dict[int, int] = {}

    def scan() -> None:
        procs = _own_processes()
        for pid in _marked(value, name, procs):
            targets.setdefault(pid, procs[pid][2])

    def living() -> list[int]:
        return [pid for pid, start in targets.items()
                if (st := _stat(pid)) is not None and st[0] != "Z" and st[2] == start]  # a zombie is dead

    scan()
    first = len(targets)
    for sig in sigs:
        for pid in living():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while living() and time.monotonic() < deadline:
            time.sleep(0.2)
        scan()  # a process started meanwhile (a worker the raylet was spawning) is a target too
        if not living():
            break
    return first


def listening(pids: Sequence[int]) -> list[tuple[str, str]]:
    """(address:port, process) of every TCP socket the processes listen on, from `ss -ltnp`."""
    if shutil.which("ss") is None:
        return []
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    wanted = {f"pid={p}," for p in pids}
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6 and any(w in parts[5] for w in wanted):
            rows.append((parts[3], parts[5].split('"')[1] if '"' in parts[5] else parts[5]))
    return rows


def beyond_loopback(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(addr, proc) for addr, proc in rows
            if not addr.startswith(("127.", "[::1]", "[::ffff:127.")) and not addr.startswith("localhost")]


def start(cpus: int, gpus: int, port: int, dashboard_port: int, home: Optional[str] = None) -> dict:
    if STATE.is_file():
        address = json.loads(STATE.read_text())["address"]
        raise SystemExit(f"pite head: a head is already recorded in {STATE} ({address}): `pite head stop` first")
    marker = uuid.uuid4().hex
    temp = Path(f"/tmp/pite-ray-{os.getuid()}-{port}")  # short: Ray's unix socket paths are limited to 107 bytes
    temp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", MARKER: marker})
    if home:
        env["HOME"] = home
    ray = str(Path(sys.executable).parent / "ray")
    token = Path(env.get("HOME", str(Path.home()))) / ".ray" / "auth_token"
    if not token.is_file():  # token mode needs one: `ray get-auth-token --generate` writes ~/.ray/auth_token
        made = subprocess.run([ray, "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                              timeout=60)
        if made.returncode != 0 or not token.is_file():
            raise SystemExit(f"pite head: could not generate a Ray auth token ({' '.join(made.stderr.split()[-20:])})")
    cmd = [ray, "start", "--head", "--node-ip-address", LOOPBACK,
           "--dashboard-host", LOOPBACK, "--port", str(port), "--dashboard-port", str(dashboard_port),
           "--ray-client-server-port", str(port + 1), "--num-cpus", str(cpus), "--num-gpus", str(gpus),
           "--temp-dir", str(temp), "--disable-usage-stats"]
    state = {"address": f"{LOOPBACK}:{port}", "dashboard": f"http://{LOOPBACK}:{dashboard_port}", "marker": marker,
             "temp_dir": str(temp), "started": time.time()}
    # recorded before it starts: whatever happens next, `pite head stop` finds its processes by the marker
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(state, indent=1))
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess(cmd, 124, "", "ray start timed out after 180 s")
    if done.returncode != 0:
        kill_marked(marker)
        STATE.unlink(missing_ok=True)
        tail = " ".join(done.stderr.split()[-40:])
        raise SystemExit(f"pite head: ray start failed ({tail})")
    return state


def status() -> dict:
    if not STATE.is_file():
        raise SystemExit("pite head: no head recorded (pite head start)")
    state = json.loads(STATE.read_text())
    pids = pids_with_marker(state["marker"])
    rows = listening(pids)
    return {**state, "processes": len(pids), "listening": rows, "beyond_loopback": beyond_loopback(rows)}


def stop() -> int:
    if not STATE.is_file():
        print("pite head: no head recorded: nothing to stop")
        return 0
    state = json.loads(STATE.read_text())
    n = kill_marked(state["marker"])
    STATE.unlink()
    print(f"pite head: stopped the head at {state['address']} ({n} processes; other Ray nodes left alone)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="pite head", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("action", choices=["start", "status", "stop"])
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpus", type=int, default=0, help="logical GPUs (no CUDA needed) to schedule GPU recipes")
    ap.add_argument("--port", type=int, default=6390)
    ap.add_argument("--dashboard-port", type=int, default=8266)
    args = ap.parse_args(argv)
    if args.action == "stop":
        return stop()
    if args.action == "start":
        state = start(args.cpus, args.gpus, args.port, args.dashboard_port)
        print(f"pite head: started at {state['address']} (dashboard {state['dashboard']}), token authentication on:"
              f" clients set RAY_AUTH_MODE=token; `pite head stop` ends it")
    s = status()
    shown = ", ".join(f"{addr} ({proc})" for addr, proc in s["beyond_loopback"]) or "none"
    print(f"pite head: {s['processes']} processes; listening beyond loopback (token-protected): {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
