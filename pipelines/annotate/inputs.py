"""The job's input side: the synthetic demo set when asked for, and the manifest split into per-shard input files.

A shard is a fixed range of input rows (docs/design.md, "Run layout"); its rows are written once to
OUT/input/pite-NNNNNN.parquet (pipelines/annotate/split.py), which the driver reads as the actors need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from annotate.errors import ConfigError
from annotate.stage import one_line
from pipelines.annotate.config import NOT_HASHED, AnnotateJobConfig
from pipelines.config import config_hash
from pipelines.files import write_atomic


def prepare_input(cfg: AnnotateJobConfig, rundir, inputs: list | None = None) -> tuple[list[int], dict[int, int], str,
                                                                                    int]:
    """Split the manifest into per-shard input files (once); returns all shard ids, rows per shard, config hash, rows.

    On resume (OUT/run.json exists) nothing is re-read: the manifest's fingerprint and the config hash must match
    those of the run being resumed, or it is a ConfigError that names what differs. An earlier attempt of another
    manifest or config that finished no shard holds nothing to keep: it is split again. A split that was cut off
    continues where it was (pipelines/annotate/split.py). `rundir` (pipelines/annotate/rundir.py, or a folder's path)
    is the run's folder, or its bucket's staging folder: the split is made there, and published once complete.
    `inputs`: the input files as `expand_inputs` gives them, when the caller has them already.
    """
    from pipelines.manifest import expand_inputs

    if not hasattr(rundir, "done_shards"):  # a folder given as a path
        from pipelines.annotate.rundir import open_run_dir

        rundir = open_run_dir(rundir)
    out = rundir.path
    inputs = inputs if inputs is not None else expand_inputs(cfg.input)
    fp = fingerprint(inputs)
    run_file = out / "run.json"
    chash = config_hash(cfg, exclude=NOT_HASHED)
    if run_file.exists() and not rundir.done_shards() and not _same_run(run_file, fp, chash):
        import shutil

        run_file.unlink()
        shutil.rmtree(out / "input", ignore_errors=True)  # partial shard files go in the driver's remove_partial
    if run_file.exists():
        return _resume(cfg, rundir.where, run_file, fp, chash)
    if rundir.done_shards() or rundir.partial_shards():
        raise ConfigError(f"out: {rundir.where} holds shards but no run.json, so they cannot be checked against "
                          f"this manifest and config; choose another out= or delete it")
    from pipelines.annotate.split import IDS, STATE, split_manifest

    counts, total, check = split_manifest(cfg, out, fp, inputs)
    print(f"annotate: input {check.line()}", flush=True)  # stdout: stderr is for what went wrong
    if total and check.usable == 0:  # nothing could become a sample: refuse before Ray starts, leave out= clean
        import shutil

        shutil.rmtree(out / "input", ignore_errors=True)
        raise ConfigError(f"input: none of the {total} rows of {cfg.input} can be annotated ({check.line()})")
    # run.json goes last and whole: once it exists, every input file it lists is complete.
    write_atomic(run_file, json.dumps({"manifest": fp, "config_hash": chash, "rows": total,
                                       "rows_per_shard": cfg.rows_per_shard,
                                       "rows_per_shard_file": {str(k): v for k, v in counts.items()}}, indent=1))
    for name in (STATE, IDS):  # the split is done: what let it continue is not needed any more
        (out / "input" / name).unlink(missing_ok=True)
    return sorted(counts), counts, chash, total


def fingerprint(paths: list[Path | str]) -> str:
    """Identifies the manifest for resume: content hash of manifest files, name+size+mtime of (large) tars; an
    object's ETag and size (what the store says identifies its content, without reading it)."""
    from annotate.storage import object_version

    h = hashlib.sha256()
    for p in paths:
        if isinstance(p, str):
            h.update(f"{p}:{object_version(p)}".encode())
            continue
        h.update(str(p.resolve()).encode())
        if p.suffix == ".tar":
            st = p.stat()
            h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
            sidecar = p.with_suffix(".parquet")  # the rows come from it when it is there
            if sidecar.exists():
                st = sidecar.stat()
                h.update(f"parquet:{st.st_size}:{int(st.st_mtime)}".encode())
        else:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def _same_run(run_file: Path, fp: str, chash: str) -> bool:
    try:
        prev = json.loads(run_file.read_text())
    except ValueError:
        return False
    return prev.get("manifest") == fp and prev.get("config_hash") == chash


def _resume(cfg, out: str, run_file: Path, fp, chash: str):
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
