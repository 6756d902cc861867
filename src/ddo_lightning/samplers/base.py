"""The sampler contract: every sampler is called the same way, ``sampler(net, noise, labels)``.

``noise`` is the whole of a batch's randomness, one row per sample, and ``sampler.noise(seeds, shape,
device)`` makes it from per-sample seeds (``noise.seeded_rows``): standard normal initial noise for
diffusion (``HeunSampler``), the uniforms of the inverse-CDF draws for next-token models
(``TokenSampler``). ``from_seeds`` chains the two; it is what training, evaluation, ``ddo sample`` and
``ddo fid`` call, so a sample is a function of its seed only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Sampler(ABC):
    """A sampler turns (network, per-sample noise, labels) into samples; a sample depends on its noise row
    (hence on its seed) only, never on the batch it was drawn in, the rank or the number of processes.

    ``nfe``: network evaluations per sample (reported with every evaluation); ``num_steps``: sampler
    steps (the diffusion grid size, or the number of autoregressive steps).
    """

    nfe: float
    num_steps: float

    @abstractmethod
    def noise(
        self, seeds: torch.Tensor | list[int], sample_shape: tuple[int, ...], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The randomness of samples [N, *sample_shape] from seeds [N]: row i from seeds[i] only."""

    @abstractmethod
    def __call__(self, net: nn.Module, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Samples [N, *D] from ``net`` given ``noise`` (what :meth:`noise` makes, on the network's
        device) and labels [N, K] (one-hot; K = 0 unconditional; an all-zero row: no condition)."""

    def from_seeds(
        self,
        net: nn.Module,
        seeds: torch.Tensor | list[int],
        labels: torch.Tensor,
        sample_shape: tuple[int, ...],
        device: torch.device | str,
    ) -> torch.Tensor:
        """Samples [N, *sample_shape] on ``device`` from ``net`` given seeds [N] and labels [N, K]."""
        return self(net, self.noise(seeds, tuple(sample_shape), device), labels.to(device))

    def with_steps(self, num_steps: int) -> Sampler:
        """The same sampler with another number of steps; samplers whose step count is fixed by the
        network (autoregressive ones) refuse."""
        raise ValueError(f"{type(self).__name__} has no step count to set: its steps are fixed by the network")
