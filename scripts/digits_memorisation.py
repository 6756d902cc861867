"""Does a digits model reproduce its training images? Nearest-neighbour distances of its samples to the
1,797 training digits, against the same distances of the training digits to each other (leave one out).

    PYTHONPATH=src python scripts/digits_memorisation.py --config configs/digits_pretrain.yaml \\
        --ckpt outputs/digits_pretrain/checkpoints/step=2500.ckpt --ckpt ... [--num 1000] [--out m.json]

For each checkpoint (its EMA network, the config's sampler), ``--num`` samples from seeds 200000, ... are
compared with the training set in pixel space ([-1, 1], 64 values):

- ``d1``: the L2 distance from a sample to its nearest training digit; the baseline is the same distance
  from each training digit to its nearest *other* training digit (what a new digit from the same source
  typically shows: no digit is in the set twice);
- ``copies``: the share with d1/d2 < 1/3 (d2: the second-nearest training digit), the usual criterion for a
  replicated training image; the baseline is the same share among the training digits (leave one out);
- ``below_p5``: the share of samples closer to the training set than 95% of the training digits are to
  each other.

A model that memorises moves ``d1`` far below the baseline and ``copies``/``below_p5`` far above it. Prints
a table; ``--out`` writes it as JSON.
"""

from __future__ import annotations

import argparse
import json

import torch


def nn_stats(queries: torch.Tensor, train: torch.Tensor, leave_one_out: bool = False) -> dict[str, torch.Tensor]:
    """Distances from each query [N, D] to its nearest and second-nearest training point [M, D]
    (float64); ``leave_one_out``: queries are the training points themselves, each skipping itself."""
    d = torch.cdist(queries.double(), train.double())
    if leave_one_out:
        d.fill_diagonal_(float("inf"))
    two = d.topk(2, dim=1, largest=False).values
    return {"d1": two[:, 0], "ratio": two[:, 0] / two[:, 1]}


def summarise(s: dict[str, torch.Tensor], p5: float) -> dict[str, float]:
    return {
        "d1_median": float(s["d1"].median()),
        "copies": float((s["ratio"] < 1 / 3).double().mean()),
        "below_p5": float((s["d1"] < p5).double().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    from ddo_lightning.commands import generate, load_denoiser
    from ddo_lightning.data import DigitsDataset

    p = argparse.ArgumentParser(prog="digits_memorisation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--ckpt", action="append", required=True, help="a checkpoint (repeat for several)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seed", type=int, default=200000, help="first sample seed")
    p.add_argument("--out", help="write the table as JSON")
    a = p.parse_args(argv)
    data = DigitsDataset()
    train = torch.stack([data[i].x for i in range(len(data))]).reshape(len(data), -1)
    base = nn_stats(train, train, leave_one_out=True)
    p5 = float(base["d1"].quantile(0.05))
    rows = [{"model": "training digits (leave one out)", **summarise(base, p5)}]
    for ckpt in a.ckpt:
        net, sampler, _ = load_denoiser([a.config], ckpt, which="ema")
        seeds = list(range(a.seed, a.seed + a.num))
        x = torch.cat([b for _, _, b in generate(net, sampler, seeds, 500, "cpu", progress=False)])
        rows.append({"model": ckpt, **summarise(nn_stats(x.reshape(len(x), -1), train), p5)})
    print(f"{'model':<60} {'median d1':>10} {'copies':>8} {'below p5':>9}")
    for r in rows:
        print(f"{r['model'][-60:]:<60} {r['d1_median']:>10.3f} {r['copies']:>8.3f} {r['below_p5']:>9.3f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"num": a.num, "first_seed": a.seed, "p5": p5, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
