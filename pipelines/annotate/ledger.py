"""The attempt ledger: which rows were in flight, in which stage, when a worker process died."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from pipelines.files import write_atomic


class AttemptLedger:
    """The attempts in flight, as files in OUT/.attempts: one per chunk of rows an actor is processing, naming the
    rows and the stage it is running. A worker that dies leaves its file behind, so the retry of its batch can
    count how often each row was in flight at a death, and in which stage.

    Files, not a Ray actor: they outlive the worker and need no extra process; OUT is shared storage on a cluster.
    A mark is filed under its first row's block of `rows_per_dir` rows (the job's shard), and a call reads only the
    blocks its rows can have been filed under (`look_back` blocks before its first: a chunk of up to batch_size
    rows may start in an earlier block), so its cost follows the rows in flight and the deaths among them, not the
    run's length.
    """

    def __init__(self, root: str, group: int = 0, rows_per_dir: int = 1 << 62, look_back: int = 1):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.group, self.rows_per_dir, self.look_back = group, rows_per_dir, look_back

    def _dir(self, block: int) -> Path:
        return self.root / f"b{block}"

    def deaths(self, rows: list[int]) -> dict[int, list[tuple[str, bool]]]:
        """row -> one (stage, alone) per earlier death with the row in flight; alone: it was the only row."""
        wanted = set(rows)
        found: dict[int, list[tuple[str, bool]]] = {r: [] for r in rows}
        if not rows:
            return found
        first, last = min(rows) // self.rows_per_dir, max(rows) // self.rows_per_dir
        blocks = range(max(0, first - self.look_back), last + 1)
        for path in (p for b in blocks for p in self._dir(b).glob(f"g{self.group}-*.json")):
            try:
                mark = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # removed or being replaced by a live worker right now: not a death
            in_flight = mark.get("rows", [])
            for r in in_flight:
                if r in wanted:
                    found[r].append((mark.get("stage") or "?", len(in_flight) == 1))
        return found

    def start(self, rows: list[int]) -> Path:
        folder = self._dir(min(rows) // self.rows_per_dir)
        folder.mkdir(exist_ok=True)
        mark = folder / f"g{self.group}-{uuid.uuid4().hex}.json"
        self.at(mark, rows, "")
        return mark

    def at(self, mark: Path, rows: list[int], stage: str) -> None:
        # Replaced whole, so a reader never sees half a file even if the worker dies mid-write.
        write_atomic(mark, json.dumps({"rows": rows, "stage": stage}))

    def clear(self, mark: Path) -> None:
        mark.unlink(missing_ok=True)
