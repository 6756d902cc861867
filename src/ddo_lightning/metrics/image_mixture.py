"""Exact-ground-truth quality metrics for images of a known low-rank Gaussian mixture (the image demo:
``data.DigitMixtureDataset``, 1×8×8 digits-like images, D = 64, 10 components).

- mean_log_density: E_samples[log p(x)], exact, nats per image (true data ≈ 44.3). Not a distance: samples
  shrunk toward their class mean score *higher* than the data.
- precision: share of samples with log p(x) ≥ τ, τ the 1% quantile of log p over 100,000 fixed-seed true
  samples (computed once per ``connect``): the true data scores 0.99.
- recall: Σ_k min(w_k, q_k), q_k the share of the on-support samples (log p ≥ τ) whose most responsible
  component is k: 1 when every class gets at least its weight (= 1 − total variation between the class
  weights and the on-support samples' class histogram).
- modes_covered: share of components whose on-support samples reach 10% of their expected count.
- mmd: unbiased squared MMD against as many fresh true samples, Gaussian kernels of bandwidth 1 and 4. A
  floor-only difference of two images has norm ≈ √(2·64)·s0 = 1.1 (s0 = 0.1); two images of one class are
  a median 3.4 apart, of two classes 5.5 (pixels in [-1, 1]): h = 1 sees the fine structure (noise, the
  spread along the principal directions), h = 4 the class layout (blends, missing or starved classes).
- principal_var_ratio: mean of (u_jᵀ(x − μ_k))² / (λ_kj + s0²) over the principal directions of each
  sample's most responsible component (1 for the data; < 1: too little variation, e.g. shrunk samples).
- floor_var_ratio: mean squared residual off the principal directions over (D − r)·s0² (1 for the data;
  > 1: extra noise, < 1: over-smooth samples).
- label_accuracy (conditional data only): share of samples whose most responsible component is their label.
- num_samples.

Which one a self-play run monitors (measured; ``python -m ddo_lightning.metrics.image_mixture``, the
selftest below): 5,000 samples, 5 seeds; degraded sets drawn from the true mixture, then: *blend* 30% of
the samples replaced by 0.6·x_k + 0.4·x_j with j another class; *noise* Gaussian noise of std 0.05
(= s0/2) added; *shrink* x → μ_k + 0.8·(x − μ_k); *drop* class 0 replaced by other classes. Shift of the
mean in units of the true data's seed std (the metric's noise at this size):

| metric | blend | noise | shrink | drop |
|---|---|---|---|---|
| mmd | 46 | 82 | 13 | 22 |
| mean_log_density | −98 | −93 | +27 | −0.6 |
| precision | −49 | −44 | +0.0 | −0.4 |
| recall | −1.5 | −0.2 | −0.2 | −87 |

(the selftest prints the current numbers). Only the MMD moves by many times its noise under all four
degradations, and it is a two-sample distance with a known minimum (0 at the data), so a better model
means a lower value whatever went wrong; the log-density moves the wrong way for shrunk samples, precision
does not see shrinkage or a dropped class, recall sees only the class histogram. Self-play monitors
``mmd`` (mode min); the others are diagnostics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torchmetrics import Metric

from ..protocols import HasGroundTruth
from .toy2d import mmd_rbf

if TYPE_CHECKING:
    from ..data.digit_mixture import LowRankGaussianMixture

MMD_BANDWIDTHS = (1.0, 4.0)


def support_threshold(mixture: LowRankGaussianMixture, num: int = 100_000, seed: int = 777, q: float = 0.01) -> float:
    """τ: the ``q`` quantile of log p over ``num`` true samples drawn with ``seed`` (float64)."""
    x, _ = mixture.sample(num, torch.Generator().manual_seed(seed))
    return float(torch.quantile(mixture.log_prob(x), q))


def image_mixture_metrics(
    mixture: LowRankGaussianMixture,
    x: torch.Tensor,
    fresh: torch.Tensor,
    tau: float,
    labels: torch.Tensor | None = None,
    bandwidths: tuple[float, ...] = MMD_BANDWIDTHS,
) -> dict[str, float]:
    """All metrics of samples x [N, *D] against the mixture; ``fresh`` [M, *D] true samples, ``tau`` the
    support threshold (:func:`support_threshold`), ``labels`` [N, K] one-hot or None."""
    n_total = len(x)
    x = x.to(torch.float64).reshape(n_total, -1)
    finite = torch.isfinite(x).all(dim=1)
    x = x[finite]  # non-finite samples count as misses and are dropped from the rest
    comp = mixture.component_log_probs(x)  # [N, K]
    log_p = torch.logsumexp(comp, dim=1)
    best = comp.argmax(dim=1)
    on = log_p >= tau
    counts = torch.bincount(best[on], minlength=mixture.num_modes).to(torch.float64)
    q = counts / counts.sum().clamp_min(1)
    expected = mixture.weights * n_total
    diff = x - mixture.means[best]  # [N, D]
    proj = torch.einsum("nd,ndr->nr", diff, mixture.bases[best])  # [N, r]
    floor2 = mixture.floor**2
    principal = (proj.square() / (mixture.variances[best] + floor2)).mean() if mixture.rank and len(x) else None
    resid = diff.square().sum(dim=1) - proj.square().sum(dim=1)
    out = {
        "mean_log_density": float(log_p.mean()) if len(x) else float("-inf"),
        "precision": float(on.sum()) / n_total,
        "recall": float(torch.minimum(mixture.weights, q).sum()) if counts.sum() > 0 else 0.0,
        "modes_covered": float((counts >= 0.1 * expected).to(torch.float64).mean()),
        "mmd": mmd_rbf(x, fresh.reshape(len(fresh), -1), bandwidths) if len(x) > 1 else float("inf"),
        "principal_var_ratio": float(principal) if principal is not None else float("nan"),
        "floor_var_ratio": float(resid.mean() / ((mixture.dim - mixture.rank) * floor2)) if len(x) else float("nan"),
        "num_samples": float(n_total),
    }
    if labels is not None and labels.ndim == 2 and labels.shape[1] > 0:
        want = labels.argmax(dim=1).to(best.device)[finite]
        out["label_accuracy"] = float((best == want).to(torch.float64).sum()) / n_total
    return out


class ImageMixtureMetrics(Metric):
    """torchmetrics wrapper of :func:`image_mixture_metrics`: samples (and labels) from every rank are
    gathered ("cat") before computing. The ground truth comes from the data at run time through
    :meth:`connect`, which also computes the support threshold τ once.

    Args:
        fresh_seed: seed of the fresh true samples the MMD compares against (as many as the samples).
        tau_samples: true samples τ is the 1% quantile of (log p).
        tau_seed: their seed.
    """

    full_state_update = False
    higher_is_better: bool | None = None

    def __init__(self, fresh_seed: int = 12345, tau_samples: int = 100_000, tau_seed: int = 777, **kwargs: Any):
        super().__init__(**kwargs)
        if tau_samples < 100:
            raise ValueError(f"tau_samples must be >= 100 (τ is a 1% quantile), got {tau_samples}")
        self.fresh_seed, self.tau_samples, self.tau_seed = fresh_seed, tau_samples, tau_seed
        self.mixture: LowRankGaussianMixture | None = None
        self.tau: float | None = None
        self.add_state("samples", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def connect(self, source: Any) -> None:
        """Take the ground truth from a data module or dataset (``.ground_truth``) or a mixture itself."""
        from ..data.digit_mixture import LowRankGaussianMixture

        truth = source.ground_truth if isinstance(source, HasGroundTruth) else source
        if not isinstance(truth, LowRankGaussianMixture):
            raise ValueError(
                "ImageMixtureMetrics needs data with a known low-rank Gaussian mixture (e.g. DigitMixtureDataset), "
                f"got {type(truth).__name__}"
            )
        if truth is not self.mixture:
            self.mixture = truth
            self.tau = support_threshold(truth, self.tau_samples, self.tau_seed)

    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.samples.append(x.detach().to(torch.float64).reshape(len(x), -1))
        lab = torch.zeros(len(x), 0) if labels is None else labels.detach()
        self.labels.append(lab.to(torch.float32).reshape(len(x), -1))

    def compute(self) -> dict[str, float]:
        if self.mixture is None or self.tau is None:
            raise RuntimeError("ImageMixtureMetrics needs the data's ground truth: call connect(dataset)")
        x = self.samples if isinstance(self.samples, torch.Tensor) else torch.cat(self.samples)
        lab = self.labels if isinstance(self.labels, torch.Tensor) else torch.cat(self.labels)
        fresh, _ = self.mixture.sample(len(x), torch.Generator().manual_seed(self.fresh_seed))
        return image_mixture_metrics(self.mixture, x.cpu(), fresh, self.tau, lab.cpu())


# ---- the sensitivity measurement quoted in the module docstring -------------------------------------------
def degrade(mixture: LowRankGaussianMixture, kind: str, n: int, seed: int) -> torch.Tensor:
    """n true samples [n, D] degraded by ``kind`` (module docstring): 'none', 'blend', 'noise', 'shrink', 'drop'."""
    g = torch.Generator().manual_seed(seed)
    x, comp = mixture.sample(n, g)
    x = x.to(torch.float64)
    if kind == "blend":
        other, ocomp = mixture.sample(n, g)
        pick = (torch.rand(n, generator=g) < 0.3) & (ocomp != comp)
        x[pick] = 0.6 * x[pick] + 0.4 * other.to(torch.float64)[pick]
    elif kind == "noise":
        x = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    elif kind == "shrink":
        x = mixture.means[comp] + 0.8 * (x - mixture.means[comp])
    elif kind == "drop":
        while (comp == 0).any():
            y, c = mixture.sample(int((comp == 0).sum()), g)
            x[comp == 0], comp[comp == 0] = y.to(torch.float64), c
    elif kind != "none":
        raise ValueError(f"unknown degradation {kind!r}")
    return x


def sensitivity_table(n: int = 5000, seeds: int = 5) -> dict[str, dict[str, float]]:
    """{degradation: {metric: (mean(degraded) − mean(true)) / std(true)}} over ``seeds`` draws of n."""
    from ..data.digit_mixture import digit_mixture

    mixture = digit_mixture()
    tau = support_threshold(mixture)
    names = ("mmd", "mean_log_density", "precision", "recall", "principal_var_ratio", "floor_var_ratio")
    runs: dict[str, list[dict[str, float]]] = {}
    for kind in ("none", "blend", "noise", "shrink", "drop"):
        for s in range(seeds):
            fresh, _ = mixture.sample(n, torch.Generator().manual_seed(10_000 + s))
            runs.setdefault(kind, []).append(image_mixture_metrics(mixture, degrade(mixture, kind, n, s), fresh, tau))
    base = {m: torch.tensor([r[m] for r in runs["none"]], dtype=torch.float64) for m in names}
    table = {"true (mean, std)": {m: (float(base[m].mean()), float(base[m].std())) for m in names}}
    for kind in ("blend", "noise", "shrink", "drop"):
        table[kind] = {
            m: float((torch.tensor([r[m] for r in runs[kind]]).mean() - base[m].mean()) / base[m].std()) for m in names
        }
    return table


if __name__ == "__main__":  # python -m ddo_lightning.metrics.image_mixture
    for row, values in sensitivity_table().items():
        print(
            row,
            {k: (tuple(round(x, 5) for x in v) if isinstance(v, tuple) else round(v, 1)) for k, v in values.items()},
        )
