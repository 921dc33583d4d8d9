"""One run at a time per output dir or bucket URL: OUT/.run.lock names the live run; a second one is refused.

Two runs writing the same shards would each rename their files over the other's and clear the other's attempt
ledger, so a second submission of the same command while the first is live is refused with a one-line error. A
lock whose process is gone (same host) is taken over; one from another host cannot be checked from here, so the
message says how to clear it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from annotate.errors import ConfigError

LOCK_NAME = ".run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # being written right now, or unreadable: treated as a live holder below


def _take(create, read, remove, where, path) -> dict:
    """Both locks' loop: `create(me)` makes the lock only if absent (False when it exists); a holder whose process
    is gone on this host is removed and the lock taken; a live one is a one-line ConfigError. Returns `me`."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        if create(me):
            return me
        held = read()
        if held.get("host") == me["host"] and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
            remove()  # its run died without cleaning up: take over
            continue
        who = (f"pid {held.get('pid')} on {held.get('host')} since {held.get('since')}" if held else "another run")
        raise ConfigError(f"out: {where} is being written by another run ({who}); wait for it to finish, or "
                          f"choose another out= (if no such run is alive, delete {path})")
    raise ConfigError(f"out: could not take {path}: another run keeps replacing it")


@contextmanager
def run_lock(out: Path):
    path = Path(out) / LOCK_NAME

    def create(me: dict) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True

    me = _take(create, lambda: _holder(path), lambda: path.unlink(missing_ok=True), out, path)
    try:
        yield path
    finally:
        if _holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def _object_holder(fs, key: str) -> dict:
    try:
        return json.loads(fs.cat_file(key))
    except (OSError, ValueError):
        return {}  # gone meanwhile, or unreadable


@contextmanager
def bucket_lock(fs, key: str, where: str):
    """The lock of a run in a bucket: an object created only if absent (S3's If-None-Match, the one atomic step a
    bucket offers). A lock left by a killed run on this host whose process is gone is taken over, as above."""

    def create(me: dict) -> bool:
        try:
            fs.pipe_file(key, json.dumps(me).encode(), mode="create")
        except FileExistsError:
            return False
        return True

    me = _take(create, lambda: _object_holder(fs, key), lambda: fs.rm_file(key), where, f"{where}/{LOCK_NAME}")
    try:
        yield key
    finally:
        if _object_holder(fs, key).get("pid") == me["pid"]:
            fs.rm_file(key)
