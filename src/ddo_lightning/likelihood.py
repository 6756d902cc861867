"""Log-likelihood-ratio estimators: what each model family plugs into the DDO loss.

Diffusion (method.md §2, paper Eq. 14–16): log p_θ(x) − log p_ref(x) is estimated from one noise draw
(σ, ε) per sample, shared by target and reference, as the negative difference of λ-weighted
denoising errors summed over dimensions:

    Δ(x) = −(λ(σ)·‖D_θ(x+σε; σ) − x‖² − λ(σ)·‖D_ref(x+σε; σ) − x‖²)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import denoising_error
from .protocols import Denoiser
from .schedules import edm_weight


@dataclass(frozen=True)
class DiffusionLogRatio:
    """Per-sample outputs of :func:`diffusion_log_ratio`, all [N].

    delta: −(err_target − err_reference), with gradient through the target only.
    err_target: λ-weighted summed denoising error of the target (with gradient).
    err_reference: same for the reference (no gradient).
    """

    delta: torch.Tensor
    err_target: torch.Tensor
    err_reference: torch.Tensor


def diffusion_log_ratio(
    target: Denoiser,
    reference: Denoiser,
    x: torch.Tensor,
    labels: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
) -> DiffusionLogRatio:
    """Estimate log p_θ(x) − log p_ref(x) for every sample of x with ONE forward of each network.

    x: [N, *D] clean samples (real and fake concatenated by the caller); labels: [N, K];
    sigma: [N] noise levels; noise: [N, *D] standard normal ε. The same (σ, ε) enters both networks,
    so their difference has low variance (common random numbers). The target runs with grad, the
    reference under ``torch.no_grad``; the reference's mode (eval) is the caller's business.
    """
    if target.sigma_data != reference.sigma_data:
        raise ValueError(
            f"target and reference disagree on sigma_data ({target.sigma_data} vs {reference.sigma_data})"
        )
    shape = (-1,) + (1,) * (x.ndim - 1)
    noisy = x + sigma.reshape(shape) * noise
    weight = edm_weight(sigma, target.sigma_data)
    err_target = denoising_error(target(noisy, sigma, labels), x, weight)
    with torch.no_grad():
        err_reference = denoising_error(reference(noisy, sigma, labels), x, weight)
    return DiffusionLogRatio(-(err_target - err_reference), err_target, err_reference)
