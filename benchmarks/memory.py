"""Memory: peak resident memory of DDO training vs MLE (EDM) training on the same 2B samples per step.

Each measurement is a fresh child process (``--child ddo|mle``): it imports, builds the network(s) (DDO:
target + frozen reference; MLE: one network) and the batch, reads its own ``ru_maxrss`` (the baseline),
runs a few training steps (Adam's state appears at the first), and reads ``ru_maxrss`` again. The figure is
(peak − baseline) of DDO / (peak − baseline) of MLE: the memory that training adds. tracemalloc does not
see torch's allocations, and a parent's ru_maxrss mixes processes, hence one child per measurement.
Children alternate DDO, MLE, DDO, MLE … Target: ≤ 1.3.

Also reported: the ratio of peak − (baseline after imports only), which counts the reference's weights.

    python -m benchmarks.memory [--quick] [--presets digits,cifar]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time

from .common import ROOT, child_command, medians, parser, ratio_figure, setup_threads, write_result
from .presets import presets_from


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(kind: str, preset_name: str, quick: bool, steps: int) -> None:
    imports = maxrss_mib()
    from .presets import preset
    from .steps import DDOStep, MLEStep

    p = preset(preset_name, quick)
    step = DDOStep(p) if kind == "ddo" else MLEStep(p)
    built = maxrss_mib()
    for _ in range(steps):
        step()
    peak = maxrss_mib()
    print(json.dumps({"imports_mib": imports, "built_mib": built, "peak_mib": peak}))


def run_child(kind: str, preset_name: str, quick: bool, steps: int, threads: int) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = child_command("memory", ["--child", kind], preset_name, steps, threads, quick)
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"memory child {kind}/{preset_name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--child", choices=["ddo", "mle"], default=None)
    p.add_argument("--steps", type=int, default=None, help="training steps per child (default 3; --quick: 1)")
    args = p.parse_args(argv)
    args.steps = args.steps or (1 if args.quick else 3)
    threads = setup_threads(args.threads)
    if args.child:
        child(args.child, args.presets, args.quick, args.steps)
        return
    started = time.perf_counter()
    repeats = args.repeats or (1 if args.quick else 3)
    figures, extra = [], {}
    settings = {"threads": threads, "repeats": repeats, "steps_per_child": args.steps, "presets": {}}
    for pr in presets_from(args.presets, False, default=("digits",) if args.quick else ("digits", "cifar")):
        runs = {"ddo": [], "mle": []}
        for _ in range(repeats):
            for kind in ("ddo", "mle"):
                # the children always run the full preset: at --quick's tiny sizes training adds nothing
                # measurable above the import/build high-water mark (a 0 MiB denominator)
                runs[kind].append(run_child(kind, pr.name, False, args.steps, threads))
        train = {k: [r["peak_mib"] - r["built_mib"] for r in v] for k, v in runs.items()}
        total = {k: [r["peak_mib"] - r["imports_mib"] for r in v] for k, v in runs.items()}
        settings["presets"][pr.name] = {"B": pr.batch, "samples_per_step": 2 * pr.batch, "shape": pr.shape}
        med = medians(train)
        note = f"peak − baseline after build: DDO {med['ddo']:.1f} MiB, MLE {med['mle']:.1f} MiB"
        figures.append(ratio_figure(f"memory DDO/MLE training peak ({pr.name})", train, "ddo", "mle", 1.3, note=note))
        figures.append(
            ratio_figure(
                f"memory DDO/MLE incl. weights ({pr.name})",
                total,
                "ddo",
                "mle",
                note="peak − baseline after imports (counts the reference copy)",
            )
        )
        extra[pr.name] = {"runs": runs}
    write_result("memory", settings, figures, extra, args.out, started)


if __name__ == "__main__":
    main()
