"""The attempt ledger: which rows were in flight, in which stage, when a worker process died."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from annotate.storage import filesystem, is_url
from pipelines.files import write_atomic


class AttemptLedger:
    """The attempts in flight, as files in OUT/.attempts: one per chunk of rows an actor is processing, naming the
    rows and the stage it is running. A worker that dies leaves its file behind, so the retry of its batch can
    count how often each row was in flight at a death, and in which stage.

    Files, not a Ray actor: they outlive the worker and need no extra process; OUT is shared storage on a cluster.
    A run in a bucket keeps them there (`root` a URL): whole small objects, as every node can reach the bucket.
    A mark is filed under its first row's block of `rows_per_dir` rows (the job's shard), and a call reads only the
    blocks its rows can have been filed under (`look_back` blocks before its first: a chunk of up to batch_size
    rows may start in an earlier block), so its cost follows the rows in flight and the deaths among them, not the
    run's length.
    """

    def __init__(self, root: str, group: int = 0, rows_per_dir: int = 1 << 62, look_back: int = 1):
        self.store = BucketFiles(root) if is_url(root) else LocalFiles(root)
        self.group, self.rows_per_dir, self.look_back = group, rows_per_dir, look_back

    def deaths(self, rows: list[int]) -> dict[int, list[tuple[str, bool]]]:
        """row -> one (stage, alone) per earlier death with the row in flight; alone: it was the only row."""
        wanted = set(rows)
        found: dict[int, list[tuple[str, bool]]] = {r: [] for r in rows}
        if not rows:
            return found
        first, last = min(rows) // self.rows_per_dir, max(rows) // self.rows_per_dir
        blocks = range(max(0, first - self.look_back), last + 1)
        for path in (p for b in blocks for p in self.store.glob(f"b{b}", f"g{self.group}-*.json")):
            try:
                mark = json.loads(self.store.read(path))
            except (OSError, ValueError):
                continue  # removed or being replaced by a live worker right now: not a death
            in_flight = mark.get("rows", [])
            for r in in_flight:
                if r in wanted:
                    found[r].append((mark.get("stage") or "?", len(in_flight) == 1))
        return found

    def start(self, rows: list[int]) -> str:
        mark = self.store.new(f"b{min(rows) // self.rows_per_dir}", f"g{self.group}-{uuid.uuid4().hex}.json")
        self.at(mark, rows, "")
        return mark

    def at(self, mark: str, rows: list[int], stage: str) -> None:
        self.store.write(mark, json.dumps({"rows": rows, "stage": stage}))

    def clear(self, mark: str) -> None:
        self.store.remove(mark)


class LocalFiles:
    """Marks in a folder of OUT, each replaced whole (a reader never sees half of one, even after a death)."""

    def __init__(self, root: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def glob(self, folder: str, pattern: str) -> list[str]:
        return [str(p) for p in (self.root / folder).glob(pattern)]

    def new(self, folder: str, name: str) -> str:
        (self.root / folder).mkdir(exist_ok=True)
        return str(self.root / folder / name)

    def read(self, path: str) -> str:
        return Path(path).read_text()

    def write(self, path: str, text: str) -> None:
        write_atomic(path, text)

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)


class BucketFiles:
    """Marks as objects under a bucket URL: a PUT replaces an object whole, so no temporary name is needed."""

    def __init__(self, root: str):
        self.fs, self.root = filesystem(root)
        self.root = self.root.rstrip("/")

    def glob(self, folder: str, pattern: str) -> list[str]:
        return self.fs.glob(f"{self.root}/{folder}/{pattern}")

    def new(self, folder: str, name: str) -> str:
        return f"{self.root}/{folder}/{name}"

    def read(self, path: str) -> str:
        return self.fs.cat_file(path).decode()

    def write(self, path: str, text: str) -> None:
        self.fs.pipe_file(path, text.encode())

    def remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass  # already gone: cleared twice after a retry
