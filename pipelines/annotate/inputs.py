"""The job's input side: the synthetic demo set when asked for, and the manifest split into per-shard input files.

A shard is a fixed range of input rows (docs/design.md, "Run layout"); its rows are written once to
OUT/input/pite-NNNNNN.parquet, which the readers hand to the actors as row metadata.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from annotate.errors import ConfigError
from annotate.stage import one_line
from pipelines.annotate.config import NOT_HASHED, AnnotateJobConfig
from pipelines.config import config_hash
from pipelines.files import write_atomic


def input_file(out: Path, shard: int) -> Path:
    return out / "input" / f"pite-{shard:06d}.parquet"


def prepare_input(cfg: AnnotateJobConfig, out: Path) -> tuple[list[int], dict[int, int], str, int]:
    """Split the manifest into per-shard input files (once); returns all shard ids, rows per shard, config hash, rows.

    On resume (OUT/run.json exists) nothing is re-read: the manifest's fingerprint and the config hash must match
    those of the run being resumed, or it is a ConfigError that names what differs. An earlier attempt that
    finished no shard holds nothing to keep: it is split again, whatever its config was.
    """
    from pipelines.manifest import expand_inputs, fingerprint
    from pipelines.shards import list_done_shards, list_partial_shards

    fp = fingerprint(expand_inputs(cfg.input))
    run_file = out / "run.json"
    chash = config_hash(cfg, exclude=NOT_HASHED)
    if run_file.exists() and not list_done_shards(out):
        import shutil

        run_file.unlink()
        shutil.rmtree(out / "input", ignore_errors=True)  # partial shard files go in the driver's remove_partial
    if run_file.exists():
        return _resume(cfg, out, run_file, fp, chash)
    if list_done_shards(out) or list_partial_shards(out):
        raise ConfigError(f"out: {out} holds shards but no run.json, so they cannot be checked against this "
                          f"manifest and config; choose another out= or delete it")
    counts, total, check = _split_manifest(cfg, out)
    print(f"annotate: input {check.line()}", flush=True)  # stdout: stderr is for what went wrong
    if total and check.usable == 0:  # nothing could become a sample: refuse before Ray starts, leave out= clean
        import shutil

        shutil.rmtree(out / "input", ignore_errors=True)
        raise ConfigError(f"input: none of the {total} rows of {cfg.input} can be annotated ({check.line()})")
    # run.json goes last and whole: once it exists, every input file it lists is complete.
    write_atomic(run_file, json.dumps({"manifest": fp, "config_hash": chash, "rows": total,
                                       "rows_per_shard": cfg.rows_per_shard,
                                       "rows_per_shard_file": {str(k): v for k, v in counts.items()}}, indent=1))
    return sorted(counts), counts, chash, total


def _resume(cfg, out: Path, run_file: Path, fp, chash: str):
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


class ManifestCheck:
    """What reading the manifest found, before Ray starts: rows, rows already rejects (by reason), videos missing."""

    def __init__(self):
        self.rows = 0
        self.errors: dict[str, int] = {}  # reason (without row details) -> rows
        self.missing = 0  # rows whose video file does not exist
        self.first_missing = ""

    def add(self, r) -> None:
        self.rows += 1
        if r.error:
            reason = r.error.split(" (first at row")[0].split(" {")[0]
            reason = "duplicate video_id" if reason.startswith("duplicate video_id") else reason
            self.errors[reason] = self.errors.get(reason, 0) + 1
        elif not r.tar_member and not os.path.exists(r.video):
            self.missing += 1
            self.first_missing = self.first_missing or r.video

    @property
    def usable(self) -> int:
        return self.rows - sum(self.errors.values()) - self.missing

    def line(self) -> str:
        parts = [f"{self.rows} rows, {self.usable} to annotate"]
        if self.missing:
            parts.append(f"{self.missing} videos not found (first: {self.first_missing}; paths are relative to the "
                         f"manifest's folder)")
        parts += [f"{n} x {reason}" for reason, n in sorted(self.errors.items(), key=lambda kv: -kv[1])]
        return "; ".join(parts)


def _split_manifest(cfg, out: Path) -> tuple[dict[int, int], int, ManifestCheck]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.manifest import RECORD_SCHEMA_FIELDS, iter_manifest

    schema = pa.schema([(n, getattr(pa, t)()) for n, t in RECORD_SCHEMA_FIELDS])
    (out / "input").mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    buf: list[dict] = []
    total = 0
    check = ManifestCheck()

    def flush(shard: int) -> None:
        pq.write_table(pa.Table.from_pylist(buf, schema=schema), input_file(out, shard))
        counts[shard] = len(buf)
        buf.clear()

    for r in iter_manifest(cfg.input):
        shard = r.row // cfg.rows_per_shard
        if buf and buf[-1]["row"] // cfg.rows_per_shard != shard:
            flush(shard - 1)
        buf.append(r.to_record())
        check.add(r)
        total += 1
    if buf:
        flush(buf[-1]["row"] // cfg.rows_per_shard)
    return counts, total, check


def maybe_synthesize(cfg: AnnotateJobConfig) -> None:
    """Generate the synthetic demo set into synth.out when the config asks for it and it is missing or another."""
    if cfg.synth.n <= 0:
        return
    manifest = Path(cfg.synth.out) / "manifest.jsonl"
    if not cfg.input:
        cfg.input = str(manifest)
    if Path(cfg.input) != manifest:
        return  # the user's own input: never synthesise for it (a mistyped path is "not found" at once)
    if Path(cfg.input).exists():
        made = Path(cfg.synth.out) / "synth.json"  # what the clips there were made with
        if not made.is_file():
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
