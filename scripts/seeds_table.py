"""One table from several runs of one preset with different training seeds: reference, every round and the
MLE control, each a mean ± std over the runs of the run's own report mean (its report seed sets), and the
claims rule applied across runs.

    PYTHONPATH=src python scripts/seeds_table.py outputs/toy2d-s0 outputs/toy2d-s1 outputs/toy2d-s2 \\
        [--metrics precision mmd] [--markdown]

Each argument is a run directory whose ``summary.json`` has a ``report`` (``SelfPlay(report_seed_sets=N)``).
The claim across runs follows the per-run rule: a model is better than another on the monitored metric only
when the difference of their means exceeds 2·√(std₁² + std₂²), the stds taken over runs (ddof 1). With one
run the stds are those of its report seed sets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics


def report_means(summary: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """{model: {metric: (mean, std)}} of a run's report seed sets."""
    return {
        m["model"]: {k: (v["mean"], v["std"]) for k, v in m["metrics"].items()} for m in summary["report"]["models"]
    }


def combine(runs: list[dict]) -> tuple[list[str], dict[str, dict[str, tuple[float, float]]]]:
    """Models in report order and {model: {metric: (mean, std)}}: over runs (std of the run means, ddof 1),
    or a single run's report seed sets."""
    per = [report_means(s) for s in runs]
    models = list(per[0])
    if len(per) == 1:
        return models, per[0]
    out = {}
    for model in models:
        out[model] = {}
        for metric in per[0][model]:
            values = [p[model][metric][0] for p in per if model in p]
            out[model][metric] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return models, out


def claim(a: tuple[float, float], b: tuple[float, float], mode: str) -> tuple[bool, float, float]:
    """(a better than b, the margin in the better direction, the 2-std threshold)."""
    margin = (b[0] - a[0]) if mode == "min" else (a[0] - b[0])
    threshold = 2 * math.sqrt(a[1] ** 2 + b[1] ** 2)
    return margin > threshold, margin, threshold


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seeds_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (each with summary.json)")
    p.add_argument("--metrics", nargs="+", help="columns (default: the monitored metric first, then the rest)")
    p.add_argument("--markdown", action="store_true", help="a Markdown table")
    a = p.parse_args(argv)
    runs = []
    for r in a.runs:
        with open(os.path.join(r, "summary.json")) as f:
            runs.append(json.load(f))
    monitor, mode = runs[0]["monitor"], runs[0]["mode"]
    models, table = combine(runs)
    metrics = a.metrics or [monitor] + [m for m in table[models[0]] if m != monitor]
    over = f"{len(runs)} training seeds" if len(runs) > 1 else f"{runs[0]['report']['seed_sets']} report seed sets"
    print(f"mean ± std over {over}; monitored: {monitor} ({mode})")
    if a.markdown:
        print("| model | " + " | ".join(metrics) + " |")
        print("|---|" + "---|" * len(metrics))
    for model in models:
        cells = [f"{table[model][m][0]:.4g} ± {table[model][m][1]:.2g}" for m in metrics]
        print(f"| {model} | " + " | ".join(cells) + " |" if a.markdown else f"{model:<10} " + "  ".join(cells))
    for model in models:
        if model in ("reference", "control"):
            continue
        parts = []
        for other in ("reference", "control"):
            if other in table:
                ok, margin, thr = claim(table[model][monitor], table[other][monitor], mode)
                parts.append(
                    f"{'better' if ok else 'not shown better'} than the {other} (margin {margin:.3g}, 2 std {thr:.3g})"
                )
        print(f"{model}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
