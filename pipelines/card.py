"""The dataset card of an annotation run: OUT/README.md in the Hugging Face dataset-card form (a YAML header the Hub
reads, then the description a person reads), written from stats.json's figures at the end of every run and rewritten
on resume. Optional fields stay out rather than being filled with placeholders; a licence nobody set says so.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CARD = "README.md"
# What each backend is, and the licence of its weights or code, as their model cards and repositories state them.
BACKENDS = {
    ("nouns", "spacy"): ("spaCy en_core_web_sm noun chunks", "MIT"),
    ("ground", "given"): ("boxes given in the manifest", None),
    ("ground", "groundingdino"): ("Grounding DINO (IDEA-Research), transformers", "Apache-2.0"),
    ("ground", "sam3"): ("SAM 3 (Meta), transformers: a detection and its mask per phrase", "SAM License (Meta)"),
    ("segment", "auto"): ("the grounder's own mask (no second model)", None),
    ("segment", "grabcut"): ("OpenCV GrabCut from each box", "Apache-2.0 (OpenCV)"),
    ("segment", "sam"): ("Segment Anything (Meta)", "Apache-2.0"),
    ("track", "lk"): ("OpenCV pyramidal Lucas-Kanade", "Apache-2.0 (OpenCV)"),
    ("track", "cotracker"): ("CoTracker3 offline (Meta)", "CC-BY-NC-4.0: non-commercial"),
    ("features", "thumbnail"): ("16x16 colour thumbnails (embedded)", None),
    ("features", "clip"): ("CLIP ViT-L/14 image embeddings (OpenAI)", "MIT"),
    ("confidence", "sam2_video"): ("SAM 2.1 video mask propagation (Meta), checking each track", "Apache-2.0"),
    ("confidence", "edgetam_video"): ("EdgeTAM video mask propagation (Meta), checking each track", "Apache-2.0"),
    ("confidence", "sam3_tracker"): ("SAM 3 tracker mask propagation (Meta), checking each track",
                                     "SAM License (Meta)"),
}
# What an embedded backend cannot do, for the card's limits.
LIMITS = {
    ("ground", "given"): "objects are only those the manifest gave boxes for",
    ("segment", "grabcut"): "masks come from a colour model around the box: they leak on low-contrast objects",
    ("track", "lk"): "Lucas-Kanade loses points on fast motion, blur and textureless surfaces, and does not re-find "
                     "an object after a long occlusion",
    ("features", "thumbnail"): "features are 16x16 colour thumbnails: they carry colour and layout, not shape or "
                               "texture; a model trained on them cannot name what it cannot see",
}
SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]


def size_category(n: int) -> str:
    return next((name for limit, name in SIZES if n < limit), "n>1T")


def card_header(stats: dict) -> dict:
    """The YAML header: licence, tasks, size, the WebDataset shards as the default config, tags."""
    card = stats["config"].get("card") or {}
    header = {"license": card.get("license") or "other"}
    if not card.get("license"):
        header["license_name"] = "not-set"
    header.update({
        "task_categories": ["video-text-to-text"],
        "size_categories": [size_category(stats["written"])],
        "tags": ["video", "point-tracking", "trajectories", "dense-video-captioning", "webdataset", "pite"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "shards/*.tar"}]}],
    })
    if card.get("pretty_name"):
        header["pretty_name"] = card["pretty_name"]
    return header


def stage_lines(stats: dict) -> list[str]:
    cfg = stats["config"]
    lines = []
    for stage in ("nouns", "ground", "segment", "track", "confidence", "features"):
        section = cfg.get(stage) or {}
        backend = section.get("propagation" if stage == "confidence" else "backend", "")
        if stage == "confidence" and backend in ("", "none"):
            continue  # no propagator: the confidence is computed, not a model
        what, licence = BACKENDS.get((stage, backend), (backend, None))
        weights = section.get("weights")
        parts = [f"- **{stage}**: `{backend}`, {what}"]
        if weights:
            parts.append(f"weights `{Path(str(weights)).name}`")
        if licence:
            parts.append(f"licence {licence}")
        lines.append("; ".join(parts))
    return lines


def histogram_lines(stats: dict) -> list[str]:
    objects = stats["objects_per_sample"]
    hist = stats["confidence_histogram"]
    lines = [f"Objects per sample: mean {objects['mean']}; " +
             ", ".join(f"{k} objects: {v}" for k, v in objects["counts"].items()), "",
             "| confidence | objects |", "|---|---|"]
    bins = hist["bins"]
    lines += [f"| {bins[i]:.1f}-{bins[i + 1]:.1f} | {n} |" for i, n in enumerate(hist["objects"])]
    if hist["unscored"]:
        lines.append(f"| no confidence | {hist['unscored']} |")
    return lines


def card_text(stats: dict, name: str) -> str:
    card = stats["config"].get("card") or {}
    cfg = stats["config"]
    header = yaml.safe_dump(card_header(stats), sort_keys=False).strip()
    out = [f"---\n{header}\n---", "", f"# {card.get('pretty_name') or name}", "",
           f"Video clips annotated with trajectories of the objects their captions name, in the PiTe format (PiTe, "
           f"ECCV 2024): per sample the caption, each noun phrase's box and mask on a grounding frame, K = "
           f"{cfg.get('num_points')} points per object tracked over T = {cfg.get('num_frames')} sampled frames, "
           f"their visibility, and per-frame features.", "",
           "## Size", "",
           f"{stats['written']} samples from {stats['input_rows']} input rows ({stats['rejected']} rejected) in "
           f"{stats['shards']} WebDataset shards (`shards/`), with a Parquet index (`index/`) and the rejects "
           f"(`rejects/`).", "", *histogram_lines(stats), ""]
    if not card.get("license"):
        out += ["## Licence", "", "The licence of these annotations is **not set**: set `card.license=` in the run's "
                "config (and each model's licence below still applies to what it made).", ""]
    if card.get("source"):
        out += ["## Source", "", card["source"] + (f" (licence {card['source_license']})"
                                                   if card.get("source_license") else ""), ""]
    out += ["## How it was made", "", *stage_lines(stats), "",
            f"Config hash `{stats['config_hash']}`; the full config is in `config.yaml`, the figures in `stats.json`.",
            ""]
    if stats.get("quality"):
        out += ["## Quality against ground truth", "", "| figure | mean |", "|---|---|",
                *[f"| {k} | {v:.3f} |" for k, v in stats["quality"].items()], ""]
    if stats["rejected"]:
        out += ["## Rejects", "", *[f"- {stage}: {n}" for stage, n in stats["rejected_by_stage"].items()],
                *[f"  - {reason}: {n}" for reason, n in list(stats.get("reject_reasons", {}).items())[:5]], ""]
    out += ["## Loading", "", "```python", "import pyarrow.dataset as ds  # the catalogue: one row per sample",
            "index = ds.dataset('index').to_table().to_pandas()", "",
            "import webdataset as wds  # the samples: json + traj.npy + vis.npy + feat.npy per key",
            "samples = wds.WebDataset('shards/pite-{000000..%06d}.tar', shardshuffle=False).decode()"
            % max(0, stats["shards"] - 1), "",
            "from datasets import load_dataset  # the .npy members come as nested lists",
            "ds = load_dataset('webdataset', data_files={'train': 'shards/*.tar'}, split='train')", "",
            "import duckdb  # pick samples by confidence and caption; shard and key say where they are",
            "duckdb.sql(\"SELECT shard, key, list_min(confidence) AS least FROM 'index/*.parquet' \"",
            "           \"WHERE list_min(confidence) >= 0.5 ORDER BY least DESC\").show()", "```", "",
            "With this repository's code, `pipelines.readers.from_datasets_row` and `from_webdataset` turn a sample "
            "into numpy arrays of the schema's dtypes and shapes.", "",
            "`pite inspect . --validate` reads every sample and checks it against the schema; `pite browse . --out "
            "site` writes a static site to sort and filter every row and look at samples with their masks and "
            "tracks drawn.", ""]
    limits = [text for (stage, backend), text in LIMITS.items() if (cfg.get(stage) or {}).get("backend") == backend]
    min_conf = (cfg.get("filter") or {}).get("min_confidence", 0.0)
    limits.append(f"objects below confidence {min_conf:g} were dropped" if min_conf
                  else "no object was dropped for low confidence (filter.min_confidence 0): filter on the index's "
                       "`confidence` column")
    out += ["## Limits", "", *[f"- {t}" for t in limits], ""]
    return "\n".join(out)


def write_card(out: Path, stats: dict, name: str) -> Path:
    """OUT/README.md from the run's stats (the same figures as stats.json)."""
    path = Path(out) / CARD
    path.write_text(card_text(stats, name), encoding="utf-8")
    return path
