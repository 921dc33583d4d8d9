"""The annotation job's settings: the per-clip stage settings (`annotate.config`) plus I/O, execution and cluster keys.

See docs/design.md, "Execution on a cluster", for how the execution keys map onto Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.storage import check_url, is_url
from pipelines.config import config_hash, to_dict

EXECUTORS = ("ray", "local")
QUALITY_COLUMNS = ("ground_recall", "box_iou", "mask_iou", "delta_avg", "oa", "aj")


@dataclass
class SynthSettings:
    n: int = 0  # > 0: generate this many synthetic clips into `out` first when its manifest is missing
    seed: int = 0
    out: str = "data/synth-demo"
    workers: int = 0  # processes rendering clips (0: one per CPU core); the clips do not depend on it


@dataclass
class CardSettings:
    """What the dataset card (OUT/README.md) cannot know from the run; left out of the card when empty."""

    license: str = ""  # the annotations' licence as the Hub spells it (cc-by-4.0, apache-2.0, ...); "" says not set
    pretty_name: str = ""
    source: str = ""  # where the videos and captions come from (e.g. "InternVid-10M-FLT")
    source_license: str = ""


@dataclass
class AnnotateJobConfig(AnnotateConfig):
    name: str = "annotate"  # run name: the default output dir is runs/annotate/<name>
    input: str = ""  # manifest (.jsonl/.csv/.parquet) or video2dataset tars, brace patterns allowed
    out: str = ""  # run dir; on a cluster an absolute path on shared storage, or an s3:// / gs:// URL
    staging: str = ""  # out= is a URL: the local folder shards are made in before upload ("" = a temp folder)
    rows_per_shard: int = 64
    batch_size: int = 4  # clips per actor call; only row metadata travels in and sample arrays out
    # --- execution: one actor runs a clip's whole chain (decode..features); see docs/design.md
    executor: str = "ray"  # ray: a pool of actors on a Ray cluster; local: one chain in this process, no Ray
    gpus_per_actor: float = 1.0  # GPUs one actor holds when a model stage runs on a GPU (device auto/cuda); may be
    #                              a fraction (two actors share a GPU at 0.5). 0 runs the model stages on CPUs.
    gpu_workers: int = 0  # GPU actors; 0 = as many as the cluster's GPUs hold (GPUs / gpus_per_actor)
    cpu_workers: int = 0  # actors of a CPU-only plan (the embedded backends); 0 = one per cluster CPU
    decode_threads: int = 2  # GPU actor: decoding threads of its own (and the CPUs it declares to Ray)
    actor_memory_gb: float = 0.0  # memory one actor declares to Ray; 0 = what its stages declare
    max_attempts: int = 2  # worker deaths with a row in flight (one at least with it alone) before it is a reject
    ray_address: str = ""  # "" = the cluster of `ray job submit`, else a local Ray
    num_cpus: int = 0  # local Ray only: CPUs to use (0 = all)
    num_gpus: int = -1  # local Ray only: GPUs to declare (-1 = what Ray detects)
    report_samples: int = 12  # rows drawn in report.html
    # The run fails (exit 1) when more than this share of its input rows are rejects; a run that writes no sample
    # fails whatever this is. 1.0 = only that.
    max_reject_share: float = 1.0
    progress: bool = True
    synth: SynthSettings = field(default_factory=SynthSettings)
    card: CardSettings = field(default_factory=CardSettings)
    # Stage names to fail on purpose (tests of the fault model): "<stage>:<video_id>:raise|exit".
    fault_injection: list[str] = field(default_factory=list)


# Settings that do not change the content of a sample: left out of the config hash (the samples' provenance and the
# resume check), so they may differ on resume. max_attempts and fault_injection only decide which rows are rejects.
NOT_HASHED = ("input", "out", "staging", "executor", "progress", "ray_address", "num_cpus", "num_gpus", "cpu_workers",
              "gpu_workers", "gpus_per_actor", "decode_threads", "actor_memory_gb", "report_samples", "synth", "name",
              "batch_size", "max_attempts", "fault_injection", "max_reject_share", "card")


def resolve_out(cfg: AnnotateJobConfig) -> Path | str:
    """The run's folder, or its bucket URL as given (a Path would fold its `//`)."""
    if is_url(cfg.out):
        return cfg.out.rstrip("/")
    return Path(cfg.out or f"runs/annotate/{cfg.name}")


def stage_config_hash(cfg) -> str:
    """Provenance hash of the settings that shape a sample: the `AnnotateConfig` fields only (no I/O, no cluster)."""
    names = {f.name for f in fields(AnnotateConfig)}
    return config_hash({k: v for k, v in to_dict(cfg).items() if k in names}, exclude=())


def check_settings(cfg: AnnotateJobConfig) -> None:
    """Settings a worker would trip over, as one-line ConfigErrors before anything starts."""
    from pipelines.annotate.faults import parse_faults
    from annotate.pipeline import STAGE_NAMES

    for key in ("rows_per_shard", "batch_size", "max_attempts", "decode_threads"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    for key in ("cpu_workers", "gpu_workers", "num_cpus", "report_samples", "gpus_per_actor", "actor_memory_gb"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {getattr(cfg, key)}")
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"executor: expected {' or '.join(EXECUTORS)}, got {cfg.executor!r}")
    if not 0.0 <= cfg.max_reject_share <= 1.0:
        raise ConfigError(f"max_reject_share: a share in [0, 1], got {cfg.max_reject_share}")
    if cfg.gpus_per_actor > 1 and cfg.gpus_per_actor != int(cfg.gpus_per_actor):
        raise ConfigError(f"gpus_per_actor: a fraction must be below 1 (Ray shares one GPU), got {cfg.gpus_per_actor}")
    parse_faults(cfg.fault_injection, STAGE_NAMES)
    for key in ("input", "out"):
        if is_url(getattr(cfg, key)):
            check_url(key, getattr(cfg, key))
