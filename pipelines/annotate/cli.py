"""`pite annotate --config CONFIG [input=MANIFEST] [out=DIR] [key=value ...]`: a manifest in, PiTe shards out.

On a cluster: `ray job submit --working-dir . -- python -m pipelines.annotate --config ... input=/abs out=/abs`.

Exit status: 0 when the run wrote its samples; 1 when it wrote none from a non-empty input, or rejected more than
`max_reject_share` of its rows (the reason on stderr, the rows in OUT/rejects/); 2 for a config, input or
preflight error (nothing ran).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from annotate.errors import PiteError
from pipelines.annotate.config import AnnotateJobConfig, resolve_out
from pipelines.annotate.driver import run
from pipelines.annotate.stats import run_failure, summary_line
from pipelines.config import load_config, parse_cli


def interrupted(cfg) -> str:
    """The one line a Ctrl-C ends with: what is on disk, and that the same command resumes."""
    from pipelines.shards import list_done_shards

    if cfg is None:
        return "interrupted before it started: nothing was written"
    out = resolve_out(cfg)
    if isinstance(out, str):  # a bucket: the shards uploaded whole are kept
        return f"interrupted; the complete shards in {out} are kept, and the same command resumes from them"
    done = len(list_done_shards(out)) if out.is_dir() else 0
    return f"interrupted; {done} complete shard(s) in {out} are kept, and the same command resumes from them"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pite annotate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML in configs/annotate/")
    p.add_argument("overrides", nargs="*",
                   help="key=value, e.g. input=manifest.jsonl out=runs/x ground.box_threshold=0.3")
    args = parse_cli(p, argv)
    cfg = None
    try:
        cfg = load_config(AnnotateJobConfig, args.config, args.overrides)
        if not cfg.out:
            cfg.name = cfg.name if cfg.name != "annotate" else Path(args.config).stem
        stats = run(cfg)
    except PiteError as exc:
        for line in str(exc).splitlines():  # a preflight lists each problem on a line of its own
            print(f"pite annotate: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pite annotate: {interrupted(cfg)}", file=sys.stderr)
        return 130
    print(summary_line(stats, resolve_out(cfg)))
    failure = run_failure(stats, cfg.max_reject_share)
    if failure:
        print(f"pite annotate: {failure} (see {resolve_out(cfg)}/rejects/ and report.html)", file=sys.stderr)
        return 1
    return 0
