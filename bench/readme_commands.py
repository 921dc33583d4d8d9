"""Run every command of the README's ```bash blocks, as printed, in a scratch copy of this checkout.

  .venv/bin/python bench/readme_commands.py           # quick (~4 min): the long make targets run smaller
  .venv/bin/python bench/readme_commands.py --long    # those at full size too, and 4.6 GB of real-size weights
  .venv/bin/python bench/readme_commands.py --list    # what would run or be skipped, and why; runs nothing

Prints one JSON object: every command with its README line, the text that ran, rc, seconds and the tail of its
output, or why it was skipped; and every claim the README makes about what a command prints or writes (`QUOTES`,
`SIZES`), checked against what it did. Exit 1 when a command that ran failed or a claim did not hold.

The scratch dir is this checkout's files (tracked and untracked, not ignored; mtimes kept, so `make setup` stays a
no-op) with `.venv` linked to this one. The commands run in README order, each in `bash -c` from the scratch root,
so an output of one (runs/annotate/mine) is the input of the next, as for a user. `make` and `python -m` run the
scratch copy's code; `.venv/bin/pite` runs this checkout's (the venv's editable install points here): the same
files, copied at the start.

What a user brings is made first, as stand-ins (`make_fixtures`): my.mp4 and clip.mp4 (generated clips),
my/manifest.jsonl (a generated clip with its boxes), val_2.json and log.jsonl (a dense-captioning ground truth and
log of tests/data/dvc), stage2.json and feats/ (two VTimeLLM records with random CLIP features). `KEY` is replaced
by the first key of the run it names. Commands that cannot run here are skipped with their kind (`SKIP_RULES`):
weights, cluster, suite, long (run with --long) and hour; also the production recipe where CoTracker3 is not
installed, and the `pite head` example where a head already listens on its port. `pite head` keeps its record in
the scratch dir, and a head the example leaves running is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (pattern on the joined command, kind, why). The first match wins; kind `long` runs with --long.
SKIP_RULES = [
    (r"\bHEAD\b", "cluster", "needs a Ray cluster: HEAD is its address"),
    (r"^(export PATH=/opt/|ray start\b)", "cluster", "sets up a node of a cluster"),
    (r"(^|[\s=])/models/|/shared/models/", "weights", "needs downloaded weights (README, Weights)"),
    (r"\binference\.py\b", "weights", "needs the PiTe release checkpoint under ./checkpoint"),
    (r"^make test\b", "suite", "is the test suite, which runs this script"),
    (r"^make ablation\b", "hour", "about an hour on 2 cores (58 min 37 s measured); tests/test_ablate.py runs a "
                                 "tiny grid through the same code"),
    (r"--size real\b", "long", "writes 4.6 GB of random weights of the published sizes"),
    (r"^bench/device_(bundle|sim)\.sh\b", "long", "fetches cp312 wheels (the simulation also torch for cp312, "
                                                  "0.5 GB) and takes minutes: run before a GPU machine's call"),
]
HEAD_ADDRESS = ("127.0.0.2", 6390)  # where the README's `pite head start` puts its head

# What the README quotes of a command's output: (the start of that README command, the quote). The quote must
# stand in the README (line breaks there count as spaces) and in what the command printed when it ran.
QUOTES = [
    (".venv/bin/pite annotate-clip --video my.mp4", "dropped 'a sofa': no box given"),
]
# Sizes the README gives for what a command writes: (the start of the command, a pattern of the README whose group
# is the size in MB, the folder it measures, whether it holds only with CoTracker3 installed (True), without (False)
# or either (None)). A size holds within a factor of 1.5.
SIZES = [
    (".venv/bin/pite weights random --size tiny", r"--size tiny [^\n]*~(\d+) MB \(CoTracker3's is full size\)",
     "runs/weights/tiny", True),
    (".venv/bin/pite weights random --size tiny", r"Without CoTracker3 installed the tiny weights are ~(\d+) MB",
     "runs/weights/tiny", False),
]

# Without --long, the long make targets run with ARGS that shrink them; the command is otherwise as printed.
QUICK_ARGS = {
    "make annotate": "synth.n=8",
    "make train": "stages.0.optim.max_steps=2 stages.1.optim.max_steps=2 stages.2.optim.max_steps=2 eval.synth_n=4",
    "make eval": "--synth-n 4",
}


@dataclass
class Command:
    line: int  # 1-based line of the README where it starts
    text: str  # continuation lines joined
    ran: str = ""
    status: str = "pending"  # ok | failed | skipped
    kind: str = ""
    why: str = ""
    rc: int | None = None
    seconds: float = 0.0
    tail: list[str] = field(default_factory=list)
    output: str = field(default="", repr=False)  # all it printed, for the claims; not in the JSON report


def extract(readme: str) -> list[Command]:
    """Commands of the ```bash blocks (indented ones too): `\\` continuations joined, comment lines dropped."""
    commands, in_bash, pending, start = [], False, "", 0
    for number, raw in enumerate(readme.splitlines(), 1):
        line = raw.strip()
        if line.startswith("```"):
            in_bash = not in_bash and line[3:].strip() == "bash"
            continue
        if not in_bash or (not pending and (not line or line.startswith("#"))):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        commands.append(Command(line=start, text=pending + line))
        pending = ""
    return commands


