"""`pite annotate --config CONFIG [input=MANIFEST] [out=DIR] [key=value ...]`: a manifest in, PiTe shards out.

Ray Data runs the stages: rows are read from per-shard input files, the stages run as `map_batches` actors (one
actor per group of consecutive stages that want the same device, with the resources the stages declare), and the
driver writes each shard (tar + index + rejects, renamed together) as soon as its last row arrives. Order is
preserved, so a shard's rows arrive together and memory stays bounded by a few shards.

Fault model: a stage that raises on a row turns the row into a reject. A worker that dies (segfault, OOM kill) is
restarted by Ray and its batch retried; an attempt ledger on disk counts how often each row was in flight when a
worker died, runs suspects one at a time, and rejects a row after `max_attempts` deaths, so a poison row cannot
loop forever. Resume: shards whose three files exist are kept (after checking that the manifest and config match).

On a cluster: `ray job submit --working-dir . -- python -m pipelines.annotate --config ... input=/abs out=/abs`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError, PiteError
from annotate.stage import one_line
from pipelines.config import config_hash, load_config, save_config, to_dict

QUALITY_COLUMNS = ("ground_recall", "box_iou", "mask_iou", "delta_avg", "oa", "aj")


@dataclass
class SynthSettings:
    n: int = 0  # > 0: generate this many synthetic clips into `out` first when its manifest is missing
    seed: int = 0
    out: str = "data/synth-demo"


@dataclass
class AnnotateJobConfig(AnnotateConfig):
    name: str = "annotate"  # run name: the default output dir is runs/annotate/<name>
    input: str = ""  # manifest (.jsonl/.csv/.parquet) or video2dataset tars, brace patterns allowed
    out: str = ""  # run dir; on a cluster an absolute path on shared storage
    rows_per_shard: int = 64
    batch_size: int = 4  # clips per map_batches batch (keep small: frames travel between actors)
    cpu_workers: int = 0  # actors per CPU stage group; 0 = one per CPU of the cluster
    gpu_workers: int = 1  # actors per GPU stage group
    max_attempts: int = 2  # worker deaths a row may cause before it is rejected as a poison row
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
    """Counts, per (group, row), the attempts that were in flight when a worker died: files in OUT/.attempts."""

    def __init__(self, root: str, group: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.group = group

    def _prefix(self, row: int) -> str:
        return f"g{self.group}-r{row}-"

    def deaths(self, rows: list[int]) -> dict[int, int]:
        wanted = {self._prefix(r): r for r in rows}
        counts = {r: 0 for r in rows}
        for name in os.listdir(self.root):
            prefix = name[: name.rfind("-") + 1]
            if prefix in wanted:
                counts[wanted[prefix]] += 1
        return counts

    def start(self, rows: list[int]) -> list[Path]:
        marks = [self.root / f"{self._prefix(r)}{uuid.uuid4().hex[:8]}" for r in rows]
        for m in marks:
            m.touch()
        return marks

    def clear(self, rows: list[int]) -> None:
        prefixes = tuple(self._prefix(r) for r in rows)
        for name in os.listdir(self.root):
            if name.startswith(prefixes):
                (self.root / name).unlink(missing_ok=True)


class StageGroup:
    """A Ray Data actor running consecutive stages; the first builds items from rows, the last emits outputs."""

    def __init__(self, cfg: AnnotateJobConfig, names: list[str], index: int, last: bool, ledger_dir: str,
                 chash: str):
        from annotate.pipeline import build_stage

        self.cfg, self.first, self.last, self.chash = cfg, index == 0, last, chash
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
            if deaths[it.row] >= self.cfg.max_attempts:
                it.reject(self.stages[0].name, f"poison row: its worker died {deaths[it.row]} times while "
                                               f"processing it (stages {', '.join(s.name for s in self.stages)})")
        live = [it for it in live if it.ok]
        suspects = [it for it in live if deaths[it.row] > 0]
        clean = [it for it in live if deaths[it.row] == 0]
        # Rows that were in flight when a worker died run one at a time, so the next death names its row.
        for chunk in ([clean] if clean else []) + [[it] for it in suspects]:
            rows = [it.row for it in chunk]
            self.ledger.start(rows)
            self._run(chunk)
            self.ledger.clear(rows)
        return _outputs(items, self.cfg, self.chash) if self.last else {"item": _object_array(items)}

    def _items(self, batch: dict):
        if not self.first:
            return list(batch["item"])
        from annotate.pipeline import make_item
        from pipelines.manifest import ManifestRow

        items = []
        n = len(batch["row"])
        for i in range(n):
            r = ManifestRow.from_record({k: _py(v[i]) for k, v in batch.items()})
            it = make_item(r.row, r.video_id, r.video, r.caption, self.cfg.seed, start=r.start, end=r.end,
                           events=r.events, boxes=r.boxes, gt=r.gt, tar_member=r.tar_member)
            if r.error:
                it.reject("manifest", r.error)
            items.append(it)
        return items

    def _run(self, items) -> None:
        for stage in self.stages:
            for it in items:
                fault = self.faults.get((stage.name, it.video_id))
                if fault and it.ok:
                    if fault == "exit":
                        os._exit(1)  # simulates a decoder segfault / OOM kill of the worker process
                    it.reject(stage.name, f"injected fault in {stage.name}")
            stage.process(items)


def _parse_faults(specs: list[str], names: list[str]) -> dict[tuple[str, str], str]:
    faults = {}
    for spec in specs:
        stage, _, rest = spec.partition(":")
        video_id, _, kind = rest.rpartition(":")
        if stage in names:
            faults[(stage, video_id)] = kind
    return faults


def _outputs(items, cfg: AnnotateJobConfig, chash: str) -> dict:
    """Serialise each item as sample members (or a reject) + its index figures, timings and preview."""
    from annotate.assemble import assemble

    cols: dict[str, list] = defaultdict(list)
    for it in items:
        sample, quality, preview = None, {}, b""
        if it.ok:
            try:
                sample = assemble(it, cfg, chash)
                from annotate.schema import validate_sample

                validate_sample(sample, num_frames=cfg.num_frames, num_points=cfg.num_points)
                if it.gt:
                    from annotate.quality import clip_quality

                    quality = clip_quality(it, cfg)
                if it.row < cfg.report_samples:
                    preview = _preview(it)
            except Exception as exc:  # a sample that cannot be built is a reject, never a crash of the job
                it.reject(getattr(exc, "stage", "assemble"), one_line(exc))
                sample = None
        members = sample.to_members() if sample is not None and it.ok else {}
        cols["row"].append(it.row)
        cols["video_id"].append(it.video_id)
        cols["ok"].append(it.ok)
        cols["stage"].append(it.error[0] if it.error else "")
        cols["error"].append(it.error[1] if it.error else "")
        for m in ("json", "traj.npy", "vis.npy", "feat.npy"):
            cols["m_" + m.replace(".", "_")].append(members.get(m, b""))
        cols["quality"].append(json.dumps(quality))
        cols["timings"].append(json.dumps(it.timings))
        cols["preview"].append(preview)
    return {k: (np.array(v) if k in ("row", "ok") else _object_array(v)) for k, v in cols.items()}


def _preview(item) -> bytes:
    from annotate.draw import draw_frame, encode_png, grid
    from annotate.track import read_off_samples

    clip = item.clip
    g0 = item.groundings[0]
    on_frame = [i for i, g in enumerate(item.groundings) if g.track_frame == g0.track_frame]
    first = draw_frame(clip.track_frames[g0.track_frame], boxes=np.stack([item.groundings[i].box for i in on_frame]),
                       masks=[item.masks[i] for i in on_frame], labels=[item.phrases[item.groundings[i].phrase_index].text
                                                                        for i in on_frame])
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


def prepare_input(cfg: AnnotateJobConfig, out: Path) -> tuple[list[int], dict[int, int], str, int]:
    """Split the manifest into per-shard input files (once); returns all shard ids, rows per shard, fingerprint, rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.manifest import RECORD_SCHEMA_FIELDS, expand_inputs, fingerprint, iter_manifest

    fp = fingerprint(expand_inputs(cfg.input))
    run_file = out / "run.json"
    chash = config_hash(cfg, exclude=("input", "out", "progress", "ray_address", "num_cpus", "cpu_workers",
                                      "gpu_workers", "report_samples", "synth", "name", "batch_size"))
    if run_file.exists():
        prev = json.loads(run_file.read_text())
        if prev.get("manifest") != fp or prev.get("config_hash") != chash:
            what = "manifest" if prev.get("manifest") != fp else "config"
            raise ConfigError(f"out: {out} holds a run of a different {what}; choose another out= or delete it")
        counts = {int(k): v for k, v in prev["rows_per_shard_file"].items()}
        return sorted(counts), counts, chash, prev["rows"]
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
    run_file.write_text(json.dumps({"manifest": fp, "config_hash": chash, "rows": total,
                                    "rows_per_shard": cfg.rows_per_shard,
                                    "rows_per_shard_file": {str(k): v for k, v in counts.items()}}, indent=1))
    return sorted(counts), counts, chash, total


