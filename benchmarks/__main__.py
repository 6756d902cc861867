"""Run every benchmark (each in its own process), then write benchmarks/results/summary.md.

    python -m benchmarks [--quick] [--only step_cost,sampler] [--out DIR] [other flags passed to each]

``make bench`` runs this (after installing the ``bench`` extra without dependencies, see the Makefile).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from . import summary
from .common import ROOT

BENCHMARKS = ("step_cost", "sampler", "memory", "fake_samples", "scaling", "compile")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", default=None, help="comma-separated subset of " + ", ".join(BENCHMARKS))
    p.add_argument("--out", default=None)
    args, rest = p.parse_known_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    out = ["--out", args.out] if args.out else []
    failed, t_all = [], time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"[bench] {name} …", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *rest, *out], cwd=ROOT)
        print(f"[bench] {name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    summary.main(out)
    print(
        f"[bench] all done in {time.perf_counter() - t_all:.0f} s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
