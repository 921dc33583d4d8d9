"""The job's shard writer: finished shards written in a thread of its own, behind a bounded queue.

A shard is tens of MB and three fsynced renames; written inline, no row would be taken from the actors meanwhile.
Here the driver hands a finished shard over and goes on; it waits only when `QUEUE` shards are already waiting
(backpressure instead of memory). The samples' member bytes are written as the actor made and validated them: the
index row comes from the `json` member alone, nothing is decoded or encoded again.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

from annotate.errors import PiteError
from annotate.schema import MEMBERS
from annotate.stage import one_line
from pipelines.annotate.outputs import member_column

QUEUE = 2  # shards waiting for the writer; the driver holds at most this many finished shards beyond the writer's


def write_shard(writer_cls, out: Path, shard: int, recs: list[dict], cfg,
                quality_columns) -> tuple[int, list, list, list]:
    """One shard's tar, index and rejects from its output rows; returns (samples written, [(stage, reason,
    video_id)], [quality figures of each sample written], [(objects, [confidence of each]) of each sample]) where a
    sample the shard cannot hold (its key twice) became a reject."""
    rejects, figures = [], []
    with writer_cls(out, shard, quality_columns=quality_columns, num_frames=cfg.num_frames,
                    num_points=cfg.num_points) as writer:
        for r in recs:
            if r["ok"] and len(r["m_json"]):
                members = {m: bytes(r[member_column(m)]) for m in MEMBERS}
                quality = json.loads(r["quality"])
                try:
                    writer.add_members(members, quality=quality)
                    figures.append(quality)
                    continue
                except PiteError as exc:
                    stage, msg = "write", one_line(exc)
            else:
                stage, msg = r["stage"] or "unknown", r["error"] or "no sample produced"
            writer.reject(r["video_id"], int(r["row"]), stage, msg)
            rejects.append((stage, msg, r["video_id"]))
        n = writer.n_samples
        shapes = [(r["n_objects"], r["confidence"]) for r in writer.index_rows]
    return n, rejects, figures, shapes


class ShardSink:
    """`put(shard, rows)` returns once the shard is queued; `close()` waits for the last one. A writer error is
    raised in the driver at its next `put` or at `close`, and the shard it hit stays absent (redone on resume)."""

    def __init__(self, out: Path, cfg, quality_columns, on_written, publish=None):
        from pipelines.shards import ShardWriter

        self.out, self.cfg, self.quality_columns = out, cfg, quality_columns
        self.on_written = on_written  # (samples written, rejects, figures) -> None, called in the writer thread
        self.publish = publish  # shard -> None: after a shard is whole in `out` (an upload to the run's bucket)
        self.writer_cls = ShardWriter
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE)
        self.error: BaseException | None = None
        self.busy = 0.0  # seconds the writer thread spent writing
        self.blocked = 0.0  # seconds the driver waited for room in the queue (the writer was the bottleneck)
        self.thread = threading.Thread(target=self._work, name="shard-writer", daemon=True)
        self.thread.start()

    def put(self, shard: int, recs: list[dict]) -> None:
        self._raise()
        t0 = time.perf_counter()
        self.queue.put((shard, recs))
        self.blocked += time.perf_counter() - t0

    def close(self, quiet: bool = False) -> None:
        """Write what is queued, then stop the thread; `quiet` (the run is ending on another error): do not raise
        the writer's own error over it. The shards it wrote are whole; one it failed on stays absent."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if not quiet:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if self.error is not None:
                continue  # drain, so the driver never blocks on a full queue behind a dead writer
            t0 = time.perf_counter()
            try:
                # on_written touches only the tally's writer-side fields: the driver thread never writes them
                written = write_shard(self.writer_cls, self.out, job[0], job[1], self.cfg, self.quality_columns)
                if self.publish is not None:
                    self.publish(job[0])
                self.on_written(*written)
            except BaseException as exc:  # noqa: BLE001 - handed to the driver, which ends the run with it
                self.error = exc
            self.busy += time.perf_counter() - t0
