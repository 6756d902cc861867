"""Exponential moving average of the target's weights, with EDM's half-life in images and ramp-up.

Only the target is averaged (never the frozen reference, unlike Lightning's whole-module
WeightAveraging), and the EMA restarts from the promoted weights at every round.
"""

from __future__ import annotations

import copy

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

    def train(self, mode: bool = True) -> "EMA":  # the average is never in training mode
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
