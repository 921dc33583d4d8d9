"""`pite ablate`: train and evaluate a grid of variants x seeds, then summarise it with error bars.

    pite ablate --config configs/ablation/demo.yaml [--variants no_stage2 ...] [--seeds 0 1] [key=value ...]
    make ablation

Writes OUT (runs/ablation/<name>/): results.jsonl (one line per run), summary.json, summary.md, ablation.png and
runs/<variant>/seed-<S>/. A rerun skips the finished runs and continues an interrupted one; `--summary-only`
rewrites the summary and picture from results.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from annotate.errors import PiteError
from pipelines.ablate.config import load_ablation_config, resolve_out, select
from pipelines.ablate.grid import run_grid
from pipelines.ablate.plot import draw
from pipelines.ablate.stats import LOWER_IS_BETTER, write_summary
from pipelines.config import parse_cli


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pite ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML in configs/ablation/")
    p.add_argument("--variants", nargs="+", help="only these variants (the reference variant always runs)")
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    p.add_argument("--summary-only", action="store_true", help="no training: summarise results.jsonl again")
    p.add_argument("overrides", nargs="*", help="key=value of the ablation config, e.g. out=runs/ablation/x")
    args = parse_cli(p, argv)
    try:
        cfg = select(load_ablation_config(args.config, args.overrides), args.variants, args.seeds)
        out = resolve_out(cfg)
        results = out / "results.jsonl" if args.summary_only else run_grid(cfg)
        if not results.is_file():
            raise PiteError(f"{results}: no results yet (run without --summary-only first)")
        summary = write_summary(results, cfg.reference)
        picture = draw(summary, cfg.plot, out / "ablation.png", LOWER_IS_BETTER)
    except KeyboardInterrupt:
        print("pite ablate: interrupted; the same command continues where it stopped", file=sys.stderr)
        return 130
    except PiteError as exc:
        print(f"pite ablate: {exc}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    print(f"outputs: {out}/ (results.jsonl, summary.json, summary.md, {picture.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