def has_cotracker() -> bool:
    """CoTracker3 is installed from its own checkout (CC-BY-NC, not on PyPI): `make test` does when ../shared has it."""
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('cotracker') is None)"
    return subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code]).returncode == 0


def classify(cmd: Command, long: bool, cotracker: bool = True, head_port_free: bool = True) -> None:
    for pattern, kind, why in SKIP_RULES:
        if re.search(pattern, cmd.text):
            if kind == "long" and long:
                break
            cmd.status, cmd.kind, cmd.why = "skipped", kind, why
            return
    if not cotracker and "configs/annotate/pite143k.yaml" in cmd.text:
        cmd.status, cmd.kind, cmd.why = "skipped", "weights", "needs CoTracker3 installed (README, Weights)"
    elif not head_port_free and ("pite head" in cmd.text or f"{HEAD_ADDRESS[0]}:{HEAD_ADDRESS[1]}" in cmd.text):
        cmd.status, cmd.kind, cmd.why = "skipped", "cluster", f"a Ray head already listens on {HEAD_ADDRESS[0]}:" \
                                                              f"{HEAD_ADDRESS[1]} (yours: the example would use it)"


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def run_text(cmd: Command, long: bool) -> str:
    """The command as it runs: shrunk make targets get ARGS; KEY becomes a real key."""
    text = cmd.text
    bare = text.split("#")[0].strip()
    if not long and bare in QUICK_ARGS:
        text = f'{bare} ARGS="{QUICK_ARGS[bare]}"'
    if re.search(r"\bKEY\b", text):
        run_dir = re.search(r"pite viz (\S+)", text).group(1)
        # `pite inspect RUN --keys` prints a header line, then key, video_id, objects per sample
        text = re.sub(r"\bKEY\b", f"$(.venv/bin/pite inspect {run_dir} --keys | awk 'NR == 2 {{print $1}}')", text)
    return text


def make_scratch(scratch: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).exists():  # listed but deleted in the working tree: not copied
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            # copy2 keeps mtimes: a fresh copy of pyproject.toml must not look newer than .venv's setup stamp
            shutil.copy2(ROOT / name, scratch / name, follow_symlinks=False)
    (scratch / ".venv").symlink_to(ROOT / ".venv")
    if subprocess.run(["make", "-q", "setup"], cwd=scratch).returncode != 0:
        raise SystemExit(f"readme_commands: `make setup` in {ROOT} is not up to date; run it there first")


