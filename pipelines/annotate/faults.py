"""Fault injection for tests of the fault model: `fault_injection: ["<stage>:<video_id>:raise|exit"]`."""

from __future__ import annotations

import os

from annotate.errors import ConfigError


def parse_faults(specs: list[str], names) -> dict[tuple[str, str], str]:
    """"<stage>:<video_id>:raise|exit" for the stages in `names` (a video_id may hold colons: the kind is last)."""
    from annotate.pipeline import STAGE_NAMES

    faults = {}
    for spec in specs:
        stage, _, rest = spec.partition(":")
        video_id, _, kind = rest.rpartition(":")
        if stage not in STAGE_NAMES or kind not in ("raise", "exit") or not video_id:
            raise ConfigError(f"fault_injection: {spec!r}: expected <stage>:<video_id>:raise|exit with a stage "
                              f"among {', '.join(STAGE_NAMES)}")
        if stage in names:
            faults[(stage, video_id)] = kind
    return faults


def inject_faults(faults: dict[tuple[str, str], str], stage: str, items) -> None:
    for it in items:
        kind = faults.get((stage, it.video_id))
        if kind == "exit":
            os._exit(1)  # simulates a decoder segfault / OOM kill of the worker process
        if kind == "raise":
            raise RuntimeError(f"injected fault in stage {stage} (row {it.row})")
