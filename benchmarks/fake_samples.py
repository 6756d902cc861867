"""Fake samples: pool generation throughput and the share of a round's wall time spent making fakes,
pool (``training.PoolFakeSource``) vs online (``training.OnlineFakeSource``).

Per preset, the reference samples exactly as ``DenoiserModule.sample`` does (per-sample seeded noise,
``HeunSampler(18)`` = 35 NFE, the config's sampler), and three things are timed interleaved per repeat:

- ``pool``: ``PoolFakeSource.refresh`` generating a pool of ``measured_pool`` samples in batches of the
  generation batch (images/s = measured_pool / seconds);
- ``step``: one DDO training step (objective → backward → Adam) at real batch B;
- ``online``: ``OnlineFakeSource.next(B)`` (B fresh fakes, one sampler call).

A round's wall time is estimated, per repeat, as

    pool:   T = steps_per_round · t_step(B_cfg) + pool_size / throughput
    online: T = steps_per_round · (t_step(B_cfg) + t_online(B_cfg))

with steps_per_round = kimg_per_round · 1000 / B_cfg and pool_size, B_cfg, kimg_per_round from the
preset's config (configs/toy2d.yaml, digits.yaml, edm_cifar10.yaml). Where the measured batch B is
smaller than B_cfg (cifar), t_step and t_online are scaled linearly per sample (B_cfg / B): on a CPU
both are close to linear in the batch. The fake share is the generation term over T. Evaluation,
checkpointing and data loading are left out (they are the same for both sources).

    python -m benchmarks.fake_samples [--quick] [--presets toy2d,digits,cifar]
"""

from __future__ import annotations

import time

import torch

from ddo_lightning.samplers import HeunSampler, seeded_normal
from ddo_lightning.training import OnlineFakeSource, PoolFakeSource

from .common import Figure, interleaved, parser, ratio_figure, setup_threads, summary, write_result
from .presets import presets_from
from .steps import DDOStep

MEASURE = {  # (measured pool size, generation batch, step batch B) per preset
    "toy2d": (10_000, 10_000, 512),
    "digits": (128, 128, 128),
    "cifar": (4, 4, 2),
}


def duration(seconds: float) -> str:
    """CPU-seconds on this machine, in a readable unit."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    started = time.perf_counter()
    threads = setup_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    figures, extra, settings = [], {}, {"threads": threads, "repeats": repeats, "warmup": 1, "presets": {}}
    for p in presets_from(
        args.presets, args.quick, default=("toy2d", "digits") if args.quick else ("toy2d", "digits", "cifar")
    ):
        size, gen_batch, B = (64, 32, p.batch) if args.quick else MEASURE[p.name]
        sampler = HeunSampler(num_steps=3 if args.quick else 18)
        net = p.network().eval().requires_grad_(False)

        @torch.no_grad()
        def sample_fn(seeds, labels, net=net, sampler=sampler, shape=p.shape):
            return sampler(net, seeded_normal(seeds, shape), labels)

        pool = PoolFakeSource(size=size, generation_batch_size=gen_batch, seed=0, progress=False)
        pool.setup(p.shape, 0)
        online = OnlineFakeSource(seed=0)
        online.setup(p.shape, 0)
        online.refresh(sample_fn, 0)
        step = DDOStep(p, batch=B)
        round_index = iter(range(10**6))
        t = interleaved(
            {
                "pool": lambda: pool.refresh(sample_fn, next(round_index)),
                "step": step,
                "online": lambda: online.next(B, torch.device("cpu")),
            },
            repeats,
            warmup=1,
        )
        cfg = p.config
        steps_per_round = cfg["kimg_per_round"] * 1000 / cfg["batch"]
        scale = cfg["batch"] / B
        throughput = [size / s for s in t["pool"]]
        train = [steps_per_round * s * scale for s in t["step"]]
        gen_pool = [cfg["pool"] / thr for thr in throughput]
        gen_online = [steps_per_round * s * scale for s in t["online"]]
        share_pool = [g / (g + tr) for g, tr in zip(gen_pool, train)]
        share_online = [g / (g + tr) for g, tr in zip(gen_online, train)]
        round_pool = [g + tr for g, tr in zip(gen_pool, train)]
        round_online = [g + tr for g, tr in zip(gen_online, train)]
        settings["presets"][p.name] = {
            "measured_pool": size,
            "generation_batch": gen_batch,
            "B_measured": B,
            "sampler_nfe": sampler.nfe,
            "config": cfg,
            "steps_per_round": steps_per_round,
            "batch_scale": scale,
        }
        extra[p.name] = {
            "seconds": {k: summary(v) for k, v in t.items()},
            "round_seconds_estimate": {"pool": summary(round_pool), "online": summary(round_online)},
        }
        figures.append(
            Figure(
                f"pool generation throughput ({p.name})",
                throughput,
                "images/s",
                None,
                note=f"{sampler.nfe} NFE, generation batch {gen_batch}, {threads} thread(s)",
            )
        )
        figures.append(
            Figure(
                f"fake share of round, pool ({p.name})",
                share_pool,
                "fraction",
                None,
                note=f"pool {cfg['pool']}, {steps_per_round:.0f} steps of B={cfg['batch']}; "
                f"round ≈ {duration(summary(round_pool)['median'])}",
            )
        )
        figures.append(
            Figure(
                f"fake share of round, online ({p.name})",
                share_online,
                "fraction",
                None,
                note=f"round ≈ {duration(summary(round_online)['median'])}",
            )
        )
        rounds = {"online": round_online, "pool": round_pool}
        figures.append(ratio_figure(f"round time online/pool ({p.name})", rounds, "online", "pool"))
    write_result("fake_samples", settings, figures, extra, args.out, started)


if __name__ == "__main__":
    main()
