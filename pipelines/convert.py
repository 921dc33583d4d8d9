"""`pite convert vtimellm --json FILE --features DIR --out RUN_DIR`: VTimeLLM / LLaVA instruction data -> PiTe shards.

The input is VTimeLLM's data format (its docs/data.md), a JSON list of records

    {"id": "3n3oCNerzV0", "source": "internvid",
     "conversations": [{"from": "human", "value": "<video>\\n..."}, {"from": "gpt", "value": "From <s0> to <e0>, ..."}],
     "meta": {"duration": 54.2, "split": [129.8, 184.0], "token": {"<s0>": 0, "<e0>": 9.4}}}

plus DIR/<id>.npy per video: (T, D) frame features (VTimeLLM: 100 x 768 CLIP ViT-L/14 features, float16), or one
(D,) / (1, D) vector for image records (a first turn with "<image>"). Each record becomes one sample of our format
(docs/design.md, "Sample schema") with no objects (N = 0) and `conversations` whose timestamp tokens are replaced the
way VTimeLLM's dataset does: min(round(t / duration * 100), 99), two digits. Records without `meta` (the
VideoChatGPT part of stage 3) keep their text as is.

What the features cannot tell is filled with neutral values and said in `provenance`: width = height = 1 (no
pixels), fps = T / duration (the T feature rows spread over the clip; 1 with no duration), duration 0 when the
record has none. A repeated id gets `#k` appended to its video_id (the features are still read from <id>.npy).
A record that cannot be converted (no features, a timestamp token without a value, malformed turns) is a reject
row of its shard with the reason; rows are grouped into shards by position, `--rows-per-shard` per shard.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from annotate.errors import ConfigError, PiteError, SchemaError
from annotate.schema import Sample, build_sample
from model.conversation import frame_index

TOKEN_PREFIXES = ("<s", "<e")


def vtimellm_timestamp(t: float, duration: float) -> str:
    """VTimeLLM's `convert`: two-digit min(round(t / duration * 100), 99) (= model.conversation.frame_index)."""
    return f"{frame_index(float(t), float(duration)):02d}"


def replace_tokens(conversations: list[dict], meta: Optional[dict], where: str) -> list[dict]:
    """The turns with meta.token's <sN>/<eN> replaced by frame indices; a token left in the text is an error."""
    import re

    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise SchemaError(f"{where}: conversations[{i}] needs string 'from' and 'value'")
        turns.append({"from": turn["from"], "value": turn["value"]})
    tokens = (meta or {}).get("token") or {}
    if tokens:
        duration = (meta or {}).get("duration")
        if not isinstance(duration, (int, float)) or duration <= 0:
            raise SchemaError(f"{where}: meta.token needs a positive meta.duration, got {duration!r}")
        for token, t in tokens.items():
            if not isinstance(t, (int, float)):
                raise SchemaError(f"{where}: meta.token[{token!r}] is not a number of seconds")
            value = vtimellm_timestamp(t, duration)
            for turn in turns:
                turn["value"] = turn["value"].replace(token, value)
    left = [m for turn in turns for m in re.findall(r"<[se]\d+>", turn["value"])]
    if left:
        raise SchemaError(f"{where}: timestamp token {left[0]} has no value in meta.token")
    return turns


def is_image_record(conversations: list[dict]) -> bool:
    return bool(conversations) and "<image>" in str(conversations[0].get("value", ""))


