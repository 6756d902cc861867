"""Combine benchmarks/results/*.json into one Markdown table (benchmarks/results/summary.md).

python -m benchmarks.summary [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import pathlib

from .common import RESULTS, fmt

ORDER = ("step_cost", "sampler", "memory", "fake_samples", "scaling", "compile")


def load(out: pathlib.Path) -> list[dict]:
    found = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return [found[k] for k in ORDER if k in found] + [v for k, v in sorted(found.items()) if k not in ORDER]


def render(results: list[dict]) -> str:
    if not results:
        return "# Benchmarks\n\nNo results yet: run `make bench`.\n"
    m = results[0]["machine"]
    lines = [
        "# Benchmarks (CPU)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['ram_gib']} GiB RAM; "
        f"Python {m['python']}, torch {m['torch']}; {m['platform']}.",
        "Every figure is a ratio of things measured side by side in one process (interleaved, after warm-up), "
        "except throughputs and compile times; min / median / max over repeats; the verdict uses the median.",
        "",
        "| benchmark | figure | unit | min | median | max | n | target | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for f in r["figures"]:
            target = "—" if f["target"] is None else f"{f['op']} {fmt(f['target'])}"
            met = "—" if f["met"] is None else ("yes" if f["met"] else "**no**")
            lines.append(
                f"| {r['name']} | {f['name']} | {f['unit']} | {fmt(f['min'])} | {fmt(f['median'])} | "
                f"{fmt(f['max'])} | {f['n']} | {target} | {met} |"
            )
    lines += [
        "",
        "| benchmark | command | threads | load avg at start | wall s | finished (UTC) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["settings"]
        lines.append(
            f"| {r['name']} | `{r['command']}` | {s.get('threads', '—')} | "
            f"{r['machine'].get('load_average_at_start')} | {r.get('wall_seconds')} | {r.get('finished_utc')} |"
        )
    notes = [(r["name"], f["name"], f["note"]) for r in results for f in r["figures"] if f.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {b} / {n}: {t}" for b, n, t in notes]
    errors = {f"{r['name']}: {k}": v for r in results for k, v in (r.get("extra", {}).get("errors") or {}).items()}
    if errors:
        lines += ["", "Errors:", ""] + [f"- {k}: `{v}`" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> pathlib.Path:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = pathlib.Path(args.out) if args.out else RESULTS
    path = out / "summary.md"
    text = render(load(out))
    path.write_text(text)
    print(text)
    print(f"[summary] wrote {path}")
    return path


if __name__ == "__main__":
    main()