def make_fixtures(scratch: Path) -> dict[str, str]:
    """What a user brings, made in the scratch dir. Returns {name: what it is}."""
    pite = str(ROOT / ".venv" / "bin" / "pite")
    gen = scratch / ".fixtures"
    subprocess.run([pite, "synth", "--n", "2", "--seed", "7", "--width", "640", "--height", "480", "--out",
                    str(gen / "large")], check=True, capture_output=True)
    subprocess.run([pite, "synth", "--n", "1", "--seed", "8", "--out", str(gen / "small")], check=True,
                   capture_output=True)
    shutil.copy(gen / "large" / "videos" / "synth-000000.mp4", scratch / "my.mp4")
    shutil.copy(gen / "large" / "videos" / "synth-000001.mp4", scratch / "clip.mp4")
    # a manifest of one row: each command that annotates it runs the production models on the CPU (~30 s a clip)
    shutil.copytree(gen / "small", scratch / "my")
    dvc = scratch / "tests" / "data" / "dvc" / "c2_merge_similar"
    shutil.copy(dvc / "gt.json", scratch / "val_2.json")
    shutil.copy(dvc / "log.jsonl", scratch / "log.jsonl")
    write_vtimellm(scratch)
    return {"my.mp4, clip.mp4": "generated 640x480 clips (pite synth --seed 7)",
            "my/manifest.jsonl": "a generated 256x256 clip with its boxes (pite synth --seed 8)",
            "val_2.json, log.jsonl": "tests/data/dvc/c2_merge_similar",
            "stage2.json, feats/": "two VTimeLLM stage-2 records, random 100x768 features"}


