"""Step cost: a DDO training step (B real + B fake) vs an EDM denoising step on the same 2B samples.

Both run objective → backward → Adam on the same network. A DDO step adds one no-grad 2B forward of
the reference to an EDM step; with forward ≈ 1 unit and backward ≈ 2 the floor is (3 + 1) / 3 = 4/3.
The measured floor uses this machine's own units: (T_edm + T_fwd_nograd) / T_edm, with T_fwd_nograd a
no-grad 2B forward timed in the same interleaved loop. Target: ratio ≤ 1.40.

    python -m benchmarks.step_cost [--quick] [--presets digits,cifar] [--repeats 7]
"""

from __future__ import annotations

import time

from .common import Figure, interleaved, parser, ratio_figure, setup_threads, summary, write_result
from .presets import num_params, presets_from
from .steps import DDOStep, Forward, MLEStep

REPS = {"toy2d": 20, "digits": 2, "cifar": 1}  # calls per timing sample (short steps are averaged)


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    started = time.perf_counter()
    threads = setup_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 7)
    figures, extra, settings = [], {}, {"threads": threads, "repeats": repeats, "warmup": 1, "presets": {}}
    for p in presets_from(args.presets, args.quick):
        ddo, mle = DDOStep(p), MLEStep(p)
        fwd = Forward(mle.net, p, mle.samples_per_step, grad=False)
        reps = 1 if args.quick else REPS[p.name]
        t = interleaved({"ddo": ddo, "edm": mle, "fwd": fwd}, repeats, warmup=1, reps_per_sample=reps)
        floor = [(e + f) / e for e, f in zip(t["edm"], t["fwd"])]
        settings["presets"][p.name] = {
            "B": p.batch,
            "samples_per_step": 2 * p.batch,
            "shape": p.shape,
            "params": num_params(ddo.target),
            "calls_per_sample": reps,
        }
        figures.append(
            ratio_figure(
                f"step cost DDO/EDM ({p.name})",
                t,
                "ddo",
                "edm",
                1.40,
                "<=",
                f"2B={2 * p.batch}; EDM step {summary(t['edm'])['median'] * 1e3:.1f} ms, "
                f"DDO step {summary(t['ddo'])['median'] * 1e3:.1f} ms",
            )
        )
        figures.append(
            Figure(
                f"step cost measured floor (EDM+fwd)/EDM ({p.name})",
                floor,
                "x",
                None,
                note="4/3 if backward = 2 forwards; this machine's own forward/backward ratio",
            )
        )
        sums = {"ddo": t["ddo"], "edm+fwd": [e + f for e, f in zip(t["edm"], t["fwd"])]}
        note = "1.0 = nothing beyond the one extra forward"
        figures.append(ratio_figure(f"step cost DDO/(EDM+fwd) ({p.name})", sums, "ddo", "edm+fwd", note=note))
        extra[p.name] = {"seconds": {k: summary(v) for k, v in t.items()}}
        del ddo, mle, fwd
    write_result("step_cost", settings, figures, extra, args.out, started)


if __name__ == "__main__":
    main()
