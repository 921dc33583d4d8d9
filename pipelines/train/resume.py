"""What a training run finds in its `out=` before it starts: a run to continue, a finished one, or another config.

The same command continues where it stopped, as `pite annotate` does: finished stages are kept, the unfinished one
resumes from its newest `checkpoints/step-N/`, and a finished run is left as it is. Starting over is explicit
(`fresh=true`, or a new `out=`). A run of another config is refused with one line that names the keys that differ,
so two configs never mix into one set of checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import yaml

from annotate.errors import ConfigError
from pipelines.config import to_dict
from pipelines.train.config import TrainConfig, resolve_out
from pipelines.train.state import newest

# Settings that do not change what the run learns, so they may differ when it continues: where it goes, how it is
# launched and logged, the test hooks, and the held-out evaluation after training. `num_workers` is checked by the
# step checkpoint itself (its data position is per rank). Prefixes cover a whole section (`eval.data`).
NOT_COMPARED = ("name", "out", "fresh", "device", "launcher", "num_workers", "cpus_per_worker", "ray_address",
                "ray_storage", "log_every", "save_every", "keep_checkpoints", "stop_at", "kill_at", "max_failures",
                "progress", "tensorboard", "eval", "speed")
# Keys holding paths: compared as absolute paths, so `data=runs/x` and the Ray launcher's `/abs/runs/x` agree.
PATH_KEYS = ("data", "init_from", "base.llm", "base.tokenizer")


def stage_done(stage_dir: Path) -> bool:
    meta = stage_dir / "pite.json"
    return meta.is_file() and bool(json.loads(meta.read_text()).get("extra", {}).get("complete"))


def run_finished(cfg: TrainConfig, out: Path) -> bool:
    """Every stage complete, OUT/final and train.json written: rerunning has nothing to do."""
    return ((out / "train.json").is_file() and (out / "final" / "pite.json").is_file()
            and all(stage_done(out / s.name) for s in cfg.stages))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"stages": [{"optim": {"lr": 1}}]} -> {"stages.0.optim.lr": 1}: the keys a user writes as overrides."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: list(value) if isinstance(value, tuple) else value}
    flat: dict[str, Any] = {}
    for key, sub in items:
        flat.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _compared(flat: dict[str, Any]) -> dict[str, Any]:
    kept = {}
    for key, value in flat.items():
        if any(key == n or key.startswith(n + ".") for n in NOT_COMPARED):
            continue
        is_path = key in PATH_KEYS or (key.startswith("stages.") and key.endswith(".data"))
        kept[key] = os.path.abspath(value) if is_path and isinstance(value, str) and value else value
    return kept


def config_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """"key: saved -> now" for every compared key whose value differs from the saved config's. A key only the saved
    config has is not counted (an older trainer's setting), except a whole stage this config no longer has."""
    before, now = _compared(flatten(saved)), _compared(flatten(to_dict(cfg)))
    stages_now = {k.split(".")[1] for k in now if k.startswith("stages.")}
    stages_before = {k.split(".")[1] for k in before if k.startswith("stages.")}
    diffs = [f"{k}: {before[k]} -> {v}" for k, v in now.items() if k in before and before[k] != v]
    diffs += [f"stages.{i}: added" for i in sorted(stages_now - stages_before, key=int)]
    diffs += [f"stages.{i}: removed" for i in sorted(stages_before - stages_now, key=int)]
    return diffs


def check_out(cfg: TrainConfig, out: Path) -> None:
    """Refuse, in one line, to continue a run of another config in `out` (fresh=true or another out= starts over)."""
    saved_file = out / "config.yaml"
    if cfg.fresh or not saved_file.is_file():
        return
    try:
        saved = yaml.safe_load(saved_file.read_text()) or {}
    except yaml.YAMLError:
        saved = None
    if not isinstance(saved, dict):
        raise ConfigError(f"out: {saved_file} is unreadable; fresh=true starts over in {out}, or choose another out=")
    diffs = config_differences(saved, cfg)
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ConfigError(f"out: {out} holds a run of another config ({'; '.join(diffs[:3])}{more}); the same "
                          f"command with fresh=true starts over there, or choose another out=")


def fresh_start(cfg: TrainConfig) -> None:
    """What `fresh=true` drops before the run starts: the stages' dirs, OUT/final, train.json, eval.json, the old
    config.yaml (the Ray launcher's workers check against it) and a tiny base's tokenizer (retrained from the data)."""
    out = resolve_out(cfg)
    for name in [s.name for s in cfg.stages] + ["final", "tokenizer"]:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("train.json", "eval.json", "config.yaml"):
        (out / name).unlink(missing_ok=True)


def where_it_stands(cfg: TrainConfig, out: Path) -> str:
    """One phrase for the console: which stages are done and where the unfinished one continues from."""
    parts = []
    for stage in cfg.stages:
        stage_dir = out / stage.name
        if stage_done(stage_dir):
            parts.append(f"{stage.name} finished")
            continue
        ckpt: Optional[Path] = newest(stage_dir)
        if ckpt is not None:
            step = int(ckpt.name.split("-")[-1])
            parts.append(f"{stage.name} continues from step {step} ({ckpt})")
        else:
            parts.append(f"{stage.name} starts at step 0 (no step checkpoint: save_every={cfg.save_every})")
        break
    return "; ".join(parts)


def has_progress(cfg: TrainConfig, out: Path) -> bool:
    """Something of an earlier run that the same command would continue from (a finished stage or a checkpoint)."""
    return any(stage_done(out / s.name) or newest(out / s.name) is not None for s in cfg.stages)