def record_to_sample(record: dict, features: str | Path, video_id: Optional[str] = None) -> Sample:
    """One VTimeLLM record -> a PiTe sample (N = 0, conversations with frame indices)."""
    if not isinstance(record, dict) or not isinstance(record.get("id"), (str, int)):
        raise SchemaError("record: needs an 'id'")
    rid = str(record["id"])
    where = f"record {rid!r}"
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise SchemaError(f"{where}: needs a non-empty 'conversations' list")
    meta = record.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise SchemaError(f"{where}: 'meta' is not an object")
    turns = replace_tokens(conversations, meta, where)
    path = Path(features) / f"{rid}.npy"
    if not path.is_file():
        raise SchemaError(f"{where}: no features {path}")
    try:
        feat = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SchemaError(f"{where}: {path} is not a readable .npy ({exc})") from None
    feat = np.asarray(feat)
    if feat.ndim == 1:
        feat = feat[None]
    if feat.ndim != 2 or not np.issubdtype(feat.dtype, np.floating):
        raise SchemaError(f"{where}: {path} has shape {feat.shape} {feat.dtype}, expected (T, D) floats")
    if is_image_record(turns) and len(feat) != 1:
        raise SchemaError(f"{where}: an <image> record needs one feature row, {path} has {len(feat)}")
    t = len(feat)
    duration = float((meta or {}).get("duration") or 0.0)
    fps = t / duration if duration > 0 else 1.0
    provenance = {"converted_from": "vtimellm", "id": rid, "source": record.get("source"),
                  "split": (meta or {}).get("split"), "duration_known": duration > 0,
                  "image": is_image_record(turns), "features": path.name,
                  "size_known": False}
    return build_sample(
        video_id=video_id or rid, caption="", width=1, height=1, fps=fps, duration=duration,
        frame_indices=range(t), frame_times=[i / fps for i in range(t)], objects=[], traj=None, vis=None,
        feat=feat, provenance=provenance, conversations=turns)


def sample_to_record(sample: Sample) -> dict:
    """Back to VTimeLLM's layout (timestamps stay frame indices, so no meta.token): for checks and export."""
    prov = sample.meta.get("provenance") or {}
    record = {"id": prov.get("id", sample.meta["video_id"]), "conversations": sample.meta.get("conversations", [])}
    if prov.get("source") is not None:
        record["source"] = prov["source"]
    if sample.meta.get("duration"):
        record["meta"] = {"duration": sample.meta["duration"]}
        if prov.get("split") is not None:
            record["meta"]["split"] = prov["split"]
    return record


def convert_vtimellm(json_path: str | Path, features: str | Path, out: str | Path, rows_per_shard: int = 1000,
                     progress: bool = True) -> dict:
    """Write RUN_DIR/shards, index, rejects and stats.json; returns the stats."""
    from pipelines.progress import job_bar

    from pipelines.shards import ShardWriter, open_index, open_rejects, shard_done

    t0 = time.perf_counter()
    path = Path(json_path)
    if not path.is_file():
        raise ConfigError(f"--json: {path} not found")
    if not Path(features).is_dir():
        raise ConfigError(f"--features: {features} is not a directory")
    if rows_per_shard < 1:
        raise ConfigError(f"--rows-per-shard: must be >= 1, got {rows_per_shard}")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--json: {path} is not valid JSON ({exc})") from None
    if not isinstance(records, list):
        raise ConfigError(f"--json: {path} must hold a list of records")
    out = Path(out)
    seen: Counter = Counter()
    ids = []
    for rec in records:  # ids first, so a record's video_id does not depend on which shard runs
        rid = str(rec.get("id")) if isinstance(rec, dict) else "?"
        ids.append(rid if seen[rid] == 0 else f"{rid}#{seen[rid]}")
        seen[rid] += 1
    n_shards = (len(records) + rows_per_shard - 1) // rows_per_shard
    for s in job_bar(range(n_shards), desc="convert", unit="shard", enabled=progress):
        if shard_done(out, s):
            continue  # resume: a shard whose three files exist is kept
        with ShardWriter(out, s) as writer:
            for row in range(s * rows_per_shard, min(len(records), (s + 1) * rows_per_shard)):
                try:
                    writer.add(record_to_sample(records[row], features, ids[row]))
                except SchemaError as exc:
                    writer.reject(ids[row], row, "convert", str(exc))
    stats = {"input": len(records), "written": open_index(out).count_rows(), "rejected": open_rejects(out).count_rows(),
             "shards": n_shards, "source": str(path), "features": str(features),
             "seconds": round(time.perf_counter() - t0, 3)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="pite convert", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="format", required=True)
    v = sub.add_parser("vtimellm", help="VTimeLLM / LLaVA-style conversation JSON + per-video .npy features")
    v.add_argument("--json", required=True, help="the data JSON (a list of records)")
    v.add_argument("--features", required=True, help="dir of <id>.npy features")
    v.add_argument("--out", required=True, help="run dir to write (shards/, index/, rejects/, stats.json)")
    v.add_argument("--rows-per-shard", type=int, default=1000)
    v.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        stats = convert_vtimellm(args.json, args.features, args.out, args.rows_per_shard, not args.no_progress)
    except PiteError as exc:
        print(f"pite convert: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
