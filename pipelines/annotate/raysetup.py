"""Ray for the job: connecting (or starting a local Ray), Ray Data's settings, and the dataset of the run.

The dataset is two operators: 0-CPU reader tasks turn per-shard input files into row metadata, and one actor pool
of `ClipChain`s runs each clip's whole chain. Only the rows' metadata goes in and the samples' bytes come out.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from pipelines.annotate.inputs import input_file, read_input_files
from pipelines.annotate.plan import GIB, ActorPlan

# An actor pool that cannot start within this many seconds is an error, not a hang. The preflight refuses what can
# never be scheduled; this catches what it cannot see (a node lost while starting, weights that never finish
# loading). Ray Data's default waits without end.
ACTOR_START_TIMEOUT_S = 900


def init_ray(cfg) -> bool:
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
        if cfg.num_gpus >= 0:
            kwargs["num_gpus"] = cfg.num_gpus
    ray.init(**kwargs)
    return True


@contextmanager
def data_context():
    """Ray Data settings of this job, restored afterwards (a notebook or test may go on using Ray Data)."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start,
             ctx.target_max_block_size, ctx.wait_for_min_actors_s)
    ctx.execution_options.preserve_order = True  # rows in order: a shard completes before the next, fixed order
    ctx.enable_progress_bars = False  # ours counts rows; Ray's would interleave with it
    ctx.print_on_execution_start = False
    # One row per block: rows stream out of the actors batch by batch (smooth progress, small objects) instead of
    # a shard-sized block at a time; the actors still get `batch_size` rows per call.
    ctx.target_max_block_size = 1
    ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    log_once("ray_data_progress_manager_disabled")  # marks Ray Data's "Progress bars disabled" notice as shown
    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ != "SessionFileHandler"]
    levels = [h.level for h in console]
    for h in console:  # "execution finished" and other INFO lines stay in Ray Data's log file only
        h.setLevel(max(h.level, logging.WARNING))
    try:
        yield ctx
    finally:
        (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start,
         ctx.target_max_block_size, ctx.wait_for_min_actors_s) = saved
        for h, level in zip(console, levels):
            h.setLevel(level)


def build_dataset(cfg, out: Path, pending: list[int], plan: ActorPlan, ledger: str, sample_hash: str):
    import ray

    from pipelines.annotate.actor import ClipChain

    # The driver lists the per-shard input files; 0-CPU tasks read them. Ray's own read_parquet is avoided on
    # purpose: its file-listing and read tasks take a CPU each, and on a cluster whose CPUs all hold actors they
    # would wait forever (as would repartition's tasks). Their number in flight is capped: a 0-CPU task is never
    # held back by the scheduler, so without a cap Ray starts one worker process per input file at once.
    files = [{"path": str(input_file(out, s))} for s in pending]
    readers = max(1, min(len(files), max(2, plan.workers)))
    ds = ray.data.from_items(files, override_num_blocks=len(files)).map_batches(
        read_input_files, batch_size=1, num_cpus=0, batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=readers))
    return ds.map_batches(
        ClipChain, fn_constructor_args=(cfg, ledger, sample_hash, plan.decode_threads), batch_size=cfg.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.workers), num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus or None, memory=int(plan.memory_gb * GIB) or None, zero_copy_batch=True,
    )


def operator_output_bytes(ds) -> dict[str, int]:
    """Bytes each operator put into the object store, as Ray Data measured them (empty if it could not say).

    `_get_stats_summary` is Ray Data's structured form of `ds.stats()`; it is not public API, hence the guard.
    """
    try:
        summary = ds._get_stats_summary()
    except Exception:  # noqa: BLE001 - a figure for stats.json, never a reason to fail a finished run
        return {}
    found: dict[str, int] = {}
    todo = [summary]  # the last operators, then their parents' (the summary is a tree of fused operator groups)
    while todo:
        node = todo.pop()
        for op in node.operators_stats:
            if op.output_size_bytes is not None:
                found[op.operator_name] = found.get(op.operator_name, 0) + int(op.output_size_bytes.sum)
        todo.extend(node.parents)
    return found