def run(cfg: AnnotateJobConfig) -> dict:
    import ray

    from annotate.pipeline import STAGE_NAMES, build_stage, group_resources, group_stages
    from pipelines.shards import ShardWriter, list_done_shards, remove_partial

    t_start = time.perf_counter()
    out = resolve_out(cfg)
    _maybe_synthesize(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    shards, counts, chash, total = prepare_input(cfg, out)
    remove_partial(out)
    done = set(list_done_shards(out))
    pending = [s for s in shards if s not in done]
    (out / "stats.json").unlink(missing_ok=True)  # written last: its presence marks a finished run

    # Plan the actor groups from the stages' declared resources (built here without setup: no weights loaded).
    probe_stages = [build_stage(n, cfg) for n in STAGE_NAMES]
    groups = group_stages(probe_stages)

    t_ray = time.perf_counter()
    if not ray.is_initialized():
        kwargs = {"address": cfg.ray_address} if cfg.ray_address else {}
        if not cfg.ray_address and not os.environ.get("RAY_ADDRESS"):
            kwargs.update(num_cpus=cfg.num_cpus or None, include_dashboard=False)
        ray.init(logging_level="ERROR", log_to_driver=False, **kwargs)
    ray_startup = time.perf_counter() - t_ray
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # a shard's rows arrive together: bounded buffers, fixed order
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))

    written, rejects_by_stage, reasons = 0, Counter(), Counter()
    stage_seconds: Counter = Counter()
    quality_sums: dict[str, list[float]] = defaultdict(list)
    previews: list[tuple[int, str, bytes]] = []
    prev_counts = _counts_from_done(out, sorted(done))
    t_run = time.perf_counter()
    if pending:
        # The driver lists the per-shard input files; 0-CPU tasks read them. Ray's own read_parquet is avoided on
        # purpose: its file-listing and read tasks take a CPU each, and on a cluster whose CPUs all hold stage
        # actors they would wait forever.
        files = [{"path": str(out / "input" / f"pite-{s:06d}.parquet")} for s in pending]
        ds = ray.data.from_items(files, override_num_blocks=len(files)).map_batches(
            _read_input_files, batch_size=1, num_cpus=0, batch_format="pyarrow")
        ledger = str(out / ".attempts")
        # CPUs left for the CPU groups once every GPU actor holds its CPUs, shared among those groups.
        gpu_cpus = sum(group_resources(g).num_cpus * cfg.gpu_workers for g in groups if group_resources(g).num_gpus)
        n_cpu_groups = sum(1 for g in groups if not group_resources(g).num_gpus)
        cpu_share = max(1.0, (cluster_cpus - gpu_cpus) / max(1, n_cpu_groups))
        for gi, group in enumerate(groups):
            res = group_resources(group)
            gpu = res.num_gpus > 0
            workers = cfg.gpu_workers if gpu else (cfg.cpu_workers or max(1, int(cpu_share // max(res.num_cpus, 1))))
            ds = ds.map_batches(
                StageGroup, fn_constructor_args=(cfg, [s.name for s in group], gi, gi == len(groups) - 1, ledger, chash),
                batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=res.num_cpus, num_gpus=res.num_gpus or None, zero_copy_batch=True,
            )
        bar = _progress(cfg, sum(counts[s] for s in pending))
        buffers: dict[int, list[dict]] = defaultdict(list)
        for rec in ds.iter_rows():
            shard = int(rec["row"]) // cfg.rows_per_shard
            buffers[shard].append(rec)
            bar.update(1)
            if len(buffers[shard]) == counts[shard]:
                recs = sorted(buffers.pop(shard), key=lambda r: int(r["row"]))
                w, rj = _write_shard(ShardWriter, out, shard, recs, cfg)
                written += w
                for r in recs:
                    for k, v in json.loads(r["timings"]).items():
                        stage_seconds[k] += v
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
        if buffers:
            raise PiteError(f"rows missing from shards {sorted(buffers)} after the run: the job is incomplete")
    run_seconds = time.perf_counter() - t_run

    stats = _stats(cfg, out, total, written, rejects_by_stage, reasons, stage_seconds, quality_sums, prev_counts,
                   run_seconds, ray_startup, time.perf_counter() - t_start, pending, chash)
    from pipelines.report import write_report

    write_report(out, stats, previews)
    (out / "stats.json").write_text(json.dumps(stats, indent=1, default=str))  # last: marks the run complete
    return stats


def _write_shard(writer_cls, out: Path, shard: int, recs: list[dict], cfg: AnnotateJobConfig):
    from annotate.schema import Sample

    rejects = []
    with writer_cls(out, shard, quality_columns=QUALITY_COLUMNS, num_frames=cfg.num_frames,
                    num_points=cfg.num_points) as writer:
        for r in recs:
            if r["ok"] and r["m_json"]:
                members = {m: bytes(r["m_" + m.replace(".", "_")]) for m in ("json", "traj.npy", "vis.npy", "feat.npy")}
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
    """Group reject messages for the summary: the text before the first colon naming a file, else the message."""
    return msg.split(": ")[-1][:80] if ": " in msg else msg[:80]


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
        return
    from pipelines.synth import main as synth_main

    synth_main(["--n", str(cfg.synth.n), "--seed", str(cfg.synth.seed), "--out", cfg.synth.out])


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
    p.add_argument("overrides", nargs="*", help="key=value, e.g. input=manifest.jsonl out=runs/x ground.box_threshold=0.3")
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
