"""The embedded default data: an isotropic Gaussian mixture in 2-D with exact density and an exact
denoiser, so every quality number of the demo has ground truth."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from ..protocols import Samples


def mixture_weights(weights: torch.Tensor | None, k: int) -> torch.Tensor:
    """Mixture weights [k] in float64, normalised to sum 1 (None: equal); refused unless non-negative with a
    positive sum."""
    w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be [{k}], non-negative, with a positive sum")
    return w / w.sum()


class MixtureShape:
    """What the exact mixtures here share: ``means`` [M, D] and ``weights`` [M], float64."""

    means: torch.Tensor
    weights: torch.Tensor

    @property
    def num_modes(self) -> int:
        return len(self.means)

    @property
    def dim(self) -> int:
        return self.means.shape[1]


class GaussianMixture(MixtureShape):
    """p(x) = Σ_k w_k N(x; μ_k, s²I).

    means: [M, D]; std: s (shared by all modes); weights: [M] (normalised here).
    Double precision inside; inputs and outputs keep the caller's dtype unless stated.
    """

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must be [M, D], got shape {tuple(self.means.shape)}")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.std = float(std)
        self.weights = mixture_weights(weights, len(self.means))
        self.sigma_data = float(self.data_std())  # lets the mixture stand in as an exact Denoiser

    def data_std(self) -> torch.Tensor:
        """Overall standard deviation per coordinate, averaged over coordinates."""
        mean = self.weights @ self.means
        var = self.weights @ ((self.means - mean) ** 2).mean(dim=1) + self.std**2
        return var.sqrt()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples [n, D] float32 and their component indices [n] int64."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.std * eps).float(), comp

    def _component_log_probs(self, x: torch.Tensor, var: float | torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; μ_k, var·I) for every k: [N, M] float64. var: scalar or [N]."""
        x = x.to(torch.float64)
        var = torch.as_tensor(var, dtype=torch.float64).reshape(-1, 1)
        sq = torch.cdist(x, self.means).square()
        return self.weights.log() - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x): [N] float64."""
        return torch.logsumexp(self._component_log_probs(x, self.std**2), dim=1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The exact denoiser E[x0 | x0 + σn = x] of the mixture (labels ignored): [N, D] float32.

        Component k's posterior mean is μ_k + s²/(s²+σ²)·(x − μ_k), weighted by the posterior
        responsibilities under N(μ_k, (s²+σ²)I)."""
        x64 = x.to(torch.float64)
        var = self.std**2 + sigma.to(torch.float64).reshape(-1).expand(x.shape[0]) ** 2
        resp = torch.softmax(self._component_log_probs(x64, var), dim=1)  # [N, M]
        shrink = (self.std**2 / var).reshape(-1, 1, 1)
        per_comp = self.means + shrink * (x64[:, None, :] - self.means)  # [N, M, D]
        return (resp[..., None] * per_comp).sum(dim=1).to(torch.float32)


def mixture_preset(name: Literal["ring8", "grid25"], std: float | None = None) -> GaussianMixture:
    """Well-separated mixtures scaled so the data standard deviation is about 0.5 (EDM's σ_data).

    ring8: 8 equal modes on a circle of radius 0.7 (neighbours 0.54 apart), std 0.03.
    grid25: a 5×5 grid with spacing 0.35 centred on 0, std 0.02.
    """
    if name == "ring8":
        ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return GaussianMixture(0.7 * torch.stack([ang.cos(), ang.sin()], dim=1), 0.03 if std is None else std)
    if name == "grid25":
        g = (torch.arange(5, dtype=torch.float64) - 2) * 0.35
        means = torch.cartesian_prod(g, g)
        return GaussianMixture(means, 0.02 if std is None else std)
    raise ValueError(f"unknown mixture preset {name!r}; choose 'ring8' or 'grid25'")


class DrawnMixtureDataset(Dataset):
    """A training set drawn once, with a fixed seed, from a known mixture (``ground_truth``: ``sample(n,
    generator) -> (x, component)``, ``num_modes``); labels are the component as a one-hot vector
    (``conditional``) or have width 0. ``sample_shape`` reshapes each drawn vector (images)."""

    def __init__(
        self,
        ground_truth: Any,
        num_samples: int,
        seed: int,
        conditional: bool,
        sample_shape: tuple[int, ...] | None = None,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.ground_truth = ground_truth
        x, comp = ground_truth.sample(num_samples, torch.Generator().manual_seed(seed))
        self.x = x if sample_shape is None else x.reshape(num_samples, *sample_shape)
        self.components = comp
        k = ground_truth.num_modes
        self.labels = torch.nn.functional.one_hot(comp, k).float() if conditional else torch.zeros(num_samples, 0)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def label_dim(self) -> int:
        return int(self.labels.shape[1])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Samples:
        return Samples(self.x[i], self.labels[i])


class Toy2DDataset(DrawnMixtureDataset):
    """A finite training set drawn once from a Gaussian-mixture preset, with a fixed seed.

    Args:
        mixture: preset name ('ring8' or 'grid25').
        std: mode standard deviation (None: the preset's).
        num_samples: size of the training set.
        seed: seed of the draw.
        conditional: give each sample its mode index as a one-hot label (K = number of modes);
            otherwise labels have width 0.
    """

    def __init__(
        self,
        mixture: Literal["ring8", "grid25"] = "ring8",
        std: float | None = None,
        num_samples: int = 50_000,
        seed: int = 0,
        conditional: bool = False,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        super().__init__(mixture_preset(mixture, std), num_samples, seed, conditional)
