"""Inception-v3 pool features (2048-d) for FID, through torch-fidelity's TF-compatible extractor.

torch-fidelity (extra ``.[fid]``, which also needs torchvision) is imported only when the extractor is
built. Weights are never downloaded at run time here: give ``weights_path`` (torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``) or have it in torch's hub cache; a missing file fails at
once with the path it expected.
"""

from __future__ import annotations

import os

import torch
from torch import nn

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


class InceptionFeatures(nn.Module):
    """uint8 images [B, 3, H, W] (any H, W; grey images are repeated to 3 channels) → 2048-d features,
    resized to 299 with torch-fidelity's TF1-compatible bilinear resize (the EDM/torch-fidelity protocol,
    not torchmetrics' antialiased default).

    Args:
        weights_path: torch-fidelity's Inception weights file; None looks in torch's hub cache.
    """

    feature_dim = 2048

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        if weights_path is None:
            weights_path = os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILE)
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"Inception weights not found at {weights_path}: download {WEIGHTS_FILE} (torch-fidelity's "
                "release) on a machine with internet and pass `weights_path`; nothing is downloaded at run time"
            )
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise ImportError("InceptionFeatures needs torch-fidelity: pip install -e '.[fid]'") from err
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights_path)
        self.eval().requires_grad_(False)

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        if images_uint8.shape[1] == 1:
            images_uint8 = images_uint8.repeat(1, 3, 1, 1)
        return self.net(images_uint8)[0].reshape(len(images_uint8), -1)
