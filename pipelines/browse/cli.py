"""`pite browse RUN --out DIR [--pages N] [--where SQL] [--keys K ...]`: write the run's site and say how to open it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from annotate.errors import PiteError
from pipelines.browse.site import Choice, build_site


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="pite browse", description=__doc__.split(":", 1)[1].strip())
    ap.add_argument("run", help="a run folder of `pite annotate` or `pite convert`")
    ap.add_argument("--out", required=True, help="the site's folder (pages already there are kept)")
    ap.add_argument("--pages", type=int, default=500,
                    help="sample pages to write at most, spread over the confidence range (default 500); every "
                         "row is in the table either way")
    ap.add_argument("--where", default=None,
                    help="DuckDB condition over the index picking the samples that get pages, e.g. "
                         "\"list_min(confidence) < 0.5 AND caption ILIKE '%%dog%%'\"")
    ap.add_argument("--keys", nargs="*", default=[], help="these samples get pages too")
    ap.add_argument("--frames", type=int, default=100, help="frames shown per sample at most (default 100)")
    ap.add_argument("--max-side", type=int, default=320, help="longer side of a shown frame in pixels")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes building pages")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    if args.pages < 0 or args.frames < 1 or args.max_side < 16:
        print("pite browse: --pages >= 0, --frames >= 1 and --max-side >= 16", file=sys.stderr)
        return 2
    try:
        summary = build_site(args.run, args.out, Choice(pages=args.pages, where=args.where, keys=args.keys),
                             max_frames=args.frames, max_side=args.max_side, workers=args.workers)
    except PiteError as exc:
        print(f"pite browse: {exc}", file=sys.stderr)
        return 2
    if summary["pages_without_frames"]:
        print(f"pite browse: {summary['pages_without_frames']} page(s) without frames, e.g. "
              f"{summary['first_frames_note']}", file=sys.stderr)
    print(f"pite browse: {summary['rows']} rows ({summary['kept']} samples, {summary['rejects']} rejects), "
          f"{summary['pages']} sample pages ({summary['pages_written']} written now) in {summary['seconds']} s: "
          f"open {summary['site']} or run `python -m http.server -d {args.out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
