"""Losses on log-likelihood ratios and denoising errors. Pure functions; no reduction over the batch
unless the name says so.

DDO (Zheng et al. 2025, Eq. 13), with r_θ(x) = log p_θ(x) − log p_ref(x):

    L(θ) = E_real[ −log σ(β·r_θ(x)) ] + α · E_fake[ −log σ(−β·r_θ(x)) ]

computed with ``logsigmoid`` for stability. At θ = θ_ref, r ≡ 0 and L = (1+α)·ln 2 exactly.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def check_alpha_beta(alpha: float, beta: float) -> None:
    """Reject α, β outside the loss's domain (α ≥ 0 weights the fake term, β > 0 scales r)."""
    for name, value, ok in (("alpha", alpha, lambda v: v >= 0), ("beta", beta, lambda v: v > 0)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (numbers.Real, torch.Tensor))
            or (isinstance(value, torch.Tensor) and value.numel() != 1)
        ):
            raise TypeError(f"DDO {name} must be a number, got {type(value).__name__}: {value!r}")
        value = float(value)
        if not math.isfinite(value) or not ok(value):
            bound = ">= 0" if name == "alpha" else "> 0"
            raise ValueError(
                f"DDO {name} must be finite and {bound}, got {value!r} "
                "(the paper uses alpha in [0.5, 50], beta in [0.01, 0.1])"
            )


@dataclass(frozen=True)
class DDOLoss:
    """Per-sample DDO loss and its parts. All tensors are [B] unless noted.

    loss: −logσ(βΔ_real) − α_i·logσ(−βΔ_fake) for pair i (real i, fake i), with gradient.
    real_term / fake_term: −logσ(βΔ_real) and −logσ(−βΔ_fake) (the latter *before* multiplying by α).
    """

    loss: torch.Tensor
    real_term: torch.Tensor
    fake_term: torch.Tensor
    delta_real: torch.Tensor
    delta_fake: torch.Tensor

    def stats(self) -> dict[str, torch.Tensor]:
        """Detached scalar diagnostics (docs/method.md §7): loss terms, Δ mean/std, discriminator accuracy."""
        dr, df = self.delta_real.detach(), self.delta_fake.detach()
        return {
            "loss": self.loss.detach().mean(),
            "loss_real": self.real_term.detach().mean(),
            "loss_fake": self.fake_term.detach().mean(),
            "delta_real_mean": dr.mean(),
            "delta_real_std": dr.std(unbiased=False),
            "delta_fake_mean": df.mean(),
            "delta_fake_std": df.std(unbiased=False),
            # implicit discriminator d = σ(βΔ): right when Δ_real > 0 and Δ_fake < 0
            "disc_acc_real": (dr > 0).float().mean(),
            "disc_acc_fake": (df < 0).float().mean(),
            "disc_acc": 0.5 * ((dr > 0).float().mean() + (df < 0).float().mean()),
        }


def ddo_loss(
    delta_real: torch.Tensor,
    delta_fake: torch.Tensor,
    alpha: float | torch.Tensor,
    beta: float,
) -> DDOLoss:
    """DDO loss (Eq. 13) on per-sample log-ratio estimates.

    delta_real: [B] r_θ on real samples; delta_fake: [B] r_θ on fake (reference) samples; real i and
    fake i form pair i. alpha: scalar or [B] per fake sample (a per-sample α = 0 removes a fake, as
    CFG-compatible AR training needs for label-dropped fakes, docs/method.md §3). Gradient flows through
    both deltas. Returns per-sample terms, unreduced.
    """
    if delta_real.shape != delta_fake.shape:
        raise ValueError(
            f"real and fake batches must pair 1:1, got delta_real {tuple(delta_real.shape)} "
            f"and delta_fake {tuple(delta_fake.shape)}"
        )
    if isinstance(alpha, torch.Tensor):
        if not torch.isfinite(alpha).all() or (alpha < 0).any():
            raise ValueError("per-sample alpha must be finite and >= 0")
        check_alpha_beta(0.0, beta)
    else:
        check_alpha_beta(alpha, beta)
    real_term = -F.logsigmoid(beta * delta_real)
    fake_term = -F.logsigmoid(-beta * delta_fake)
    return DDOLoss(real_term + alpha * fake_term, real_term, fake_term, delta_real, delta_fake)


def denoising_error(denoised: torch.Tensor, clean: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """λ-weighted squared error per sample: λ(σ_i)·Σ_dims (D_i − x_i)², SUMMED over all non-batch
    dimensions (the ELBO-style per-sample quantity of docs/method.md §2, not a mean). Returns [B]."""
    err = (denoised.float() - clean.float()).square().flatten(1).sum(dim=1)
    return weight * err


def dsm_loss(denoised: torch.Tensor, clean: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """EDM denoising score-matching loss (EDM Eq. 2 with λ(σ)), per sample and MEAN over dimensions,
    as EDM trains (a per-dimension scale keeps the learning rate independent of resolution). [B]."""
    return denoising_error(denoised, clean, weight) / clean[0].numel()
