"""The grid's summary: per variant and figure, the mean and sample standard deviation over seeds, and the paired
difference to the reference variant over the seeds both have (mean difference and its 95 % t interval).

Written out with the standard library: the only distribution needed is Student's t at 97.5 %, whose quantiles for
the few degrees of freedom a seed grid has are tabulated below (the project has no scipy).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

# Student's t, 0.975 quantile, by degrees of freedom (1..30); beyond 30 the normal's 1.96 is within 2 %.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

# Figures where lower is better (the others: higher is better).
LOWER_IS_BETTER = ("trajectory_L1", "traj_l1", "ratio_to_baseline")


def t975(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of b - a over pairs, its standard deviation and 95 % t interval (None without 2 pairs)."""
    diffs = [y - x for x, y in zip(a, b)]
    out = {"n": len(diffs), "mean_diff": statistics.fmean(diffs) if diffs else None, "sd_diff": None,
           "ci95": None}
    if len(diffs) >= 2:
        sd = statistics.stdev(diffs)
        half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
        out.update(sd_diff=sd, ci95=[out["mean_diff"] - half, out["mean_diff"] + half])
    return out


def summarise(lines: list[dict], reference: str) -> dict:
    """{"variants": {v: {figure: {mean, sd, n, seeds}}}, "paired": {v: {figure: paired()}}, "reference": ...}."""
    runs: dict[str, dict[int, dict]] = {}
    for line in lines:
        runs.setdefault(line["variant"], {})[int(line["seed"])] = line["figures"]
    figures = sorted({k for per in runs.values() for f in per.values() for k in f})
    summary = {"reference": reference, "figures": figures, "variants": {}, "paired": {},
               "wall_seconds": {v: sum(l["wall_seconds"] for l in lines if l["variant"] == v) for v in runs}}
    for variant, per_seed in runs.items():
        stats = {}
        for fig in figures:
            values = [f[fig] for _, f in sorted(per_seed.items()) if fig in f]
            stats[fig] = {"mean": statistics.fmean(values) if values else None,
                          "sd": statistics.stdev(values) if len(values) >= 2 else None, "n": len(values),
                          "values": values}
        summary["variants"][variant] = stats
        if variant == reference or reference not in runs:
            continue
        seeds = sorted(set(per_seed) & set(runs[reference]))
        summary["paired"][variant] = {
            fig: paired([runs[reference][s][fig] for s in seeds], [per_seed[s][fig] for s in seeds])
            for fig in figures if all(fig in runs[reference][s] and fig in per_seed[s] for s in seeds)}
    return summary


def verdict(p: dict, figure: str) -> str:
    """Whether the interval of the difference excludes 0, and which way that is better or worse."""
    if p["ci95"] is None:
        return "too few seeds"
    lo, hi = p["ci95"]
    if lo <= 0 <= hi:
        return "within noise"
    worse = (p["mean_diff"] > 0) == (figure in LOWER_IS_BETTER)
    return "worse" if worse else "better"


def markdown(summary: dict) -> str:
    ref = summary["reference"]
    figures = summary["figures"]
    head = "| variant | " + " | ".join(figures) + " |\n|---|" + "---|" * len(figures) + "\n"
    rows = []
    for variant, stats in summary["variants"].items():
        cells = []
        for fig in figures:
            s = stats[fig]
            cells.append("—" if s["mean"] is None else
                         f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["sd"] is not None else f"{s['mean']:.3f}")
        rows.append(f"| {variant} (n={max(s['n'] for s in stats.values())}) | " + " | ".join(cells) + " |")
    text = ["## Mean ± standard deviation over seeds", "", head + "\n".join(rows), "",
            f"## Paired difference to `{ref}` (variant − {ref}, same seeds): mean [95 % interval], verdict", ""]
    head2 = "| variant | " + " | ".join(figures) + " |\n|---|" + "---|" * len(figures) + "\n"
    rows2 = []
    for variant, per in summary["paired"].items():
        cells = []
        for fig in figures:
            p = per.get(fig)
            if p is None or p["mean_diff"] is None:
                cells.append("—")
            elif p["ci95"] is None:
                cells.append(f"{p['mean_diff']:+.3f}")
            else:
                cells.append(f"{p['mean_diff']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] {verdict(p, fig)}")
        rows2.append(f"| {variant} | " + " | ".join(cells) + " |")
    text += [head2 + "\n".join(rows2), "", "Lower is better for " + ", ".join(
        f for f in figures if f in LOWER_IS_BETTER) + "; higher for the others. \"within noise\": the interval holds 0."]
    return "\n".join(text) + "\n"


def write_summary(results: Path, reference: str) -> dict:
    lines = [json.loads(ln) for ln in results.read_text().splitlines() if ln.strip()]
    summary = summarise(lines, reference)
    (results.parent / "summary.json").write_text(json.dumps(summary, indent=1))
    (results.parent / "summary.md").write_text(markdown(summary))
    return summary
