"""Noun phrases against the hand-labelled captions (tests/data/noun_phrases.jsonl): precision and recall of exact
character spans, overall and per caption style; prints one JSON object, and with --errors the captions it gets wrong.

    .venv/bin/python bench/nouns.py [--errors]

Labels follow the rules written down with the set: a phrase ends at its head noun, never holds a verb, splits at
coordination, apposition and post-modifiers (except quantity "of": "a group of people"), and leaves out pronouns
and the stop nouns (annotate/config.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LABELS = REPO / "tests" / "data" / "noun_phrases.jsonl"


def load_labels(path: Path = LABELS) -> list[dict]:
    """Rows {style, caption, spans: [(start, end)]}: each labelled phrase found after the previous one."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        spans, at = [], 0
        for phrase in row["phrases"]:
            start = row["caption"].find(phrase, at)
            if start < 0:
                raise ValueError(f"{path}:{number}: phrase {phrase!r} not found in order in the caption")
            spans.append((start, start + len(phrase)))
            at = start + len(phrase)
        rows.append({"style": row["style"], "caption": row["caption"], "spans": spans})
    return rows


def score(rows: list[dict], predicted: list[list[tuple[int, int]]]) -> dict:
    """Exact-span precision and recall, overall and per style."""
    counts = defaultdict(lambda: [0, 0, 0])  # style -> [true positives, predicted, labelled]
    for row, pred in zip(rows, predicted):
        hits = len(set(pred) & set(row["spans"]))
        for key in ("all", row["style"]):
            c = counts[key]
            c[0], c[1], c[2] = c[0] + hits, c[1] + len(pred), c[2] + len(row["spans"])
    return {key: {"precision": round(tp / max(p, 1), 4), "recall": round(tp / max(n, 1), 4), "captions":
                  sum(r["style"] == key or key == "all" for r in rows)}
            for key, (tp, p, n) in sorted(counts.items())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--errors", action="store_true", help="print each caption with a wrong or missed phrase")
    args = ap.parse_args(argv)
    from annotate.config import NounsConfig
    from annotate.nouns import extract_phrases, load_spacy

    cfg = NounsConfig()
    rows = load_labels()
    nlp = load_spacy(cfg.model)
    found = extract_phrases(nlp, [r["caption"] for r in rows], cfg.stop_nouns)
    predicted = [[(p.start, p.end) for p in phrases] for phrases in found]
    if args.errors:
        for row, pred in zip(rows, predicted):
            if set(pred) != set(row["spans"]):
                text = row["caption"]
                print(f"[{row['style']}] {text}\n  want {[text[a:b] for a, b in row['spans']]}\n"
                      f"  got  {[text[a:b] for a, b in pred]}", file=sys.stderr)
    print(json.dumps({"labels": str(LABELS.relative_to(REPO)), "model": cfg.model, **score(rows, predicted)}))


if __name__ == "__main__":
    main()
