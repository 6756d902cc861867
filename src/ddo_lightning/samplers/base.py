"""What the training modules need of a sampler: samples of a network from per-sample seeds."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Sampler(ABC):
    """A sampler turns (network, per-sample seeds, labels) into samples; a sample depends on its seed
    only, never on the batch it was drawn in, the rank or the number of processes.

    ``nfe``: network evaluations per sample (reported with every evaluation); ``num_steps``: sampler
    steps (the diffusion grid size, or the number of autoregressive steps).
    """

    nfe: float
    num_steps: float

    @abstractmethod
    def from_seeds(self, net: nn.Module, seeds: torch.Tensor, labels: torch.Tensor, sample_shape: tuple[int, ...],
                   device: torch.device | str) -> torch.Tensor:
        """Samples [N, *sample_shape] on ``device`` from ``net`` given seeds [N] and labels [N, K]."""
