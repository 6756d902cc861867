"""The image demo's data: 8x8 grey images drawn from a Gaussian mixture fitted to scikit-learn's digits,
so every sample quality number has an exact ground truth (``metrics.ImageMixtureMetrics``).

p(x) = Σ_k w_k N(x; μ_k, U_k diag(λ_k) U_kᵀ + s0² I) over x ∈ R^64 (1×8×8 images, flattened row-major),
one component per digit class, built from the embedded digits (``DigitsDataset``, pixels in [-1, 1]):

- μ_k: the class's mean image;
- U_k [64, r]: the class's top-r principal directions (orthonormal columns), λ_k [r] their variances
  (times ``scale``): each component is a digit with r degrees of freedom (slant, width, stroke);
- s0: an isotropic floor in all 64 directions, so the density is full-rank and finite everywhere;
- w_k: equal weights 1/10 (the digits' classes hold 174–183 images each).

Defaults r = 4, s0 = 0.1. The 4 directions hold 50–74% of each class's variance; the rest of a real
digit's variation (0.21–0.31 per pixel, the root mean of the remaining 60 eigenvalues) is replaced by the
floor, so the samples look like smooth digits with a faint grain. Why 0.1: it is well below that residual
(the mixture's structure, not its noise, dominates), well above the uint8 step 2/255 ≈ 0.008 and EDM's
smallest noise level 0.002 (the density has no structure a sampler or a quantised image cannot resolve),
and inside the noise levels DSM trains on (P_mean −1.2, P_std 1.2: 95% of the draws have σ between 0.03
and 3.3), so training resolves the floor and a small network can learn it. The support is R^64: samples
are not clipped to [-1, 1] (background pixels sit at −1 ± 0.1) and must not be quantised when compared
with the density.

Everything is float64 inside; with orthonormal U_k the Woodbury identity is diagonal:
Σ_k⁻¹ = s0⁻²(I − U_k diag(λ_k/(λ_k+s0²)) U_kᵀ), log det Σ_k = D log s0² + Σ_j log(1 + λ_kj/s0²).
The exact denoiser uses the same form with s0² + σ² in place of s0² (noise adds σ² I to every Σ_k).
"""

from __future__ import annotations

import io
import math
from importlib import resources

import numpy as np
import torch

from .toy2d import DrawnMixtureDataset, MixtureShape, mixture_weights

__all__ = ["LowRankGaussianMixture", "digit_mixture", "DigitMixtureDataset"]


class LowRankGaussianMixture(MixtureShape):
    """p(x) = Σ_k w_k N(x; μ_k, U_k diag(λ_k) U_kᵀ + s0² I) in D dimensions, exact.

    means: [K, D]; bases: [K, D, r] with orthonormal columns per component; variances: [K, r] (≥ 0);
    floor: s0 (> 0); weights: [K] (normalised here; None: equal). ``image_shape`` is what a flat sample
    reshapes to (default (D,)). Inputs may be [N, D] or [N, *image_shape]; float64 inside.
    """

    def __init__(
        self,
        means: torch.Tensor,
        bases: torch.Tensor,
        variances: torch.Tensor,
        floor: float,
        weights: torch.Tensor | None = None,
        image_shape: tuple[int, ...] | None = None,
    ):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.bases = torch.as_tensor(bases, dtype=torch.float64)
        self.variances = torch.as_tensor(variances, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(self.means.shape)}")
        k, d = self.means.shape
        if self.bases.ndim != 3 or self.bases.shape[:2] != (k, d):
            raise ValueError(f"bases must be [K, D, r] = [{k}, {d}, r], got shape {tuple(self.bases.shape)}")
        r = self.bases.shape[2]
        if self.variances.shape != (k, r) or (self.variances < 0).any():
            raise ValueError(f"variances must be [K, r] = [{k}, {r}] and non-negative")
        gram = self.bases.transpose(1, 2) @ self.bases
        if not torch.allclose(gram, torch.eye(r, dtype=torch.float64).expand(k, r, r), atol=1e-8):
            raise ValueError("bases must have orthonormal columns (U_kᵀU_k = I)")
        if not floor > 0:
            raise ValueError(f"floor must be > 0, got {floor}")
        self.floor = float(floor)
        self.weights = mixture_weights(weights, k)
        self.image_shape = (d,) if image_shape is None else tuple(image_shape)
        if math.prod(self.image_shape) != d:
            raise ValueError(f"image_shape {self.image_shape} does not hold D = {d} values")
        self.sigma_data = float(self.data_std())  # lets the mixture stand in as an exact Denoiser

    @property
    def rank(self) -> int:
        return self.bases.shape[2]

    def covariance(self, k: int) -> torch.Tensor:
        """Σ_k [D, D] float64."""
        u = self.bases[k]
        return (u * self.variances[k]) @ u.T + self.floor**2 * torch.eye(self.dim, dtype=torch.float64)

    def data_std(self) -> torch.Tensor:
        """Overall standard deviation per coordinate, averaged over coordinates."""
        mean = self.weights @ self.means
        spread = ((self.means - mean) ** 2).mean(dim=1) + self.variances.sum(dim=1) / self.dim + self.floor**2
        return (self.weights @ spread).sqrt()

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64).reshape(len(x), -1)
        if x.shape[1] != self.dim:
            raise ValueError(f"samples must hold {self.dim} values each, got {x.shape[1]}")
        return x

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples [n, D] float32 and their component indices [n] int64."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.rank, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        low = torch.einsum("ndr,nr->nd", self.bases[comp], z * self.variances[comp].sqrt())
        return (self.means[comp] + low + self.floor * eps).float(), comp

    def component_log_probs(self, x: torch.Tensor, noise_var: float | torch.Tensor = 0.0) -> torch.Tensor:
        """log w_k + log N(x; μ_k, Σ_k + noise_var·I) for every k: [N, K] float64 (Woodbury, chunked over K).
        noise_var: scalar or [N] (the denoiser's σ²)."""
        x = self._flat(x)
        floor2 = self.floor**2 + torch.as_tensor(noise_var, dtype=torch.float64).reshape(-1, 1)  # [N or 1, 1]
        out = torch.empty(len(x), self.num_modes, dtype=torch.float64)
        for k in range(self.num_modes):
            diff = x - self.means[k]  # [N, D]
            proj = diff @ self.bases[k]  # [N, r]
            lam = self.variances[k]  # [r]
            maha = (
                diff.square().sum(1, keepdim=True) - (proj.square() * lam / (lam + floor2)).sum(1, keepdim=True)
            ) / floor2
            logdet = self.dim * floor2.log() + torch.log1p(lam / floor2).sum(1, keepdim=True)
            out[:, k] = (self.weights[k].log() - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))).reshape(-1)
        return out

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x): [N] float64, nats per sample. With ``labels`` (one-hot [N, K] or class indices
        [N]) the class-conditional log p(x | k) instead."""
        comp = self.component_log_probs(x)
        if labels is None or (labels.ndim == 2 and labels.shape[1] == 0):
            return torch.logsumexp(comp, dim=1)
        k = labels.argmax(dim=1) if labels.ndim == 2 else labels.to(torch.int64)
        return comp.gather(1, k.reshape(-1, 1).to(comp.device)).reshape(-1) - self.weights.log()[k]

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """p(k | x): [N, K] float64."""
        return torch.softmax(self.component_log_probs(x), dim=1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The exact denoiser E[x0 | x0 + σn = x] (labels ignored): the shape of x, float32.

        Given component k, E[x0 | x] = μ_k + Σ_k(Σ_k + σ²I)⁻¹(x − μ_k): shrink s0²/(s0²+σ²) off U_k and
        (λ+s0²)/(λ+s0²+σ²) along it; weighted by p(k | x) under N(μ_k, Σ_k + σ²I)."""
        shape = x.shape
        x64 = self._flat(x)
        var = sigma.to(torch.float64).reshape(-1).expand(len(x64)) ** 2  # [N]
        resp = torch.softmax(self.component_log_probs(x64, var), dim=1)  # [N, K]
        f2, v = self.floor**2, var.reshape(-1, 1)
        out = torch.zeros_like(x64)
        for k in range(self.num_modes):
            diff = x64 - self.means[k]
            lam = self.variances[k]
            off = f2 / (f2 + v)  # [N, 1]
            along = (lam + f2) / (lam + f2 + v)  # [N, r]
            post = self.means[k] + off * diff + ((diff @ self.bases[k]) * (along - off)) @ self.bases[k].T
            out += resp[:, k : k + 1] * post
        return out.to(torch.float32).reshape(shape)