def write_vtimellm(scratch: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    (scratch / "feats").mkdir()
    records = []
    for i, text in enumerate(["a man opens a door", "a dog runs across a lawn"]):
        vid = f"v_{i}"
        np.save(scratch / "feats" / f"{vid}.npy", rng.normal(size=(100, 768)).astype(np.float16))
        records.append({"id": vid, "source": "internvid", "conversations": [
            {"from": "human", "value": "<video>\nWhat happens in the video, and when?"},
            {"from": "gpt", "value": f"From <s0> to <e0>, {text}."}],
            "meta": {"duration": 20.0, "token": {"<s0>": 2.0, "<e0>": 9.5}}})
    (scratch / "stage2.json").write_text(json.dumps(records))


def run_one(cmd: Command, scratch: Path, long: bool, timeout: float, env: dict) -> None:
    cmd.ran = run_text(cmd, long)
    t0 = time.perf_counter()
    # a session of its own: on a timeout the whole group goes (a local Ray, a head), not only bash
    proc = subprocess.Popen(["bash", "-c", cmd.ran], cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        cmd.rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        cmd.rc, out = 124, f"{out}\ntimed out after {timeout:.0f} s"
    cmd.seconds = round(time.perf_counter() - t0, 1)
    cmd.status = "ok" if cmd.rc == 0 else "failed"
    cmd.tail = [line for line in out.splitlines() if line.strip()][-6:]
    cmd.output = out


def quoted_command(commands: list[Command], start: str) -> Command | None:
    return next((c for c in commands if c.text.startswith(start)), None)


def check_claims(commands: list[Command], readme: str, scratch: Path | None, cotracker: bool) -> list[dict]:
    """Each QUOTES and SIZES claim: ok | failed (with what was seen) | pending (nothing ran) | skipped (its command
    was skipped, or the claim is for the other CoTracker3 case)."""
    flat = " ".join(readme.split())
    claims = []
    for start, quote in QUOTES:
        cmd = quoted_command(commands, start)
        claim = {"command": start, "quote": quote}
        if cmd is None or " ".join(quote.split()) not in flat:
            claim.update(status="failed", seen="the command or the quote is not in the README")
        elif cmd.status in ("skipped", "pending"):
            claim.update(status=cmd.status)
        else:
            found = " ".join(quote.split()) in " ".join(cmd.output.split())
            claim.update(status="ok" if found else "failed", seen="" if found else cmd.tail)
        claims.append(claim)
    for start, pattern, folder, with_cotracker in SIZES:
        claims.append(check_size(commands, readme, scratch, cotracker, start, pattern, folder, with_cotracker))
    return claims


def check_size(commands, readme, scratch, cotracker, start, pattern, folder, with_cotracker) -> dict:
    import re as regex

    cmd, match = quoted_command(commands, start), regex.search(pattern, readme)
    claim = {"command": start, "size_in_readme": None if match is None else f"{match.group(1)} MB", "path": folder}
    if cmd is None or match is None:
        return {**claim, "status": "failed", "seen": "the command or the size is not in the README"}
    if cmd.status in ("skipped", "pending") or scratch is None or (with_cotracker not in (None, cotracker)):
        return {**claim, "status": cmd.status if cmd.status != "ok" else "skipped"}
    size = sum(p.stat().st_size for p in (scratch / folder).rglob("*") if p.is_file()) / 2**20
    ok = 1 / 1.5 <= size / float(match.group(1)) <= 1.5
    return {**claim, "status": "ok" if ok else "failed", "seen": f"{size:.1f} MB"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--long", action="store_true", help="run make annotate/train/eval as printed and write 4.6 GB of "
                                                        "random real-size weights (~10 min more)")
    ap.add_argument("--list", action="store_true", help="classify only; run nothing")
    ap.add_argument("--scratch", default=None, help="scratch dir to use (must not exist; default: a temp dir, "
                                                    "removed afterwards)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one command may take")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    commands = extract(Path(args.readme).read_text())
    cotracker, free = has_cotracker(), port_free(*HEAD_ADDRESS)
    for cmd in commands:
        classify(cmd, args.long, cotracker, free)
    report = {"readme": args.readme, "mode": "long" if args.long else "quick"}
    if not args.list:
        report.update(run_all(commands, args))
    scratch = Path(report["scratch"]) if report.get("scratch") and Path(report["scratch"]).exists() else None
    report["claims"] = check_claims(commands, Path(args.readme).read_text(), scratch, cotracker)
    report["commands"] = [{k: v for k, v in asdict(c).items() if k != "output"} for c in commands]
    report["counts"] = {s: sum(c.status == s for c in commands) for s in ("ok", "failed", "skipped", "pending")}
    report["claims_failed"] = sum(c["status"] == "failed" for c in report["claims"])
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    # --list only reports the claims (a README of another project has none of ours); a run must keep them
    return 1 if report["counts"]["failed"] or (report["claims_failed"] and not args.list) else 0


def run_all(commands: list[Command], args) -> dict:
    t0 = time.perf_counter()
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="pite-readme-")) / "checkout"
    if scratch.exists():
        raise SystemExit(f"readme_commands: --scratch {scratch}: exists; give a folder that does not")
    scratch.mkdir(parents=True)
    # `pite head` records its head in the scratch dir, not in the user's /tmp/pite-head-UID (theirs stays untouched)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PITE_HEAD_STATE": str(scratch / ".pite-head" / "head.json")}
    try:
        make_scratch(scratch)
        fixtures = make_fixtures(scratch)
        for cmd in commands:
            if cmd.status == "pending":
                run_one(cmd, scratch, args.long, args.timeout, env)
                print(f"readme_commands: {cmd.status} {cmd.seconds:7.1f} s  README:{cmd.line}  {cmd.text[:90]}",
                      file=sys.stderr, flush=True)
    finally:
        if Path(env["PITE_HEAD_STATE"]).exists():  # a failed run can leave the README's head running
            subprocess.run([str(ROOT / ".venv" / "bin" / "pite"), "head", "stop"], env=env, capture_output=True)
        if not args.scratch:
            shutil.rmtree(scratch.parent, ignore_errors=True)
    return {"scratch": str(scratch), "fixtures": fixtures, "wall_s": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    sys.exit(main())
