"""A small MLP denoiser for low-dimensional data (the embedded 2-D default)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Backbone


class FourierNoiseEmbedding(nn.Module):
    """sin/cos features of c_noise at fixed log-spaced frequencies (no parameters). [B] -> [B, 2F]."""

    def __init__(self, num_frequencies: int = 8, max_frequency: float = 16.0):
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), num_frequencies))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        ang = c_noise.reshape(-1, 1).float() * self.freqs
        return torch.cat([ang.sin(), ang.cos()], dim=1)


class ToyMLP(Backbone):
    """Raw network F(x, c_noise, labels) for vectors: an MLP on [x, noise embedding, labels].

    Args:
        data_dim: D, the length of each sample vector.
        hidden: width of the hidden layers. Small widths under-fit a multi-modal density on purpose
            (mass leaks between modes, the situation of the paper's Fig. 1).
        depth: number of hidden layers.
        label_dim: K, width of one-hot labels (0: unconditional).
        dropout: dropout probability after each hidden layer (DDO switches it off).
    """

    def __init__(self, data_dim: int = 2, hidden: int = 64, depth: int = 2, label_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        if data_dim < 1 or hidden < 1 or depth < 1 or label_dim < 0:
            raise ValueError(
                f"invalid ToyMLP sizes: data_dim={data_dim}, hidden={hidden}, depth={depth}, label_dim={label_dim}"
            )
        self.data_dim, self.label_dim = data_dim, label_dim
        self.embed = FourierNoiseEmbedding()
        layers: list[nn.Module] = []
        width = data_dim + 2 * self.embed.freqs.numel() + label_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, data_dim))
        self.net = nn.Sequential(*layers)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(D,): one sample (protocols.SampleSpec)."""
        return (self.data_dim,)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.flatten(1), self.embed(noise_labels), class_labels.reshape(x.shape[0], -1)], dim=1)
        return self.net(h).reshape(x.shape)
