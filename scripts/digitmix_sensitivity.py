"""The sensitivity table of ``metrics/image_mixture.py``'s docstring: how far each metric of
``ImageMixtureMetrics`` moves, in units of its seed noise, when true samples of the image demo's mixture are
degraded (blended classes, extra noise, shrinkage toward the class mean, a dropped class).

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/digitmix_sensitivity.py [--num 5000] [--seeds 5]

About 2 minutes on one core at the defaults.
"""

from __future__ import annotations

import argparse

import torch

from ddo_lightning.data import LowRankGaussianMixture, digit_mixture
from ddo_lightning.metrics.image_mixture import image_mixture_metrics, true_log_densities


def degrade(mixture: LowRankGaussianMixture, kind: str, n: int, seed: int) -> torch.Tensor:
    """n true samples [n, D] degraded by ``kind`` (metrics/image_mixture.py's docstring): 'none', 'blend', 'noise', 'shrink', 'drop'."""
    g = torch.Generator().manual_seed(seed)
    x, comp = mixture.sample(n, g)
    x = x.to(torch.float64)
    if kind == "blend":
        other, ocomp = mixture.sample(n, g)
        pick = (torch.rand(n, generator=g) < 0.2) & (ocomp != comp)
        x[pick] = 0.7 * x[pick] + 0.3 * other.to(torch.float64)[pick]
    elif kind == "noise":
        x = x + 0.03 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    elif kind == "shrink":
        x = mixture.means[comp] + 0.9 * (x - mixture.means[comp])
    elif kind == "drop":
        while (comp == 0).any():
            y, c = mixture.sample(int((comp == 0).sum()), g)
            x[comp == 0], comp[comp == 0] = y.to(torch.float64), c
    elif kind != "none":
        raise ValueError(f"unknown degradation {kind!r}")
    return x


def sensitivity_table(n: int = 5000, seeds: int = 5) -> dict[str, dict[str, float]]:
    """{degradation: {metric: (mean(degraded) − mean(true)) / std(true)}} over ``seeds`` draws of n."""
    mixture = digit_mixture()
    reference = true_log_densities(mixture)
    names = ("mmd", "logp_w1", "mean_log_density", "precision", "recall", "principal_var_ratio", "floor_var_ratio")
    runs: dict[str, list[dict[str, float]]] = {}
    for kind in ("none", "blend", "noise", "shrink", "drop"):
        for s in range(seeds):
            fresh, _ = mixture.sample(n, torch.Generator().manual_seed(10_000 + s))
            runs.setdefault(kind, []).append(
                image_mixture_metrics(mixture, degrade(mixture, kind, n, s), fresh, reference)
            )
    base = {m: torch.tensor([r[m] for r in runs["none"]], dtype=torch.float64) for m in names}
    table = {"true (mean, std)": {m: (float(base[m].mean()), float(base[m].std())) for m in names}}
    for kind in ("blend", "noise", "shrink", "drop"):
        table[kind] = {
            m: float((torch.tensor([r[m] for r in runs[kind]]).mean() - base[m].mean()) / base[m].std()) for m in names
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=5000, help="samples per set")
    parser.add_argument("--seeds", type=int, default=5, help="sets per degradation")
    args = parser.parse_args()
    for row, values in sensitivity_table(args.num, args.seeds).items():
        shown = {k: (tuple(round(x, 5) for x in v) if isinstance(v, tuple) else round(v, 1)) for k, v in values.items()}
        print(row, shown)


if __name__ == "__main__":
    main()
