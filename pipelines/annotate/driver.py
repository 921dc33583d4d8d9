"""The job's driver: prepare the input, check the plan against the cluster, feed the actors, write shards and stats.

The driver reads each shard's input file as the actors need it and keeps a few calls in flight per actor
(`pool.ChainPool`); finished shards go to a writer thread (`writer.ShardSink`), so it holds only the rows of shards
not yet complete. Resume: shards whose three files exist are kept after checking that the manifest and the config
hash match OUT/run.json; the attempt ledger starts empty on every run.

Console: the job sets RAY_BACKEND_LOG_LEVEL=fatal unless it is set (Ray's C++ core prints an ERROR line per actor
restart, ray-project/ray#53727; set it to `info` for Ray's full C++ logs). A local Ray started by the job is shut
down before the closing summary is printed.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict


from annotate.errors import ConfigError, PiteError
from annotate.stage import one_line
from pipelines.annotate.config import (QUALITY_COLUMNS, AnnotateJobConfig, check_settings, resolve_out,
                                       stage_config_hash)
from pipelines.annotate.inputs import maybe_synthesize, prepare_input
from pipelines.shards import input_file
from pipelines.manifest import expand_inputs
from pipelines.annotate.rundir import open_run_dir
from pipelines.annotate.plan import GIB
from pipelines.annotate.pool import ChainPool, LocalPool, read_batches, rows_of
from pipelines.annotate.raysetup import init_ray
from pipelines.annotate.stats import RunTally, build_stats
from pipelines.annotate.writer import ShardSink
from pipelines.config import save_config
from pipelines.files import write_atomic


def run(cfg: AnnotateJobConfig) -> dict:
    """Annotate `cfg.input` into `resolve_out(cfg)`; returns the stats (also written to OUT/stats.json).

    Uses the Ray that is already initialised in this process if any (a notebook, a test), else connects to the
    cluster of `ray job submit` (RAY_ADDRESS) or `cfg.ray_address`, else starts a local Ray of its own, which it
    shuts down at the end.
    """
    from annotate.pipeline import checked_stages

    rundir = open_run_dir(resolve_out(cfg), cfg.staging)
    check_settings(cfg)
    # Built here without setup (no weights loaded), each asked what it lacks: an unknown backend, a bad stage key, a
    # package that does not import or a weights path that is not there fails, all at once, before Ray starts and
    # before anything is written to out=, so the corrected command can use the same out=.
    stages = checked_stages(cfg)
    maybe_synthesize(cfg)
    inputs = expand_inputs(cfg.input)  # a missing or unusable input is said before out= is touched
    rundir.prepare()
    with rundir.lock():
        return _run_locked(cfg, rundir, stages, inputs)


def _run_locked(cfg: AnnotateJobConfig, rundir, stages: list, inputs: list) -> dict:
    from pipelines.annotate.plan import actor_plan, cluster_nodes, preflight

    t_start = time.perf_counter()
    counts, chash, total, done, pending = _prepare(cfg, rundir, inputs)
    # Samples carry the hash of the stage settings only, as `pite annotate-clip` writes it: a clip gives the same
    # sample either way, and job settings (shard size, workers) do not change its bytes.
    sample_hash = stage_config_hash(cfg)
    plan = actor_plan(cfg, stages)  # from the stages' declared resources

    t_ray = time.perf_counter()
    on_ray = pending and cfg.executor == "ray"  # a finished run re-run only rewrites its stats
    started_ray = init_ray(cfg) if on_ray else False
    ray_startup = time.perf_counter() - t_ray
    try:
        tally = RunTally()
        t_run = time.perf_counter()
        if on_ray:
            preflight(cfg, plan, cluster_nodes())
        elif pending:
            plan.workers = 1  # executor=local: one chain, in this process
        if pending:
            _stream(cfg, rundir, pending, counts, plan, sample_hash, tally, t_run)
        seconds = {"total": time.perf_counter() - t_start, "ray_startup": ray_startup,
                   "pipeline": time.perf_counter() - t_run}
        stats = build_stats(cfg, total, tally, rundir.kept_counts(sorted(done)), seconds, chash,
                            plan if pending else None)
        _finish(rundir, stats, tally, total, cfg.name)
    finally:
        if started_ray:
            import ray

            # Our own Ray goes down before the summary is printed, so its late messages do not follow it.
            ray.shutdown()
    return stats


def _prepare(cfg: AnnotateJobConfig, rundir, inputs: list):
    """The split (or the resumed one), published; what an earlier run left cleaned up; (rows per shard, config
    hash, rows, shards done, shards to do)."""
    out = rundir.path  # the run's folder, or the staging folder of a run in a bucket
    shards, counts, chash, total = prepare_input(cfg, rundir, inputs)
    rundir.publish_inputs()
    save_config(cfg, out / "config.yaml")  # after the resume check: a mismatching run keeps its own config.yaml
    rundir.publish("config.yaml")
    rundir.remove_partial()
    rundir.clear_ledger()  # deaths of an earlier (killed) run are not this run's poison rows
    done = set(rundir.done_shards())
    pending = [s for s in shards if s not in done]
    if done:
        print(f"annotate: resumed: {len(done)} shard(s) kept ({sum(counts[s] for s in done)} rows), "
              f"{len(pending)} to do", flush=True)
    rundir.fetch_inputs(pending)
    lost = [s for s in pending if not input_file(out, s).is_file()]
    if lost:
        raise ConfigError(f"out: the input file of shard {lost[0]} (input/{input_file(out, lost[0]).name}) is "
                          f"missing, so it cannot be redone; delete {rundir.where} (or choose another out=) and run "
                          f"again")
    rundir.unlink("stats.json")  # written last: its presence marks a finished run
    return counts, chash, total, done, pending


def _finish(rundir, stats: dict, tally: RunTally, total: int, name: str) -> None:
    """Check that every row is a sample or a reject, then the report, the dataset card and stats.json (last: a
    finished run)."""
    from pipelines.card import write_card
    from pipelines.report import write_report

    if stats["written"] + stats["rejected"] != total:  # every row a sample or a reject, never lost or twice
        raise PiteError(f"{stats['written']} samples + {stats['rejected']} rejects != {total} input rows in "
                        f"{rundir.where}: the run is inconsistent (was a shard file replaced by hand?)")
    write_report(rundir.path, stats, tally.report_previews())
    rundir.publish("report.html")
    write_card(rundir.path, stats, name)
    rundir.publish("README.md")
    rundir.clear_ledger()  # every row is a sample or a reject now: nothing to retry
    write_atomic(rundir.path / "stats.json", json.dumps(stats, indent=1, default=str))
    rundir.publish("stats.json")


def _stream(cfg, rundir, pending, counts, plan, sample_hash: str, tally: RunTally, t_run) -> None:
    from pipelines.annotate.actor import ClipChain

    out = rundir.path
    args = (cfg, rundir.ledger, sample_hash, plan.decode_threads)
    pool = (LocalPool(ClipChain, args) if cfg.executor == "local" else
            ChainPool(ClipChain, args, plan.workers, plan.num_cpus, plan.num_gpus, int(plan.memory_gb * GIB) or None))
    sink = ShardSink(out, cfg, QUALITY_COLUMNS, tally.add_written, rundir.publish_shard)
    bar = _progress(cfg, sum(counts[s] for s in pending))
    # Keyed by row: a row handed over twice (a retried call) is kept once. Only shards not yet complete are held.
    buffers: dict[int, dict[int, dict]] = defaultdict(dict)
    finished: set[int] = set()
    batches = read_batches((input_file(out, s) for s in pending), cfg.batch_size, tally.count_input)
    try:
        for columns in pool.map(batches, actor_start_failure):
            for rec in rows_of(columns):
                if tally.first_output is None:
                    tally.first_output = time.perf_counter() - t_run
                row = int(rec["row"])
                shard = row // cfg.rows_per_shard
                if shard in finished or row in buffers[shard]:
                    continue
                buffers[shard][row] = rec
                tally.take_row(rec, cfg.report_samples)
                bar.update(1)
                if len(buffers[shard]) == counts[shard]:
                    finished.add(shard)
                    sink.put(shard, [r for _, r in sorted(buffers.pop(shard).items())])
        sink.close()
    finally:
        sink.close(quiet=True)  # on an error or Ctrl-C: the shards already finished are still written, whole
        pool.close()
        bar.close()
        tally.driver_wait, tally.driver_write, tally.driver_write_blocked = pool.waited, sink.busy, sink.blocked
    missing = sorted(s for s, b in buffers.items() if b)
    if missing:
        raise PiteError(f"rows missing from shards {missing} after the run: the job is incomplete; re-run the same "
                        f"command to redo them")


def actor_start_failure(exc: BaseException):
    """The last "<Error>: message" line of an actor's failed __init__ inside Ray's wrapped error, if it is one."""
    text = str(exc)
    if "ClipChain" not in text or "__init__" not in text:
        return None
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"\s*[\w.]*(Error|Exception): ", ln)]
    return lines[-1] if lines else one_line(exc)[:300]


def _progress(cfg: AnnotateJobConfig, total: int):
    from pipelines.progress import job_bar

    return job_bar(total=total, desc="annotate", unit="clip", enabled=cfg.progress)
