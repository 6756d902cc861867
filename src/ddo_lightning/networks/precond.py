"""EDM preconditioning (Karras et al. 2022, Table 1, "Ours" column) around any raw network F:

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ), labels)
    c_skip = σ_d²/(σ²+σ_d²), c_out = σ·σ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ln(σ)/4

The raw network is stored as ``self.model`` (EDM's attribute name, so parameters are ``model.*``).
"""

from __future__ import annotations

import torch
from torch import nn


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) for σ of any shape."""
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """Wrap a raw network ``model(x, noise_labels, class_labels) -> F_x`` into an EDM denoiser.

    Args:
        model: the raw network; called with x [B, *D] (scaled by c_in), noise_labels [B] and
            class_labels [B, K] (zeros of width 0 for unconditional models).
        sigma_data: the data standard deviation σ_d (0.5 for images in [−1, 1]).

    forward(x [B,*D], sigma [B] or scalar, labels [B,K]) -> [B,*D] float32. Runs in float32 (no
    autocast: the DDO log-ratio is a small difference of large sums, method.md §2).
    """

    def __init__(self, model: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.model = model
        self.sigma_data = float(sigma_data)

    def raw(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """F(c_in·x; c_noise): the raw network output, for the identity λ‖D−x‖² = ‖F−F̂‖²."""
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1).expand(x.shape[0])
        _, _, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.model(c_in.reshape(shape) * x, c_noise, labels.to(torch.float32)).to(torch.float32)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1).expand(x.shape[0])
        c_skip, c_out, _, _ = edm_coefficients(sigma, self.sigma_data)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return c_skip.reshape(shape) * x + c_out.reshape(shape) * self.raw(x, sigma, labels)
