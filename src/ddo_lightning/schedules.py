"""EDM noise schedule pieces (Karras et al. 2022, "Elucidating the Design Space...").

Pure functions on tensors; no state, no device choice beyond the inputs'.
"""

from __future__ import annotations

import torch


def sample_log_normal_sigma(
    batch_size: int,
    P_mean: float,
    P_std: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """ln σ ~ N(P_mean, P_std²) (EDM Table 1, "training" row). Returns [B]."""
    n = torch.randn(batch_size, generator=generator, device=device, dtype=dtype)
    return (n * P_std + P_mean).exp()


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ·σ_d)² (EDM Eq. 8 with Table 1): equals 1 / c_out(σ)²."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def karras_sigmas(
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """EDM sampling grid (EDM Eq. 5): σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ.

    Returns [N] decreasing from σ_max to σ_min, or [N+1] with a final 0 (``append_zero``), in float64 so
    the grid is exact; samplers cast per step.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 for a Karras grid, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    i = torch.arange(num_steps, dtype=dtype)
    inv_rho = 1.0 / rho
    sig = (sigma_max**inv_rho + i / (num_steps - 1) * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    if append_zero:
        sig = torch.cat([sig, sig.new_zeros(1)])
    return sig