def _digits_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded digits as float64 [1797, 64] in [-1, 1] (``uint8_to_model``'s mapping) and labels [1797]."""
    ref = resources.files("ddo_lightning.data").joinpath("assets/digits.npz")
    with ref.open("rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    x = torch.from_numpy(images.reshape(len(images), -1)).to(torch.float64) / 127.5 - 1
    return x, torch.from_numpy(labels).to(torch.int64)


def digit_mixture(rank: int = 4, floor: float = 0.1, scale: float = 1.0) -> LowRankGaussianMixture:
    """The image demo's ground truth (module docstring): one component per digit class, its mean image,
    its top-``rank`` principal directions with their variances times ``scale``, isotropic floor ``floor``,
    equal weights; samples reshape to (1, 8, 8)."""
    if not 0 <= rank <= 64:
        raise ValueError(f"rank must be in [0, 64], got {rank}")
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    x, y = _digits_pixels()
    means, bases, variances = [], [], []
    for k in range(10):
        xk = x[y == k]
        mu = xk.mean(dim=0)
        cov = (xk - mu).T @ (xk - mu) / (len(xk) - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        top = evecs[:, -rank:].flip(1) if rank else evecs[:, :0]
        # a deterministic sign per direction (eigh's is arbitrary): the largest-magnitude entry positive
        sign = torch.sign(top.gather(0, top.abs().argmax(dim=0, keepdim=True)))
        means.append(mu)
        bases.append(top * sign)
        variances.append(scale * (evals[-rank:].flip(0) if rank else evals[:0]).clamp_min(0))
    return LowRankGaussianMixture(
        torch.stack(means), torch.stack(bases), torch.stack(variances), floor, image_shape=(1, 8, 8)
    )


class DigitMixtureDataset(DrawnMixtureDataset):
    """A fixed training set of 1×8×8 images drawn once from :func:`digit_mixture` with a seed: large
    (100,000 by default), so a small network cannot memorise it and converging on it means converging
    towards the mixture. Images are float32 in model space (about [-1, 1], not clipped nor quantised).

    Args:
        num_samples: size of the training set.
        seed: seed of the draw.
        rank, floor, scale: the mixture's (``digit_mixture``).
        conditional: give each image its class (component) as a one-hot label (K = 10); otherwise
            labels have width 0.
    """

    def __init__(
        self,
        num_samples: int = 100_000,
        seed: int = 0,
        rank: int = 4,
        floor: float = 0.1,
        scale: float = 1.0,
        conditional: bool = False,
    ):
        truth = digit_mixture(rank, floor, scale)
        super().__init__(truth, num_samples, seed, conditional, truth.image_shape)
