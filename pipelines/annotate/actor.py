"""The annotation actor: one clip's whole chain (decode → nouns → ground → segment → points → track → features).

One actor per clip chain is what a GPU cluster needs (docs/design.md, "Execution on a cluster"): every GPU stage
and the cheap CPU stages between them share one process holding `gpus_per_actor` GPUs, so a cluster of G GPUs runs
G / gpus_per_actor actors and decoded frames never cross the object store. Rows come in as manifest metadata (paths
or tar members); the actor decodes them in a thread pool of its own (`decode_threads`: PyAV releases the GIL while
decoding, so the model stages do not wait on one core) and returns only the samples' bytes (`outputs`).

Fault model: a stage that raises on a row turns the row into a reject (a stage that fails a whole batch is re-run
item by item). A worker that dies (segfault, OOM kill, a lost node) is restarted by Ray and its batch retried; the
attempt ledger (OUT/.attempts) records which rows were in flight, in which stage, when it died; those rows then
run one at a time, and a row is rejected once `max_attempts` deaths happened with it in flight, one at least with
it alone, so a poison row cannot loop forever and its batch-mates are not blamed.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from annotate.stage import one_line
from pipelines.annotate.faults import inject_faults, parse_faults
from pipelines.annotate.ledger import AttemptLedger
from pipelines.annotate.outputs import PreviewGate, outputs


class ClipChain:
    """The pool's actor: manifest rows in, one output row per input row out (also callable on a batch)."""

    def __init__(self, cfg, ledger_dir: str, sample_hash: str, decode_threads: int = 1):
        from annotate.pipeline import STAGE_NAMES, build_stage, stage_names

        self.cfg, self.sample_hash = cfg, sample_hash
        self.stages = [build_stage(n, cfg) for n in stage_names(cfg)]
        for s in self.stages:
            s.ready()
        threads = max(1, int(decode_threads))
        # One thread decodes in the caller: the embedded CPU path (a 1-CPU actor) stays a plain loop.
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None
        self.ledger = AttemptLedger(ledger_dir, rows_per_dir=cfg.rows_per_shard,
                                    look_back=-(-cfg.batch_size // cfg.rows_per_shard))
        self.faults = parse_faults(cfg.fault_injection, STAGE_NAMES)
        self.previews = PreviewGate()

    def run(self, batch: dict) -> dict:
        """The pool's call (pipelines/annotate/pool.py): a batch of manifest rows, as columns."""
        return self(batch)

    def ready(self) -> bool:
        """The pool's probe after a restart: answers once the models are loaded again."""
        return True

    def __call__(self, batch: dict) -> dict:
        items = items_from_rows(batch, self.cfg.seed)
        live = [it for it in items if it.ok]
        deaths = self.ledger.deaths([it.row for it in live])
        for it in live:
            self._convict(it, deaths[it.row])
        live = [it for it in live if it.ok]
        suspects = [it for it in live if deaths[it.row]]
        clean = [it for it in live if not deaths[it.row]]
        # Rows that were in flight when a worker died run one at a time, so the next death names its row.
        for chunk in ([clean] if clean else []) + [[it] for it in suspects]:
            rows = [it.row for it in chunk]
            mark = self.ledger.start(rows)
            for stage in self.stages:
                self.ledger.at(mark, rows, stage.name)
                self._run_stage(stage, chunk)
            self.ledger.clear(mark)
        # Attempts per row: this one plus every worker death with the row in flight (stats count the retries).
        attempts = {it.row: 1 + len(deaths.get(it.row, ())) for it in items}
        return outputs(items, self.cfg, self.sample_hash, attempts, self.previews)

    def _convict(self, item, died: list[tuple[str, bool]]) -> None:
        alone = [stage for stage, was_alone in died if was_alone]
        # A death with several rows in flight only makes them suspects; one with the row alone proves it.
        if alone and len(died) >= self.cfg.max_attempts:
            stage = Counter(alone).most_common(1)[0][0]
            stage = stage if stage != "?" else self.stages[0].name
            item.reject(stage, f"poison row: the worker process died {len(died)} times with this row in flight, "
                               f"{len(alone)} of them running stage {stage} on it alone (a crash or out of memory; "
                               f"max_attempts={self.cfg.max_attempts})")

    def _run_stage(self, stage, items) -> None:
        live = [it for it in items if it.ok]
        if not live:
            return
        try:
            inject_faults(self.faults, stage.name, live)
            self._process(stage, live)
        except Exception as exc:  # noqa: BLE001
            # Stages reject a bad item themselves; one that fails a whole batch (a batched model call) is run again
            # item by item, so only the item that fails alone is rejected, and an exception never ends the job.
            if len(live) == 1:
                live[0].reject(stage.name, one_line(exc))
                return
            for it in live:
                if it.ok:
                    try:
                        inject_faults(self.faults, stage.name, [it])
                        self._process(stage, [it])
                    except Exception as exc_one:  # noqa: BLE001 - any failure of one item is that item's reject
                        it.reject(stage.name, one_line(exc_one))

    def _process(self, stage, items) -> None:
        if stage.threaded and self.pool is not None and len(items) > 1:
            # Each clip decoded in its own thread; the stage's own per-item guard turns a failure into a reject.
            list(self.pool.map(lambda it: stage.process([it]), items))
        else:
            stage.process(items)


def items_from_rows(batch: dict, seed: int) -> list:
    """Manifest records (a numpy batch) -> ClipItems; a record that cannot become an item is already a reject."""
    from annotate.pipeline import make_item
    from pipelines.manifest import ManifestRow

    items = []
    for i in range(len(batch["row"])):
        rec = {k: _py(v[i]) for k, v in batch.items()}
        try:
            r = ManifestRow.from_record(rec)
            it = make_item(r.row, r.video_id, r.video, r.caption, seed, start=r.start, end=r.end,
                           events=r.events, boxes=r.boxes, gt=r.gt, tar_member=r.tar_member)
        except Exception as exc:  # noqa: BLE001 - a row that cannot become an item is still one reject
            it = make_item(int(rec["row"]), str(rec.get("video_id") or ""), "", "", seed)
            it.reject("manifest", one_line(exc))
        else:
            if r.error:
                it.reject("manifest", r.error)
        items.append(it)
    return items


def _py(v):
    return v.item() if isinstance(v, np.generic) else v
