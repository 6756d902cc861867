"""Moving averages of the target's weights: the classic EMA (EDM's half-life in images and ramp-up) and
EDM2's power-function EMA (:class:`PowerEMA`, σ_rel parameterisation).

Only the target is averaged (never the frozen reference, unlike Lightning's whole-module
WeightAveraging), and the EMA restarts from the promoted weights at every round.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn


class EMA(nn.Module):
    """EMA copy of a network. ``model`` holds the averaged weights (eval mode, no grad).

    Args:
        source: the network to average (copied at construction).
        halflife_kimg: half-life in thousands of images (EDM: 500; DDO on CIFAR-10: 250).
        rampup_ratio: if set, the half-life is at most ``rampup_ratio × images seen`` (EDM: 0.05), so a
            fresh EMA follows the network closely at first.
    """

    def __init__(self, source: nn.Module, halflife_kimg: float, rampup_ratio: float | None = 0.05):
        super().__init__()
        if not halflife_kimg > 0:
            raise ValueError(f"EMA half-life must be > 0 kimg, got {halflife_kimg}")
        self.model = copy.deepcopy(source).eval().requires_grad_(False)
        self.halflife_images = halflife_kimg * 1000.0
        self.rampup_ratio = rampup_ratio
        self.register_buffer("images", torch.zeros((), dtype=torch.int64))

    def train(self, mode: bool = True) -> EMA:  # the average is never in training mode
        return super().train(False)

    def beta(self, batch_images: int) -> float:
        halflife = self.halflife_images
        if self.rampup_ratio is not None:
            halflife = min(halflife, float(self.images) * self.rampup_ratio)
        return 0.5 ** (batch_images / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, source: nn.Module, batch_images: int) -> None:
        """Fold in the source's current weights after a step that used ``batch_images`` images."""
        self.images += batch_images
        b = self.beta(batch_images)
        for p_ema, p in zip(self.model.parameters(), source.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - b)
        for b_ema, b_src in zip(self.model.buffers(), source.buffers()):
            b_ema.copy_(b_src)

    @torch.no_grad()
    def reset(self, source: nn.Module) -> None:
        """Restart the average at the source's weights (a new self-play round)."""
        self.model.load_state_dict(source.state_dict())
        self.images.zero_()


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ of the power-function EMA profile with relative standard deviation σ_rel (EDM2
    Eq. 126 / Algorithm 2): the largest real root of γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0,
    i.e. the inverse of :func:`gamma_to_sigma_rel`. Needs 0 < σ_rel < √(1/12) ≈ 0.289 (γ > 0)."""
    if not 0 < sigma_rel < math.sqrt(1 / 12):
        raise ValueError(f"sigma_rel must be in (0, {math.sqrt(1 / 12):.4f}), got {sigma_rel}")
    t = float(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = √((γ+1) / ((γ+2)²(γ+3))) (EDM2 Eq. 123)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class PowerEMA(EMA):
    """EDM2's power-function EMA (Karras et al. 2024, §3.1 and App. C): after t images the average is
    ∫ weights with density ∝ τ^γ over [0, t], tracked by β_t = (1 − Δt/t)^(γ+1) per update of Δt images.
    The profile is named by its relative standard deviation σ_rel (EDM2 trains with 0.050 and 0.100; DDO's
    EDM2 runs use 0.05). The average has no fixed horizon: it always covers the whole run (here: the
    round, as :meth:`reset` restarts it), with recent weights weighted more for larger γ.

    Same interface and state as :class:`EMA` (only β differs): ``model`` (eval mode, no grad),
    ``update(source, batch_images)``, ``reset(source)``, buffer ``images``. The state (``model.*``,
    ``images``) is in every checkpoint of the module that holds it, so a resumed run continues the same
    average exactly.

    Args:
        source: the network to average (copied at construction).
        sigma_rel: relative standard deviation of the profile; γ = :func:`sigma_rel_to_gamma` (EDM2: 0.05 →
            γ ≈ 16.97, 0.10 → γ ≈ 6.94).
    """

    def __init__(self, source: nn.Module, sigma_rel: float = 0.05):
        super().__init__(source, halflife_kimg=math.inf, rampup_ratio=None)  # no half-life: β below
        self.sigma_rel = float(sigma_rel)
        self.gamma = sigma_rel_to_gamma(self.sigma_rel)

    def beta(self, batch_images: int) -> float:
        """β for an update of ``batch_images`` images that brought the count to ``images``."""
        t = float(self.images)
        return (1.0 - batch_images / t) ** (self.gamma + 1) if t > 0 else 0.0


def make_ema(
    source: nn.Module, halflife_kimg: float, rampup_ratio: float | None = 0.05, sigma_rel: float | None = None
) -> EMA | PowerEMA:
    """:class:`PowerEMA` (``sigma_rel`` given) or the classic :class:`EMA` (half-life, ramp-up)."""
    if sigma_rel is not None:
        return PowerEMA(source, sigma_rel)
    return EMA(source, halflife_kimg, rampup_ratio)
