"""Sampler efficiency: our EDM Heun sampler vs its floor and vs k-diffusion's ``sample_heun``.

For each preset, on one network (random init, eval, no grad) and one σ grid (``HeunSampler(N).sigmas``,
N steps = 2N − 1 NFE), interleaved:

- ``ours``: ``samplers.heun_sampler`` (state in float64 like EDM; the network sees float32);
- ``floor``: NFE back-to-back batched forwards of the same network on the same batch (no grad), at
  the σ values the sampler visits, on inputs prepared beforehand;
- ``kdiff32``: k-diffusion's ``sample_heun`` on the same σ grid, float32 state (its default);
- ``kdiff64``: the same with float64 state (the network wrapped to see float32, as ours).

Figures: efficiency = floor / ours (target ≥ 0.95); ours / kdiff32 time (target ≤ 1: at least as fast);
the cost of float64 state in the peer (kdiff64 / kdiff32) and ours / kdiff64. Agreement of the samples
(max |ours − kdiff|, absolute and relative to max |ours|) goes to ``extra.agreement``.

    python -m benchmarks.sampler [--quick] [--presets toy2d,digits,cifar]
"""

from __future__ import annotations

import time

import torch

from ddo_lightning.samplers import HeunSampler, heun_sampler, seeded_normal

from .common import interleaved, medians, parser, ratio_figure, setup_threads, summary, write_result
from .presets import num_params, presets_from

REPS = {"toy2d": 3, "digits": 1, "cifar": 1}


def peer(kd, net, labels, noise, sigmas, dtype):
    """k-diffusion's sample_heun on our denoiser: state in ``dtype``, the network always in float32."""
    s32 = sigmas.to(torch.float32)
    s = sigmas.to(dtype)

    def model(x, sigma):
        return net(x.to(torch.float32), sigma.to(torch.float32), labels).to(dtype)

    def run():
        return kd.sample_heun(model, noise.to(dtype) * s[0], s if dtype == torch.float64 else s32, disable=True)

    return run


class NullDenoiser(torch.nn.Module):
    """D(x; σ) = 0.9·x: no network, so a sampler's time is its own per-step work."""

    sigma_data = 0.5

    def forward(self, x, sigma, labels):
        return x * 0.9


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    diff = (a.double() - b.double()).abs().max().item()
    return {"max_abs_diff": diff, "max_rel_diff": diff / max(a.double().abs().max().item(), 1e-30)}


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    started = time.perf_counter()
    threads = setup_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 4)
    from .kdiff import load_sampling, version

    try:
        kd = load_sampling()
    except ImportError as err:  # the peer is optional: without it, only the floor is measured
        kd = None
        print(f"[sampler] k-diffusion unavailable ({err}); peer comparison skipped")
    figures, extra, settings = (
        [],
        {"agreement": {}},
        {"threads": threads, "repeats": repeats, "warmup": 1, "k_diffusion": version() if kd else None, "presets": {}},
    )
    for p in presets_from(args.presets, args.quick):
        net = p.network().eval().requires_grad_(False)
        sampler = HeunSampler(num_steps=p.sample_steps)
        sigmas, nfe, n = sampler.sigmas, sampler.nfe, p.sample_batch
        noise = seeded_normal(list(range(n)), p.shape)
        labels = p.labels(n)
        # the floor evaluates the network at the σ the sampler visits (σ0, then σ1..σN-1 twice each), on
        # inputs of the right scale, prepared outside the timing: some ops' cost depends on the values
        # (sin/cos of the noise embedding at σ = 1 alone are several times cheaper)
        sig32 = sigmas.to(torch.float32)
        visits = [sig32[0]] + [v for v in sig32[1:-1] for _ in (0, 1)]
        inputs = [(noise * v, v.expand(n).contiguous()) for v in visits]
        assert len(inputs) == nfe

        @torch.no_grad()
        def floor():
            for x, sig in inputs:
                net(x, sig, labels)

        def ours():
            return heun_sampler(net, noise, labels, sigmas)

        runs = {"ours": ours, "floor": floor}
        if kd is not None:
            runs["kdiff32"] = peer(kd, net, labels, noise, sigmas, torch.float32)
            runs["kdiff64"] = peer(kd, net, labels, noise, sigmas, torch.float64)
        reps = 1 if args.quick else REPS[p.name]
        t = interleaved(runs, repeats, warmup=1, reps_per_sample=reps)
        if kd is not None:
            a, b32, b64 = ours(), runs["kdiff32"](), runs["kdiff64"]()
            extra["agreement"][p.name] = {"kdiff32": agreement(a, b32), "kdiff64": agreement(a, b64.float())}
        extra[p.name] = {"seconds": {k: summary(v) for k, v in t.items()}}
        settings["presets"][p.name] = {
            "batch": n,
            "shape": p.shape,
            "num_steps": p.sample_steps,
            "nfe": nfe,
            "params": num_params(net),
            "calls_per_sample": reps,
        }
        med = medians(t)
        note = f"batch {n}, {nfe} NFE: ours {med['ours'] * 1e3:.1f} ms, floor {med['floor'] * 1e3:.1f} ms"
        figures.append(ratio_figure(f"sampler efficiency floor/ours ({p.name})", t, "floor", "ours", 0.95, ">=", note))
        if kd is None:
            continue
        agree = extra["agreement"][p.name]
        note = f"k-diffusion {med['kdiff32'] * 1e3:.1f} ms; max |Δx| = {agree['kdiff32']['max_abs_diff']:.2e}"
        figures.append(ratio_figure(f"sampler ours/k-diffusion fp32 ({p.name})", t, "ours", "kdiff32", 1.0, "<=", note))
        note = f"same state precision; max |Δx| = {agree['kdiff64']['max_abs_diff']:.2e}"
        figures.append(ratio_figure(f"sampler ours/k-diffusion fp64 state ({p.name})", t, "ours", "kdiff64", note=note))
        figures.append(
            ratio_figure(f"sampler fp64-state cost, k-diffusion fp64/fp32 ({p.name})", t, "kdiff64", "kdiff32")
        )
        # the samplers' own work, without the network: a null denoiser (one multiply) makes each
        # implementation's per-step overhead visible instead of drowning it in the network's noise
        null = NullDenoiser()
        nulls = {
            "ours": lambda: heun_sampler(null, noise, labels, sigmas),
            "kdiff32": peer(kd, null, labels, noise, sigmas, torch.float32),
            "kdiff64": peer(kd, null, labels, noise, sigmas, torch.float64),
        }
        tn = interleaved(nulls, repeats, warmup=1, reps_per_sample=5)
        extra[p.name]["null_denoiser_seconds"] = {k: summary(v) for k, v in tn.items()}
        medn = medians(tn)
        figures.append(
            ratio_figure(
                f"sampler overhead ours/k-diffusion fp32, null denoiser ({p.name})",
                tn,
                "ours",
                "kdiff32",
                1.0,
                "<=",
                note=f"per NFE: ours {medn['ours'] / nfe * 1e6:.0f} µs, k-diffusion fp32 "
                f"{medn['kdiff32'] / nfe * 1e6:.0f} µs, fp64 {medn['kdiff64'] / nfe * 1e6:.0f} µs; "
                f"ours' overhead = {medn['ours'] / med['ours']:.2%} of a real sampling call",
            )
        )
    write_result("sampler", settings, figures, extra, args.out, started)


if __name__ == "__main__":
    main()
