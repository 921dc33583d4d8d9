"""`pite annotate --config CONFIG [input=MANIFEST] [out=DIR] [key=value ...]`: a manifest in, PiTe shards out.

Ray Data runs the stages: rows are read from per-shard input files, the stages run as `map_batches` actors (one
actor per group of consecutive stages that want the same device, with the resources the stages declare), and the
driver writes each shard (tar + index + rejects, renamed together) as soon as its last row arrives. Rows travel one
per block (the actors still get `batch_size` per call) and in order, so results stream batch by batch, a shard's
rows arrive together and memory stays bounded by a few shards.

Fault model: a stage that raises on a row turns the row into a reject (a stage that fails a whole batch is re-run
item by item). A worker that dies (segfault, OOM kill) is restarted by Ray and its batch retried; an attempt ledger
in OUT/.attempts records which rows were in flight, in which stage, when a worker died; those rows then run one at a
time, and a row is rejected once `max_attempts` deaths happened with it in flight, one at least with it alone, so a
poison row cannot loop forever and its batch-mates are not blamed. Resume: shards whose three files exist are kept
after checking that the manifest and the config hash match OUT/run.json; the ledger starts empty on every run.

Console: the job sets RAY_BACKEND_LOG_LEVEL=fatal unless it is set (Ray's C++ core would print an ERROR line per
actor that Ray Data starts, ray-project/ray#53727; set it to `info` for Ray's full C++ logs). Worker deaths still
show as "(raylet)" lines, and a local Ray started by the job is shut down before the closing summary is printed.

On a cluster: `ray job submit --working-dir . -- python -m pipelines.annotate --config ... input=/abs out=/abs`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError, PiteError
from annotate.schema import MEMBERS
from annotate.stage import one_line
from pipelines.config import config_hash, load_config, save_config, to_dict

QUALITY_COLUMNS = ("ground_recall", "box_iou", "mask_iou", "delta_avg", "oa", "aj")


@dataclass
class SynthSettings:
    n: int = 0  # > 0: generate this many synthetic clips into `out` first when its manifest is missing
    seed: int = 0
    out: str = "data/synth-demo"
    workers: int = 0  # processes rendering clips (0: one per CPU core); the clips do not depend on it


@dataclass
class AnnotateJobConfig(AnnotateConfig):
    name: str = "annotate"  # run name: the default output dir is runs/annotate/<name>
    input: str = ""  # manifest (.jsonl/.csv/.parquet) or video2dataset tars, brace patterns allowed
    out: str = ""  # run dir; on a cluster an absolute path on shared storage
    rows_per_shard: int = 64
    batch_size: int = 4  # clips per map_batches batch (keep small: frames travel between actors)
    cpu_workers: int = 0  # actors per CPU stage group; 0 = one per CPU of the cluster
    gpu_workers: int = 1  # actors per GPU stage group
    max_attempts: int = 2  # worker deaths with a row in flight (one at least with it alone) before it is a reject
    ray_address: str = ""  # "" = the cluster of `ray job submit`, else a local Ray
    num_cpus: int = 0  # local Ray only: CPUs to use (0 = all)
    report_samples: int = 12  # rows drawn in report.html
    progress: bool = True
    synth: SynthSettings = field(default_factory=SynthSettings)
    # Stage names to fail on purpose (tests of the fault model): "<stage>:<video_id>:raise|exit".
    fault_injection: list[str] = field(default_factory=list)


def resolve_out(cfg: AnnotateJobConfig) -> Path:
    return Path(cfg.out or f"runs/annotate/{cfg.name}")


# --- the worker side -------------------------------------------------------------------------------------------


class _Ledger:
    """The attempts in flight, as files in OUT/.attempts: one per chunk of rows a worker is processing, naming the
    rows and the stage it is running. A worker that dies leaves its file behind, so the retry of its batch can
    count how often each row was in flight at a death, and in which stage.

    Files, not a Ray actor: they outlive the worker and need no extra process; OUT is shared storage on a cluster.
    """

    def __init__(self, root: str, group: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.group = group

    def deaths(self, rows: list[int]) -> dict[int, list[tuple[str, bool]]]:
        """row -> one (stage, alone) per earlier death with the row in flight; alone: it was the only row."""
        wanted = set(rows)
        found: dict[int, list[tuple[str, bool]]] = {r: [] for r in rows}
        for path in self.root.glob(f"g{self.group}-*.json"):
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
        mark = self.root / f"g{self.group}-{uuid.uuid4().hex}.json"
        self.at(mark, rows, "")
        return mark

    def at(self, mark: Path, rows: list[int], stage: str) -> None:
        # Replaced whole (write + rename), so a reader never sees half a file even if the worker dies mid-write.
        tmp = mark.with_name(mark.stem + ".tmp")
        tmp.write_text(json.dumps({"rows": rows, "stage": stage}))
        os.replace(tmp, mark)

    def clear(self, mark: Path) -> None:
        mark.unlink(missing_ok=True)


class StageGroup:
    """A Ray Data actor running consecutive stages; the first builds items from rows, the last emits outputs."""

    def __init__(self, cfg: AnnotateJobConfig, names: list[str], index: int, last: bool, ledger_dir: str,
                 sample_hash: str):
        from annotate.pipeline import build_stage

        self.cfg, self.first, self.last, self.sample_hash = cfg, index == 0, last, sample_hash
        self.stages = [build_stage(n, cfg) for n in names]
        for s in self.stages:
            s.setup()
            s._ready = True
        self.ledger = _Ledger(ledger_dir, index)
        self.faults = _parse_faults(cfg.fault_injection, names)

    def __call__(self, batch: dict) -> dict:
        items = self._items(batch)
        live = [it for it in items if it.ok]
        deaths = self.ledger.deaths([it.row for it in live])
        for it in live:
            died = deaths[it.row]
            alone = [stage for stage, was_alone in died if was_alone]
            # A death with several rows in flight only makes them suspects; one with the row alone proves it.
            if alone and len(died) >= self.cfg.max_attempts:
                stage = Counter(alone).most_common(1)[0][0]
                stage = stage if stage != "?" else self.stages[0].name
                it.reject(stage, f"poison row: the worker process died {len(died)} times with this row in flight, "
                                 f"{len(alone)} of them running stage {stage} on it alone (a crash or out of memory; "
                                 f"max_attempts={self.cfg.max_attempts})")
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
        return _outputs(items, self.cfg, self.sample_hash) if self.last else {"item": _object_array(items)}

    def _items(self, batch: dict):
        if not self.first:
            return list(batch["item"])
        from annotate.pipeline import make_item
        from pipelines.manifest import ManifestRow

        items = []
        n = len(batch["row"])
        for i in range(n):
            rec = {k: _py(v[i]) for k, v in batch.items()}
            try:
                r = ManifestRow.from_record(rec)
                it = make_item(r.row, r.video_id, r.video, r.caption, self.cfg.seed, start=r.start, end=r.end,
                               events=r.events, boxes=r.boxes, gt=r.gt, tar_member=r.tar_member)
            except Exception as exc:  # noqa: BLE001 - a row that cannot become an item is still one reject
                it = make_item(int(rec["row"]), str(rec.get("video_id") or ""), "", "", self.cfg.seed)
                it.reject("manifest", one_line(exc))
            else:
                if r.error:
                    it.reject("manifest", r.error)
            items.append(it)
        return items

    def _run_stage(self, stage, items) -> None:
        live = [it for it in items if it.ok]
        if not live:
            return
        try:
            self._inject_faults(stage.name, live)
            stage.process(live)
        except Exception as exc:  # noqa: BLE001
            # Stages reject a bad item themselves; one that fails a whole batch (a batched model call) is run again
            # item by item, so only the item that fails alone is rejected, and an exception never ends the job.
            if len(live) == 1:
                live[0].reject(stage.name, one_line(exc))
                return
            for it in live:
                if it.ok:
                    try:
                        self._inject_faults(stage.name, [it])
                        stage.process([it])
                    except Exception as exc_one:  # noqa: BLE001 - any failure of one item is that item's reject
                        it.reject(stage.name, one_line(exc_one))

    def _inject_faults(self, stage: str, items) -> None:
        for it in items:
            kind = self.faults.get((stage, it.video_id))
            if kind == "exit":
                os._exit(1)  # simulates a decoder segfault / OOM kill of the worker process
            if kind == "raise":
                raise RuntimeError(f"injected fault in stage {stage} (row {it.row})")


def _parse_faults(specs: list[str], names) -> dict[tuple[str, str], str]:
    """"<stage>:<video_id>:raise|exit" for the stages in `names` (a video_id may hold colons: the kind is last)."""
    from annotate.pipeline import STAGE_NAMES

    faults = {}
    for spec in specs:
        stage, _, rest = spec.partition(":")
        video_id, _, kind = rest.rpartition(":")
        if stage not in STAGE_NAMES or kind not in ("raise", "exit") or not video_id:
            raise ConfigError(f"fault_injection: {spec!r}: expected <stage>:<video_id>:raise|exit with a stage "
                              f"among {', '.join(STAGE_NAMES)}")
        if stage in names:
            faults[(stage, video_id)] = kind
    return faults


def _outputs(items, cfg: AnnotateJobConfig, sample_hash: str) -> dict:
    """Serialise each item as sample members (or a reject) + its index figures, timings and preview.

    Every item leaves as one output row: a failure while building its sample makes it a reject, and a failure of
    the extras (quality against ground truth, preview picture) only drops that extra, noted in `note`.
    """
    cols: dict[str, list] = defaultdict(list)
    for it in items:
        members, quality, preview, note = {}, {}, b"", ""
        if it.ok:
            try:
                members = _sample_members(it, cfg, sample_hash)
            except Exception as exc:  # noqa: BLE001 - a sample that cannot be built is a reject, never a crash
                it.reject(getattr(exc, "stage", "assemble"), one_line(exc))
                members = {}
        if it.ok and it.gt:
            try:
                from annotate.quality import clip_quality

                quality = clip_quality(it, cfg)
            except Exception as exc:  # noqa: BLE001 - ground truth only feeds the report
                note = f"quality: {one_line(exc)}"
        if it.ok and it.row < cfg.report_samples:
            try:
                preview = _preview(it)
            except Exception as exc:  # noqa: BLE001 - a picture for the report, not part of the sample
                note = (note + "; " if note else "") + f"preview: {one_line(exc)}"
        cols["row"].append(it.row)
        cols["video_id"].append(it.video_id)
        cols["ok"].append(it.ok)
        cols["stage"].append(it.error[0] if it.error else "")
        cols["error"].append(it.error[1] if it.error else "")
        for m in MEMBERS:
            cols["m_" + m.replace(".", "_")].append(members.get(m, b""))
        cols["quality"].append(json.dumps(quality))
        cols["timings"].append(json.dumps(it.timings))
        cols["preview"].append(preview)
        cols["note"].append(note)
    return {k: (np.array(v) if k in ("row", "ok") else _object_array(v)) for k, v in cols.items()}


def _sample_members(item, cfg: AnnotateJobConfig, sample_hash: str) -> dict[str, bytes]:
    from annotate.assemble import assemble
    from annotate.schema import validate_sample

    sample = assemble(item, cfg, sample_hash)
    validate_sample(sample, num_frames=cfg.num_frames, num_points=cfg.num_points)
    return sample.to_members()


def _preview(item) -> bytes:
    from annotate.draw import draw_frame, encode_png, grid
    from annotate.track import read_off_samples

    clip = item.clip
    g0 = item.groundings[0]
    on_frame = [i for i, g in enumerate(item.groundings) if g.track_frame == g0.track_frame]
    labels = [item.phrases[item.groundings[i].phrase_index].text for i in on_frame]
    first = draw_frame(clip.track_frames[g0.track_frame], boxes=np.stack([item.groundings[i].box for i in on_frame]),
                       masks=[item.masks[i] for i in on_frame], labels=labels)
    traj, vis = read_off_samples(item.tracks, item.track_vis, clip.track_times, clip.sample_times, size=clip.size)
    tiles = [first]
    for t in (len(clip.sample_times) // 2, len(clip.sample_times) - 1):
        tiles.append(draw_frame(clip.sample_frames[t], tracks=traj, vis=vis, t=t))
    return encode_png(grid(tiles, cols=3))


def _read_input_files(batch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in batch.column("path").to_pylist()])


def _object_array(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


# --- the driver ------------------------------------------------------------------------------------------------

# Settings that do not change the content of a sample: left out of the config hash (the samples' provenance and the
# resume check), so they may differ on resume. max_attempts and fault_injection only decide which rows are rejects.
NOT_HASHED = ("input", "out", "progress", "ray_address", "num_cpus", "cpu_workers", "gpu_workers", "report_samples",
              "synth", "name", "batch_size", "max_attempts", "fault_injection")


def prepare_input(cfg: AnnotateJobConfig, out: Path) -> tuple[list[int], dict[int, int], str, int]:
    """Split the manifest into per-shard input files (once); returns all shard ids, rows per shard, config hash, rows.

    On resume (OUT/run.json exists) nothing is re-read: the manifest's fingerprint and the config hash must match
    those of the run being resumed, or it is a ConfigError that names what differs.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.manifest import RECORD_SCHEMA_FIELDS, expand_inputs, fingerprint, iter_manifest
    from pipelines.shards import list_done_shards, list_partial_shards

    fp = fingerprint(expand_inputs(cfg.input))
    run_file = out / "run.json"
    chash = config_hash(cfg, exclude=NOT_HASHED)
    if run_file.exists():
        try:
            prev = json.loads(run_file.read_text())
            counts = {int(k): int(v) for k, v in prev["rows_per_shard_file"].items()}
            rows = int(prev["rows"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"out: {run_file} is unreadable ({one_line(exc)}); delete {out} or choose another "
                              f"out=") from None
        if prev.get("manifest") != fp:
            raise ConfigError(f"out: {out} holds a run of another manifest (or the manifest changed since); "
                              f"choose another out= or delete it")
        if prev.get("config_hash") != chash:
            raise ConfigError(f"out: {out} holds a run of another config (hash {prev.get('config_hash')}, now "
                              f"{chash}; see its config.yaml); choose another out= or delete it")
        if prev.get("rows_per_shard") != cfg.rows_per_shard:  # also in the hash; said plainly here
            raise ConfigError(f"out: {out} was split with rows_per_shard={prev.get('rows_per_shard')}")
        return sorted(counts), counts, chash, rows
    if list_done_shards(out) or list_partial_shards(out):
        raise ConfigError(f"out: {out} holds shards but no run.json, so they cannot be checked against this "
                          f"manifest and config; choose another out= or delete it")
    schema = pa.schema([(n, getattr(pa, t)()) for n, t in RECORD_SCHEMA_FIELDS])
    in_dir = out / "input"
    in_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    buf: list[dict] = []
    total = 0

    def flush(shard: int) -> None:
        pq.write_table(pa.Table.from_pylist(buf, schema=schema), in_dir / f"pite-{shard:06d}.parquet")
        counts[shard] = len(buf)
        buf.clear()

    for r in iter_manifest(cfg.input):
        shard = r.row // cfg.rows_per_shard
        if buf and buf[-1]["row"] // cfg.rows_per_shard != shard:
            flush(shard - 1)
        buf.append(r.to_record())
        total += 1
    if buf:
        flush(buf[-1]["row"] // cfg.rows_per_shard)
    # run.json goes last and whole (write + rename): once it exists, every input file it lists is complete.
    _write_atomic(run_file, json.dumps({"manifest": fp, "config_hash": chash, "rows": total,
                                        "rows_per_shard": cfg.rows_per_shard,
                                        "rows_per_shard_file": {str(k): v for k, v in counts.items()}}, indent=1))
    return sorted(counts), counts, chash, total


def run(cfg: AnnotateJobConfig) -> dict:
    """Annotate `cfg.input` into `resolve_out(cfg)`; returns the stats (also written to OUT/stats.json).

    Uses the Ray that is already initialised in this process if any (a notebook, a test), else connects to the
    cluster of `ray job submit` (RAY_ADDRESS) or `cfg.ray_address`, else starts a local Ray of its own, which it
    shuts down at the end.
    """
    import ray

    from annotate.pipeline import STAGE_NAMES, build_stage, group_resources, group_stages
    from pipelines.shards import ShardWriter, list_done_shards, remove_partial

    t_start = time.perf_counter()
    out = resolve_out(cfg)
    _check_settings(cfg)
    _maybe_synthesize(cfg)
    out.mkdir(parents=True, exist_ok=True)
    shards, counts, chash, total = prepare_input(cfg, out)
    save_config(cfg, out / "config.yaml")  # after the resume check: a mismatching run keeps its own config.yaml
    remove_partial(out)
    ledger = out / ".attempts"
    shutil.rmtree(ledger, ignore_errors=True)  # deaths of an earlier (killed) run are not this run's poison rows
    done = set(list_done_shards(out))
    pending = [s for s in shards if s not in done]
    lost = [s for s in pending if not (out / "input" / f"pite-{s:06d}.parquet").is_file()]
    if lost:
        raise ConfigError(f"out: {out}/input/pite-{lost[0]:06d}.parquet is missing, so shard {lost[0]} cannot be "
                          f"redone; delete {out} (or choose another out=) and run again")
    (out / "stats.json").unlink(missing_ok=True)  # written last: its presence marks a finished run

    # Samples carry the hash of the stage settings only, as `pite annotate-clip` writes it: a clip gives the same
    # sample either way, and job settings (shard size, workers) do not change its bytes.
    from pipelines.annotate_clip import stage_config_hash

    sample_hash = stage_config_hash(cfg)
    # Plan the actor groups from the stages' declared resources (built here without setup: no weights loaded).
    probe_stages = [build_stage(n, cfg) for n in STAGE_NAMES]
    groups = group_stages(probe_stages)

    t_ray = time.perf_counter()
    started_ray = _init_ray(cfg) if pending else False  # a finished run re-run only rewrites its stats
    ray_startup = time.perf_counter() - t_ray
    try:
        written, rejects_by_stage, reasons = 0, Counter(), Counter()
        stage_seconds: Counter = Counter()
        quality_sums: dict[str, list[float]] = defaultdict(list)
        notes: list[str] = []
        previews: list[tuple[int, str, bytes]] = []
        prev_counts = _counts_from_done(out, sorted(done))
        t_run = time.perf_counter()
        first_output = None  # seconds until the first row came back: actor start-up and model loading
        if pending:
            with _data_context():
                ds = _build_dataset(cfg, out, pending, groups, group_resources, str(ledger), sample_hash)
                bar = _progress(cfg, sum(counts[s] for s in pending))
                # Rows arrive in order, so at most a shard or two is buffered. Keyed by row: a row that Ray hands
                # over twice (a retried task) is kept once.
                buffers: dict[int, dict[int, dict]] = defaultdict(dict)
                finished: set[int] = set()
                for rec in ds.iter_rows():
                    if first_output is None:
                        first_output = time.perf_counter() - t_run
                    row = int(rec["row"])
                    shard = row // cfg.rows_per_shard
                    if shard in finished or row in buffers[shard]:
                        continue
                    buffers[shard][row] = rec
                    bar.update(1)
                    if len(buffers[shard]) < counts[shard]:
                        continue
                    recs = [r for _, r in sorted(buffers.pop(shard).items())]
                    finished.add(shard)
                    w, rj = _write_shard(ShardWriter, out, shard, recs, cfg)
                    written += w
                    for r in recs:
                        for k, v in json.loads(r["timings"]).items():
                            stage_seconds[k] += v
                        if r["note"]:
                            notes.append(f"row {int(r['row'])} ({r['video_id']}): {r['note']}")
                        if not r["ok"] or not r["m_json"]:
                            continue
                        for k, v in json.loads(r["quality"]).items():
                            if v is not None and np.isfinite(v):
                                quality_sums[k].append(v)
                        if r["preview"] is not None and len(r["preview"]):
                            previews.append((int(r["row"]), r["video_id"], bytes(r["preview"])))
                    for stage, msg in rj:
                        rejects_by_stage[stage] += 1
                        reasons[f"{stage}: {_reason_class(msg)}"] += 1
                bar.close()
            missing = {s: counts[s] - len(b) for s, b in buffers.items() if b}
            if missing:
                raise PiteError(f"rows missing from shards {sorted(missing)} after the run: the job is incomplete; "
                                f"re-run the same command to redo them")
        run_seconds = time.perf_counter() - t_run

        stats = _stats(cfg, out, total, written, rejects_by_stage, reasons, stage_seconds, quality_sums,
                       prev_counts, run_seconds, ray_startup, time.perf_counter() - t_start, pending, chash)
        stats["notes"] = notes[:50]
        stats["seconds"]["first_output"] = None if first_output is None else round(first_output, 3)
        if stats["written"] + stats["rejected"] != total:  # every row a sample or a reject, never lost or twice
            raise PiteError(f"{stats['written']} samples + {stats['rejected']} rejects != {total} input rows in "
                            f"{out}: the run is inconsistent (was a shard file replaced by hand?)")
        from pipelines.report import write_report

        write_report(out, stats, previews)
        shutil.rmtree(ledger, ignore_errors=True)  # every row is a sample or a reject now: nothing to retry
        _write_atomic(out / "stats.json", json.dumps(stats, indent=1, default=str))  # last: marks the run complete
    finally:
        if started_ray:
            # Our own Ray goes down before the summary is printed, so its late messages do not follow it.
            ray.shutdown()
    return stats


def _check_settings(cfg: AnnotateJobConfig) -> None:
    """Settings a worker would trip over, as one-line ConfigErrors before anything starts."""
    from annotate.pipeline import STAGE_NAMES

    for key in ("rows_per_shard", "batch_size", "max_attempts", "gpu_workers"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    for key in ("cpu_workers", "num_cpus", "report_samples"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {getattr(cfg, key)}")
    _parse_faults(cfg.fault_injection, STAGE_NAMES)


def _init_ray(cfg: AnnotateJobConfig) -> bool:
    """Connect to / start Ray unless this process already did; True when this call did (and so shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    # Ray Data hands every actor its function through the object store and allows restarts, so Ray's C++ core
    # logs an ERROR line per actor about it (ray-project/ray#53727); worker deaths still reach the console as
    # "(raylet)" messages, and every row's fate is in rejects/. RAY_BACKEND_LOG_LEVEL=info brings the C++ logs back.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs: dict = dict(logging_level="ERROR", log_to_driver=False)
    if cfg.ray_address:
        kwargs["address"] = cfg.ray_address
    elif not os.environ.get("RAY_ADDRESS"):  # not under `ray job submit`: a local Ray of our own, never another's
        kwargs.update(address="local", num_cpus=cfg.num_cpus or None, include_dashboard=False)
    ray.init(**kwargs)
    return True


@contextmanager
def _data_context():
    """Ray Data settings of this job, restored afterwards (a notebook or test may go on using Ray Data)."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start,
             ctx.target_max_block_size)
    ctx.execution_options.preserve_order = True  # rows in order: a shard completes before the next, fixed order
    ctx.enable_progress_bars = False  # ours counts rows; Ray's would interleave with it
    ctx.print_on_execution_start = False
    # One row per block: rows stream out of the actors batch by batch (smooth progress, small objects) instead of
    # a shard-sized block at a time; the actors still get `batch_size` rows per call.
    ctx.target_max_block_size = 1
    log_once("ray_data_progress_manager_disabled")  # marks Ray Data's "Progress bars disabled" notice as shown
    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ != "SessionFileHandler"]
    levels = [h.level for h in console]
    for h in console:  # "execution finished" and other INFO lines stay in Ray Data's log file only
        h.setLevel(max(h.level, logging.WARNING))
    try:
        yield ctx
    finally:
        (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start,
         ctx.target_max_block_size) = saved
        for h, level in zip(console, levels):
            h.setLevel(level)


def _build_dataset(cfg: AnnotateJobConfig, out: Path, pending: list[int], groups, group_resources, ledger: str,
                   sample_hash: str):
    import ray

    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    # The driver lists the per-shard input files; 0-CPU tasks read them. Ray's own read_parquet is avoided on
    # purpose: its file-listing and read tasks take a CPU each, and on a cluster whose CPUs all hold stage
    # actors they would wait forever (as would repartition's tasks).
    # Their number in flight is capped: a 0-CPU task is never held back by the scheduler, so without a cap Ray
    # starts one worker process per input file at once (measured: a 512-row run warned of 11x its start-up
    # concurrency). A few readers keep the stage actors fed; each reads one small parquet file.
    files = [{"path": str(out / "input" / f"pite-{s:06d}.parquet")} for s in pending]
    readers = max(1, min(len(files), max(2, cluster_cpus)))
    ds = ray.data.from_items(files, override_num_blocks=len(files)).map_batches(
        _read_input_files, batch_size=1, num_cpus=0, batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=readers))
    # CPUs left for the CPU groups once every GPU actor holds its CPUs, shared among those groups.
    gpu_cpus = sum(group_resources(g).num_cpus * cfg.gpu_workers for g in groups if group_resources(g).num_gpus)
    n_cpu_groups = sum(1 for g in groups if not group_resources(g).num_gpus)
    cpu_share = max(1.0, (cluster_cpus - gpu_cpus) / max(1, n_cpu_groups))
    for gi, group in enumerate(groups):
        res = group_resources(group)
        gpu = res.num_gpus > 0
        workers = cfg.gpu_workers if gpu else (cfg.cpu_workers or max(1, int(cpu_share // max(res.num_cpus, 1))))
        ds = ds.map_batches(
            StageGroup, fn_constructor_args=(cfg, [s.name for s in group], gi, gi == len(groups) - 1, ledger,
                                             sample_hash),
            batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=res.num_cpus, num_gpus=res.num_gpus or None, zero_copy_batch=True,
        )
    return ds


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_shard(writer_cls, out: Path, shard: int, recs: list[dict], cfg: AnnotateJobConfig):
    from annotate.schema import Sample

    rejects = []
    with writer_cls(out, shard, quality_columns=QUALITY_COLUMNS, num_frames=cfg.num_frames,
                    num_points=cfg.num_points) as writer:
        for r in recs:
            if r["ok"] and r["m_json"]:
                members = {m: bytes(r["m_" + m.replace(".", "_")]) for m in MEMBERS}
                try:
                    writer.add(Sample.from_members(members), quality=json.loads(r["quality"]))
                    continue
                except PiteError as exc:
                    stage, msg = "write", one_line(exc)
            else:
                stage, msg = r["stage"] or "unknown", r["error"] or "no sample produced"
            writer.reject(r["video_id"], int(r["row"]), stage, msg)
            rejects.append((stage, msg))
        n = writer.n_samples
    return n, rejects


def _reason_class(msg: str) -> str:
    """Group reject messages for the summary: without the file they name, details in brackets, ids and numbers."""
    head, sep, rest = msg.partition(": ")
    if sep and ("/" in head or "\\" in head):  # "<path>: reason" -> the reason, the same for every file
        msg = rest
    msg = re.sub(r"'[^']*'", "'…'", msg.split(" (")[0])
    return re.sub(r"\d+", "N", msg)[:80]


def _counts_from_done(out: Path, done: list[int]) -> dict:
    """Counts of shards kept from an earlier (interrupted) run, so stats cover the whole manifest."""
    import pyarrow.parquet as pq

    written, rejected, by_stage, quality = 0, 0, Counter(), defaultdict(list)
    for s in done:
        idx = pq.read_table(out / "index" / f"pite-{s:06d}.parquet")
        written += idx.num_rows
        for col in QUALITY_COLUMNS:
            if col in idx.column_names:
                quality[col] += [v for v in idx.column(col).to_pylist() if v is not None]
        rj = pq.read_table(out / "rejects" / f"pite-{s:06d}.parquet").to_pylist()
        rejected += len(rj)
        by_stage.update(r["stage"] for r in rj)
    return {"written": written, "rejected": rejected, "by_stage": by_stage, "quality": quality, "shards": len(done)}


def _stats(cfg, out, total, written, rejects_by_stage, reasons, stage_seconds, quality_sums, prev, run_seconds,
           ray_startup, wall, pending, chash) -> dict:
    import av
    import ray

    by_stage = Counter(rejects_by_stage)
    by_stage.update(prev["by_stage"])
    quality = {k: list(v) for k, v in quality_sums.items()}
    for k, v in prev["quality"].items():
        quality.setdefault(k, []).extend(v)
    processed = written + sum(rejects_by_stage.values())
    return {
        "input_rows": total,
        "written": written + prev["written"],
        "rejected": sum(by_stage.values()),
        "rejected_by_stage": dict(sorted(by_stage.items())),
        "reject_reasons": dict(reasons.most_common(20)),
        "shards": len(list((out / "shards").glob("pite-*.tar"))),
        "shards_resumed": prev["shards"],
        "processed_this_run": processed,
        "seconds": {"total": round(wall, 3), "ray_startup": round(ray_startup, 3), "pipeline": round(run_seconds, 3),
                    "per_stage": {k: round(v, 3) for k, v in sorted(stage_seconds.items())}},
        "videos_per_second": round(processed / run_seconds, 3) if run_seconds > 0 and processed else None,
        "quality": {k: round(float(np.mean(v)), 4) for k, v in sorted(quality.items()) if v},
        "quality_clips": {k: len(v) for k, v in sorted(quality.items())},
        "config": to_dict(cfg),
        "config_hash": chash,
        "versions": {"python": sys.version.split()[0], "ray": ray.__version__, "numpy": np.__version__,
                     "pyav": av.__version__},
    }


def _progress(cfg: AnnotateJobConfig, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="annotate", unit="clip", disable=not cfg.progress, dynamic_ncols=True,
                file=sys.stderr)


def _maybe_synthesize(cfg: AnnotateJobConfig) -> None:
    if cfg.synth.n <= 0:
        return
    manifest = Path(cfg.synth.out) / "manifest.jsonl"
    if not cfg.input:
        cfg.input = str(manifest)
    if Path(cfg.input).exists():
        made = Path(cfg.synth.out) / "synth.json"  # what the clips there were made with
        if Path(cfg.input) != manifest or not made.is_file():
            return
        old = json.loads(made.read_text())
        if (old.get("n"), old.get("seed")) == (cfg.synth.n, cfg.synth.seed):
            return
        print(f"synth: {cfg.synth.out} holds n={old.get('n')} seed={old.get('seed')}, the config asks for "
              f"n={cfg.synth.n} seed={cfg.synth.seed}: making them again", file=sys.stderr)
        manifest.unlink()  # the manifest goes last (pipelines/synth.py): a cut-off run leaves none
    from pipelines.synth import main as synth_main

    workers = cfg.synth.workers or os.cpu_count() or 1
    synth_main(["--n", str(cfg.synth.n), "--seed", str(cfg.synth.seed), "--out", cfg.synth.out,
                "--workers", str(workers)])


def summary_line(stats: dict, out: Path) -> str:
    q = stats.get("quality") or {}
    quality = ", ".join(f"{k} {v:.3f}" for k, v in q.items())
    rej = ", ".join(f"{k} {v}" for k, v in stats["rejected_by_stage"].items()) or "none"
    vps = stats.get("videos_per_second")
    return (f"annotate: {stats['written']} samples, {stats['rejected']} rejects ({rej}) from {stats['input_rows']} rows"
            f" in {stats['seconds']['total']:.1f} s" + (f" ({vps:.2f} videos/s)" if vps else "")
            + (f"; quality vs ground truth: {quality}" if quality else "") + f"\n  outputs: {out}/ (report.html, "
            f"stats.json, shards/, index/, rejects/)")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pite annotate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML in configs/annotate/")
    p.add_argument("overrides", nargs="*",
                   help="key=value, e.g. input=manifest.jsonl out=runs/x ground.box_threshold=0.3")
    args = p.parse_args(argv)
    try:
        cfg = load_config(AnnotateJobConfig, args.config, args.overrides)
        if not cfg.out:
            cfg.name = cfg.name if cfg.name != "annotate" else Path(args.config).stem
        stats = run(cfg)
    except PiteError as exc:
        print(f"pite annotate: {exc}", file=sys.stderr)
        return 2
    print(summary_line(stats, resolve_out(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
