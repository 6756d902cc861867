"""The digits classifier whose features define **digits-FID**: the Fréchet distance between
classifier features of generated and real 8×8 digits — the usual MNIST-style FID surrogate, where a
small classifier trained on the data replaces Inception-v3. Values are only comparable with other
digits-FID values computed with the same classifier weights (shipped in ``metrics/assets``, trained
deterministically by ``scripts/train_digits_classifier.py``).
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn


class DigitsFeatures(nn.Module):
    """A small CNN on uint8 digits [B, 1, 8, 8] (values 0..255). ``forward`` returns the 64-d penultimate
    features (what digits-FID compares); ``logits`` the 10 class scores."""

    feature_dim = 64

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2),
            nn.SiLU(),  # 4x4
            nn.Flatten(),
            nn.Linear(64 * 16, self.feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(self.feature_dim, 10)
        if pretrained:
            ref = resources.files("ddo_lightning.metrics").joinpath("assets/digits_classifier.pt")
            with ref.open("rb") as f:
                self.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
        self.eval().requires_grad_(False)

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.float() / 127.5 - 1
        if x.shape[-2:] != (8, 8):  # digits upscaled by an integer factor: average back to 8x8
            x = nn.functional.adaptive_avg_pool2d(x, 8)
        return self.body(x)

    def logits(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(images_uint8))
