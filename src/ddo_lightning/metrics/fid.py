"""Fréchet distance between feature distributions (Heusel et al. 2017), streamed.

Features of generated images are accumulated as (Σx, Σxxᵀ, n) in float64 — no image is written — and
summed across ranks (torchmetrics ``dist_reduce_fx="sum"``); the mean and covariance follow at the end.
The feature extractor is pluggable: the digits classifier (``digits-FID``), Inception-v3 for the image
protocol, or a random network in tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import nn
from torchmetrics import Metric


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) in float64 (the imaginary part of sqrtm, numerical noise,
    is dropped as in the reference implementations)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.real(np.trace(covmean)))


def stats_from_sums(total: torch.Tensor, outer: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance from Σx [d], Σxxᵀ [d, d] and n (float64)."""
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
    mu = (total / n).double()
    sigma = (outer.double() - n * torch.outer(mu, mu)) / (n - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy()


class FrechetDistance(Metric):
    """FID-style metric with a pluggable feature extractor.

    ``update(x, labels)`` takes model-space images in [−1, 1] (as samplers return them); they are
    quantised to uint8 first — generated and real images go through the same quantisation — and the
    extractor receives uint8 [B, C, H, W]. Reference statistics come from ``connect(datamodule)`` (the
    real training set, computed once) or from an ``.npz`` with ``mu`` and ``sigma`` (EDM's format).

    Args:
        extractor: module mapping uint8 images [B, C, H, W] to features [B, d].
        name: the key ``compute`` returns (e.g. ``digits_fid``, ``fid``).
        reference_stats: optional ``.npz`` with ``mu`` [d] and ``sigma`` [d, d].
        reference_batch_size: images per extractor call when computing reference statistics.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, extractor: nn.Module, name: str = "fid", reference_stats: str | None = None,
                 reference_batch_size: int = 500, **kwargs: Any):
        super().__init__(**kwargs)
        self.extractor = extractor.eval().requires_grad_(False)
        self.name, self.reference_stats, self.reference_batch_size = name, reference_stats, reference_batch_size
        self.reference: tuple[np.ndarray, np.ndarray] | None = None
        dim = int(extractor.feature_dim)
        self.add_state("total", default=torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", default=torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        if reference_stats is not None:
            with np.load(reference_stats) as z:
                self.reference = (z["mu"].astype(np.float64), z["sigma"].astype(np.float64))

    @torch.no_grad()
    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.extractor(images_uint8).double()

    def connect(self, source: Any) -> None:
        """Compute the reference statistics from ``source.real`` (a dataset with uint8 ``images``)
        unless they were given as a file."""
        if self.reference is not None:
            return
        real = getattr(source, "real", source)
        images = getattr(real, "images", None)
        if images is None:
            raise ValueError(f"{type(real).__name__} has no uint8 `images`: give FrechetDistance reference_stats")
        total, outer, n = 0, 0, 0
        for i in range(0, len(images), self.reference_batch_size):
            f = self.features(images[i : i + self.reference_batch_size].to(self.device))
            total, outer, n = total + f.sum(0), outer + f.T @ f, n + len(f)
        self.reference = stats_from_sums(total, outer, n)

    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:  # noqa: ARG002
        images = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        f = self.features(images)
        self.total += f.sum(0)
        self.outer += f.T @ f
        self.count += len(f)

    def compute(self) -> dict[str, float]:
        if self.reference is None:
            raise RuntimeError("FrechetDistance has no reference statistics: connect(datamodule) or reference_stats")
        mu, sigma = stats_from_sums(self.total, self.outer, int(self.count))
        return {self.name: frechet_distance(mu, sigma, *self.reference)}
