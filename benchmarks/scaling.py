"""Scaling: DDO training throughput (samples/s) of 2 DDP processes (gloo) vs 1 process, on this machine.

Three layouts, same per-process batch (B real + B fake), the target wrapped in
``DistributedDataParallel`` (gloo all-reduce of its gradients) when world > 1, noise sharded as in
training (``shard=(rank, world)``):

- ``1p×1t``: one process, 1 torch thread;
- ``1p×2t``: one process, 2 torch threads (intra-op parallelism instead of data parallelism);
- ``2p×1t``: two processes, 1 thread each (DDP);
- ``1p×2t passive``: as 1p×2t with ``OMP_WAIT_POLICY=PASSIVE`` (libgomp's idle threads sleep instead of
  spinning; on a machine shared with other jobs the spinning threads fight the other jobs for the cores).

Each run is a fresh set of child processes (like ``tests/test_distributed.py``, which runs ``ddo fit``
with the DDP strategy in a subprocess: DDP cannot run inside the parent's process); after warm-up
steps and a barrier, every rank times ``steps`` steps; throughput = world · 2B · steps / slowest rank's
time. Runs alternate 1p×1t, 1p×2t, 2p×1t, … The ceiling on 2 cores is 2× over 1p×1t, for 2p×1t and
1p×2t alike; any other load on the machine lowers both two-core layouts.

This times the objective → backward (+ DDP all-reduce) → Adam loop, not Lightning's loop around it.

The default preset is digits only: on a machine shared with other jobs a two-thread run of the CIFAR
preset took minutes per launch (``--presets digits,cifar`` measures both).

    python -m benchmarks.scaling [--quick] [--presets digits,cifar]
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import time

from .common import ROOT, child_command, medians, parser, ratio_figure, setup_threads, summary, write_result
from .presets import presets_from

# name: (processes, threads per process, OMP_WAIT_POLICY or None for libgomp's default spin-then-sleep)
LAYOUTS = {"1p×1t": (1, 1, None), "1p×2t": (1, 2, None), "1p×2t passive": (1, 2, "PASSIVE"), "2p×1t": (2, 1, None)}
QUICK_LAYOUTS = ("1p×1t", "2p×1t")
STEPS = {"toy2d": 40, "digits": 6, "cifar": 3}


def worker(preset_name: str, quick: bool, steps: int, threads: int) -> None:
    import torch
    import torch.distributed as dist

    from .presets import preset
    from .steps import DDOStep

    torch.set_num_threads(threads)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    p = preset(preset_name, quick)
    step = DDOStep(p)
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(step.target)
        ddp.sigma_data = step.target.sigma_data
        step.target_fn = ddp
    objective = step.objective

    def shard_objective(target, reference, batch, generator=None):
        return objective.__class__.__call__(objective, target, reference, batch, generator, shard=(rank, world))

    step.objective = shard_objective
    for _ in range(2):
        step()
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - t0
    if world > 1:
        t = torch.tensor([seconds])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        seconds = float(t)
        # DDP's reducer holds gloo work: drop it before the group goes, and both ranks done with gloo before
        # either tears it down (else, at exit, now and then: "terminate called without an active exception")
        step.target_fn = ddp = None
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({"seconds": seconds, "samples": world * step.samples_per_step * steps}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    preset_name: str, quick: bool, steps: int, world: int, threads: int, wait_policy: str | None = None
) -> dict[str, float]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_", "RANK"))
    }
    base.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world), OMP_NUM_THREADS=str(threads)
    )
    base.pop("OMP_WAIT_POLICY", None)
    if wait_policy:
        base["OMP_WAIT_POLICY"] = wait_policy
    cmd = child_command("scaling", ["--worker"], preset_name, steps, threads, quick)
    procs = [
        subprocess.Popen(
            cmd, env=dict(base, RANK=str(r)), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for r in range(world)
    ]
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=600))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for proc, (_, err) in zip(procs, outs):
        if proc.returncode != 0:
            raise RuntimeError(f"scaling worker failed ({world} procs × {threads} threads):\n{err[-3000:]}")
    res = json.loads(outs[0][0].strip().splitlines()[-1])
    return {"samples_per_s": res["samples"] / res["seconds"], **res}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.presets, args.quick, args.steps, args.threads)
        return
    started = time.perf_counter()
    setup_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    figures, extra = [], {}
    layouts = {k: v for k, v in LAYOUTS.items() if not args.quick or k in QUICK_LAYOUTS}
    settings = {
        "repeats": repeats,
        "layouts": {
            k: {"processes": w, "threads_per_process": t, "OMP_WAIT_POLICY": pol} for k, (w, t, pol) in layouts.items()
        },
        "backend": "gloo",
        "presets": {},
    }
    for pr in presets_from(args.presets, args.quick, default=("toy2d",) if args.quick else ("digits",)):
        steps = args.steps or (2 if args.quick else STEPS[pr.name])
        thr = {k: [] for k in layouts}
        for _ in range(repeats):
            for name, (world, threads, policy) in layouts.items():
                # the spinning two-thread layout is ~25x slower on a busy machine: fewer steps keep the run short
                n = max(2, steps // 3) if (threads > 1 and policy is None) else steps
                thr[name].append(launch(pr.name, args.quick, n, world, threads, policy)["samples_per_s"])
                print(f"[scaling] {pr.name} {name}: {thr[name][-1]:.1f} samples/s", flush=True)
        settings["presets"][pr.name] = {
            "B_per_process": pr.batch,
            "samples_per_step_per_process": 2 * pr.batch,
            "timed_steps": steps,
        }
        extra[pr.name] = {"samples_per_s": {k: summary(v) for k, v in thr.items()}}
        med = medians(thr)
        # (figure, numerator layout, denominator layout, note)
        comparisons = [
            ("DDP", "2p×1t", "1p×1t", f"ceiling 2 (2 cores); {med['1p×1t']:.1f} → {med['2p×1t']:.1f} samples/s")
        ]
        if not args.quick:
            comparisons += [
                ("threads", "1p×2t", "1p×1t", f"ceiling 2; {med['1p×2t']:.1f} samples/s"),
                ("threads", "1p×2t passive", "1p×1t", f"OMP_WAIT_POLICY=PASSIVE; {med['1p×2t passive']:.1f} samples/s"),
                ("DDP", "2p×1t", "1p×2t", "> 1: two DDP processes use the 2 cores better than 2 threads"),
            ]
        for kind, num, den, note in comparisons:
            figures.append(ratio_figure(f"{kind} {num} / {den} throughput ({pr.name})", thr, num, den, note=note))
    write_result("scaling", settings, figures, extra, args.out, started)


if __name__ == "__main__":
    main()
