"""The job's driver: prepare the input, check the plan against the cluster, stream rows, write shards and stats.

Rows come back in order, so the driver writes each shard (tar + index + rejects, renamed together) as soon as its
last row arrives and holds at most a shard or two. Resume: shards whose three files exist are kept after checking
that the manifest and the config hash match OUT/run.json; the attempt ledger starts empty on every run.

Console: the job sets RAY_BACKEND_LOG_LEVEL=fatal unless it is set (Ray's C++ core would print an ERROR line per
actor that Ray Data starts, ray-project/ray#53727; set it to `info` for Ray's full C++ logs). A local Ray started
by the job is shut down before the closing summary is printed.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from annotate.errors import ConfigError, PiteError
from annotate.schema import MEMBERS
from annotate.stage import one_line
from pipelines.annotate.config import (QUALITY_COLUMNS, AnnotateJobConfig, check_settings, resolve_out,
                                       stage_config_hash)
from pipelines.annotate.inputs import input_file, maybe_synthesize, prepare_input
from pipelines.annotate.lock import run_lock
from pipelines.annotate.outputs import member_column, output_bytes
from pipelines.annotate.raysetup import build_dataset, data_context, init_ray, operator_output_bytes
from pipelines.annotate.stats import REASON_VIDEOS, RunTally, build_stats, counts_from_done, reason_class
from pipelines.config import save_config
from pipelines.files import write_atomic


def run(cfg: AnnotateJobConfig) -> dict:
    """Annotate `cfg.input` into `resolve_out(cfg)`; returns the stats (also written to OUT/stats.json).

    Uses the Ray that is already initialised in this process if any (a notebook, a test), else connects to the
    cluster of `ray job submit` (RAY_ADDRESS) or `cfg.ray_address`, else starts a local Ray of its own, which it
    shuts down at the end.
    """
    from annotate.pipeline import checked_stages

    out = resolve_out(cfg)
    check_settings(cfg)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file, not a folder; choose another out=")
    # Built here without setup (no weights loaded), each asked what it lacks: an unknown backend, a bad stage key, a
    # package that does not import or a weights path that is not there fails, all at once, before Ray starts and
    # before anything is written to out=, so the corrected command can use the same out=.
    stages = checked_stages(cfg)
    maybe_synthesize(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        return _run_locked(cfg, out, stages)


def _run_locked(cfg: AnnotateJobConfig, out: Path, stages: list) -> dict:
    import ray

    from pipelines.annotate.plan import actor_plan, cluster_nodes, preflight
    from pipelines.shards import list_done_shards, remove_partial

    t_start = time.perf_counter()
    shards, counts, chash, total = prepare_input(cfg, out)
    save_config(cfg, out / "config.yaml")  # after the resume check: a mismatching run keeps its own config.yaml
    remove_partial(out)
    ledger = out / ".attempts"
    shutil.rmtree(ledger, ignore_errors=True)  # deaths of an earlier (killed) run are not this run's poison rows
    done = set(list_done_shards(out))
    pending = [s for s in shards if s not in done]
    if done:
        print(f"annotate: resumed: {len(done)} shard(s) kept ({sum(counts[s] for s in done)} rows), "
              f"{len(pending)} to do", flush=True)
    lost = [s for s in pending if not input_file(out, s).is_file()]
    if lost:
        raise ConfigError(f"out: {input_file(out, lost[0])} is missing, so shard {lost[0]} cannot be redone; delete "
                          f"{out} (or choose another out=) and run again")
    (out / "stats.json").unlink(missing_ok=True)  # written last: its presence marks a finished run
    # Samples carry the hash of the stage settings only, as `pite annotate-clip` writes it: a clip gives the same
    # sample either way, and job settings (shard size, workers) do not change its bytes.
    sample_hash = stage_config_hash(cfg)
    plan = actor_plan(cfg, stages)  # from the stages' declared resources

    t_ray = time.perf_counter()
    started_ray = init_ray(cfg) if pending else False  # a finished run re-run only rewrites its stats
    ray_startup = time.perf_counter() - t_ray
    try:
        tally = RunTally()
        t_run = time.perf_counter()
        if pending:
            preflight(cfg, plan, cluster_nodes())
            _stream(cfg, out, pending, counts, plan, str(ledger), sample_hash, tally, t_run)
        seconds = {"total": time.perf_counter() - t_start, "ray_startup": ray_startup,
                   "pipeline": time.perf_counter() - t_run}
        stats = build_stats(cfg, out, total, tally, counts_from_done(out, sorted(done)), seconds, chash,
                            plan if pending else None)
        if stats["written"] + stats["rejected"] != total:  # every row a sample or a reject, never lost or twice
            raise PiteError(f"{stats['written']} samples + {stats['rejected']} rejects != {total} input rows in "
                            f"{out}: the run is inconsistent (was a shard file replaced by hand?)")
        from pipelines.report import write_report

        write_report(out, stats, tally.report_previews())
        shutil.rmtree(ledger, ignore_errors=True)  # every row is a sample or a reject now: nothing to retry
        write_atomic(out / "stats.json", json.dumps(stats, indent=1, default=str))  # last: marks the run complete
    finally:
        if started_ray:
            # Our own Ray goes down before the summary is printed, so its late messages do not follow it.
            ray.shutdown()
    return stats


def _stream(cfg, out: Path, pending, counts, plan, ledger: str, sample_hash: str, tally: RunTally, t_run) -> None:
    with data_context():
        ds = build_dataset(cfg, out, pending, plan, ledger, sample_hash)
        tally.bytes_in = sum(input_file(out, s).stat().st_size for s in pending)
        bar = _progress(cfg, sum(counts[s] for s in pending))
        # Rows arrive in order, so at most a shard or two is buffered. Keyed by row: a row that Ray hands over
        # twice (a retried task) is kept once.
        buffers: dict[int, dict[int, dict]] = defaultdict(dict)
        finished: set[int] = set()
        for rec in _rows(ds):
            if tally.first_output is None:
                tally.first_output = time.perf_counter() - t_run
            row = int(rec["row"])
            shard = row // cfg.rows_per_shard
            if shard in finished or row in buffers[shard]:
                continue
            buffers[shard][row] = rec
            tally.bytes_out += output_bytes(rec)
            bar.update(1)
            if len(buffers[shard]) < counts[shard]:
                continue
            finished.add(shard)
            _finish_shard(cfg, out, shard, [r for _, r in sorted(buffers.pop(shard).items())], tally)
        bar.close()
        measured = operator_output_bytes(ds)
    # Ray Data's own measure where it gives one: the reader's blocks go to the actors, the actors' to the driver.
    reader = sum(v for k, v in measured.items() if "read_input_files" in k)
    actor = sum(v for k, v in measured.items() if "ClipChain" in k)
    if reader and actor:
        tally.bytes_in, tally.bytes_out, tally.bytes_source = reader, actor, "ray data operator stats"
    missing = sorted(s for s, b in buffers.items() if b)
    if missing:
        raise PiteError(f"rows missing from shards {missing} after the run: the job is incomplete; re-run the same "
                        f"command to redo them")


def _rows(ds):
    """The dataset's rows; an actor that cannot start (weights, device) ends the job with one line, not Ray's trace."""
    try:
        yield from ds.iter_rows()
    except Exception as exc:  # noqa: BLE001 - re-raised as one line when it is an actor's start-up failure
        reason = actor_start_failure(exc)
        if reason is None:
            raise
        raise PiteError(f"an annotation actor could not start: {reason}") from None


def actor_start_failure(exc: BaseException):
    """The last "<Error>: message" line of an actor's failed __init__ inside Ray's wrapped error, if it is one."""
    text = str(exc)
    if "ClipChain" not in text or "__init__" not in text:
        return None
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"\s*[\w.]*(Error|Exception): ", ln)]
    return lines[-1] if lines else one_line(exc)[:300]


def _finish_shard(cfg, out: Path, shard: int, recs: list[dict], tally: RunTally) -> None:
    from pipelines.shards import ShardWriter

    written, rejects = write_shard(ShardWriter, out, shard, recs, cfg)
    tally.written += written
    for r in recs:
        tally.retried += int(r["attempts"]) > 1
        for k, v in json.loads(r["timings"]).items():
            tally.stage_seconds[k] += v
        if r["note"]:
            tally.notes.append(f"row {int(r['row'])} ({r['video_id']}): {r['note']}")
        if not r["ok"] or not r["m_json"]:
            continue
        for k, v in json.loads(r["quality"]).items():
            if v is not None and np.isfinite(v):
                tally.quality[k].append(v)
        if r["preview"] is not None and len(r["preview"]):
            tally.add_preview(float(r["confidence"]), int(r["row"]), r["video_id"], bytes(r["preview"]),
                              first=int(r["row"]) < cfg.report_samples)
    for stage, msg, video_id in rejects:
        tally.rejects_by_stage[stage] += 1
        reason = f"{stage}: {reason_class(msg)}"
        tally.reasons[reason] += 1
        if len(tally.reason_videos[reason]) < REASON_VIDEOS:
            tally.reason_videos[reason].append(video_id)
        tally.reason_first.setdefault(reason, f"{video_id}: {msg}")


def write_shard(writer_cls, out: Path, shard: int, recs: list[dict], cfg: AnnotateJobConfig):
    """One shard's tar, index and rejects from its output rows; returns (samples written, [(stage, reason,
    video_id)])."""
    from annotate.schema import Sample

    rejects = []
    with writer_cls(out, shard, quality_columns=QUALITY_COLUMNS, num_frames=cfg.num_frames,
                    num_points=cfg.num_points) as writer:
        for r in recs:
            if r["ok"] and r["m_json"]:
                members = {m: bytes(r[member_column(m)]) for m in MEMBERS}
                try:
                    writer.add(Sample.from_members(members), quality=json.loads(r["quality"]))
                    continue
                except PiteError as exc:
                    stage, msg = "write", one_line(exc)
            else:
                stage, msg = r["stage"] or "unknown", r["error"] or "no sample produced"
            writer.reject(r["video_id"], int(r["row"]), stage, msg)
            rejects.append((stage, msg, r["video_id"]))
        n = writer.n_samples
    return n, rejects


def _progress(cfg: AnnotateJobConfig, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="annotate", unit="clip", disable=not cfg.progress, dynamic_ncols=True,
                file=sys.stderr)
