"""Inception-v3 pool features (2048-d) for FID, through torch-fidelity's TF-compatible extractor.

The protocol is EDM's and torch-fidelity's (both reproduce the TensorFlow FID code):

- **Quantisation**: generated images are mapped to uint8 exactly as EDM writes its PNGs
  (``ddo_lightning.pixels.model_to_uint8``) before any feature is computed; real images are uint8 already.
- **Resize**: uint8 → float, then torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x`` to
  299×299 — TF1 ``resize_bilinear`` (no half-pixel centres, **no antialiasing**) — then (x − 128) / 128.
  torchmetrics 1.9's ``FrechetInceptionDistance`` defaults to ``antialias=True``, a different resize
  whose numbers are not comparable with the paper's; it is not used here.
- **Features**: the 2048-d average-pool output of the 2015-12-05 Inception graph, in float32, then
  accumulated in float64.

Weights are never downloaded at run time: give ``weights_path`` (torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``) or have the file in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``, where torch-fidelity itself caches it); a missing file fails at once
with the path it expected and the address to fetch it from.

torch-fidelity needs torchvision, and torchvision must match torch exactly (the extra ``.[fid]``).
``make install`` gives CPU-only machines a CPU build of torch, for which PyPI has no matching torchvision,
so there torch-fidelity is not installed and this extractor says so when built; ``make test-fid`` runs the
Inception tests in a second environment with a matching pair (docs/install.md).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch
from torch import nn

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"


def default_weights_path() -> str:
    """Where torch-fidelity caches the Inception weights: ``<torch hub dir>/checkpoints/<file>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILE)


def fidelity_inception_module() -> Any:
    """torch-fidelity's ``feature_extractor_inceptionv3`` module (imported on first use)."""
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    except ImportError as err:
        raise ImportError(
            f"Inception FID needs torch-fidelity and a torchvision that matches torch {torch.__version__} "
            f"({type(err).__name__}: {err}). Install the extra: pip install -e '.[fid]' (on a CPU-only machine "
            "set up by `make install`, use `make install-fid`, which builds .venv-fid with a matching pair)"
        ) from err


def resize_for_inception(images_uint8: torch.Tensor, size: int = 299) -> torch.Tensor:
    """The resize the Inception extractor applies: float32 of the uint8 values, TF1 bilinear to
    ``size``×``size`` without antialiasing (torch-fidelity's implementation). [B, C, H, W] → [B, C, size, size]."""
    mod = fidelity_inception_module()
    return mod.interpolate_bilinear_2d_like_tensorflow1x(
        images_uint8.to(torch.float32), size=(size, size), align_corners=False
    )


class InceptionFeatures(nn.Module):
    """uint8 images [B, 3, H, W] (any H, W; grey images are repeated to 3 channels) → 2048-d pool
    features, with the resize and quantisation documented in this module.

    Args:
        weights_path: torch-fidelity's Inception weights file; None: torch's hub cache
            (``default_weights_path()``).
    """

    feature_dim = 2048

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        path = os.path.expanduser(weights_path) if weights_path is not None else default_weights_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Inception weights not found at {path}. Nothing is downloaded at run time: fetch {WEIGHTS_URL} "
                f"on a machine with internet and either put it there or pass its path (InceptionFeatures(weights_path=...), "
                "`--inception-weights` on the command line)"
            )
        cls = fidelity_inception_module().FeatureExtractorInceptionV3
        try:
            self.net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
        except Exception as err:
            raise ValueError(f"cannot load Inception weights from {path}: {type(err).__name__}: {err}") from err
        self.weights_path = path
        self.eval().requires_grad_(False)

    def weights_file(self) -> str:
        """The weights file this extractor was loaded from (what FID provenance hashes)."""
        return self.weights_path

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        if images_uint8.dtype != torch.uint8:
            raise TypeError(f"InceptionFeatures takes uint8 images, got {images_uint8.dtype}")
        if images_uint8.shape[1] == 1:
            images_uint8 = images_uint8.repeat(1, 3, 1, 1)
        return self.net(images_uint8)[0].reshape(len(images_uint8), -1)
