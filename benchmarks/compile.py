"""torch.compile on/off, for the DDO training step and for the Heun sampler.

- training: ``DDOStep`` with target and reference eager vs both ``torch.compile``d (default mode,
  inductor). The first compiled step (compilation of the target's forward+backward and of the
  reference's no-grad forward) is timed on its own; then eager and compiled steps alternate.
- sampler: ``heun_sampler`` on the eager network vs on ``torch.compile(network)`` (the sampler itself
  is unchanged: the compiled network is passed as the denoiser). First call timed on its own.

Figures: compiled / eager time per step and per sampler call (< 1: compile helps); compile seconds.
If compilation fails (no C compiler, …) the error is recorded in ``extra.errors`` and no figure is made.
``--quick`` uses the ``eager`` backend (dynamo tracing only, no code generation: seconds instead of a
minute or more), so it checks the plumbing, not the speed.

    python -m benchmarks.compile [--quick] [--presets digits,cifar]
"""

from __future__ import annotations

import time
import traceback

import torch

from ddo_lightning.samplers import HeunSampler, heun_sampler, seeded_normal

from .common import Figure, interleaved, parser, ratio_figure, setup_threads, summary, write_result
from .presets import presets_from
from .steps import DDOStep


def first_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    started = time.perf_counter()
    threads = setup_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    figures, extra = [], {"errors": {}, "compile_seconds": {}}
    backend = "eager" if args.quick else True
    settings = {
        "threads": threads,
        "repeats": repeats,
        "backend": "eager (quick: tracing only)" if args.quick else "inductor",
        "presets": {},
    }
    for p in presets_from(args.presets, args.quick, default=("toy2d",) if args.quick else ("digits",)):
        torch._dynamo.reset()
        settings["presets"][p.name] = {"B": p.batch, "sample_batch": p.sample_batch, "sample_steps": p.sample_steps}
        # ---- training step
        try:
            eager, compiled = DDOStep(p), DDOStep(p, compile=backend)
            eager()
            extra["compile_seconds"][f"train ({p.name})"] = first_call(compiled)
            t = interleaved({"eager": eager, "compiled": compiled}, repeats, warmup=1)
            figures.append(
                ratio_figure(
                    f"compile train step compiled/eager ({p.name})",
                    t,
                    "compiled",
                    "eager",
                    note=f"eager {summary(t['eager'])['median'] * 1e3:.1f} ms; first compiled step "
                    f"{extra['compile_seconds'][f'train ({p.name})']:.1f} s",
                )
            )
        except Exception as err:  # noqa: BLE001 -- report why compile does not work here
            extra["errors"][f"train ({p.name})"] = "".join(traceback.format_exception_only(err)).strip()[-2000:]
        # ---- sampler
        try:
            net = p.network().eval().requires_grad_(False)
            cnet = torch.compile(net) if backend is True else torch.compile(net, backend=backend)
            sampler = HeunSampler(num_steps=p.sample_steps)
            noise = seeded_normal(list(range(p.sample_batch)), p.shape)
            labels = p.labels(p.sample_batch)
            runs = {
                "eager": lambda: heun_sampler(net, noise, labels, sampler.sigmas),
                "compiled": lambda: heun_sampler(cnet, noise, labels, sampler.sigmas),
            }
            runs["eager"]()
            extra["compile_seconds"][f"sampler ({p.name})"] = first_call(runs["compiled"])
            diff = (runs["eager"]() - runs["compiled"]()).abs().max().item()
            t = interleaved(runs, repeats, warmup=1)
            figures.append(
                ratio_figure(
                    f"compile sampler compiled/eager ({p.name})",
                    t,
                    "compiled",
                    "eager",
                    note=f"batch {p.sample_batch}, {sampler.nfe} NFE: eager {summary(t['eager'])['median'] * 1e3:.1f} ms; "
                    f"first compiled call {extra['compile_seconds'][f'sampler ({p.name})']:.1f} s; "
                    f"max |Δx| {diff:.1e}",
                )
            )
            extra.setdefault("sampler_max_abs_diff", {})[p.name] = diff
        except Exception as err:  # noqa: BLE001
            extra["errors"][f"sampler ({p.name})"] = "".join(traceback.format_exception_only(err)).strip()[-2000:]
    for k, v in extra["compile_seconds"].items():
        figures.append(Figure(f"compile time, first call ({k})", [v], "s", None))
    for k, v in extra["errors"].items():
        print(f"[compile] {k} failed: {v}")
    write_result("compile", settings, figures, extra, args.out, started)


if __name__ == "__main__":
    main()
