"""Token sequences → uint8 images through VAR's VQ-VAE: the ``decoder`` that lets
``metrics.FrechetDistance`` (and the sample grids that reuse it) score VAR's token samples."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...pixels import model_to_uint8
from .build import build_vae, load_vae_checkpoint


class VARImageDecoder(nn.Module):
    """``decoder(tokens [B, L]) -> uint8 images [B, 3, H, W]``: the scales' indices decoded by the
    VQ-VAE to [−1, 1], then quantised with the project's rule (``pixels.model_to_uint8``, as EDM writes
    PNGs). Use as ``FrechetDistance(decoder=VARImageDecoder(...))``; its weights stay out of checkpoints
    (FrechetDistance drops ``decoder.*`` from its state dict). Give FrechetDistance ``reference_stats``
    (e.g. OpenAI's VIRTUAL_imagenet256_labeled mu/sigma): a token dataset has no images.

    Args:
        vae_checkpoint: the tokenizer's ``.pth`` (``vae_ch160v4096z32.pth``); None: random (tests).
        vae_kwargs: ``build_vae`` arguments when the tokenizer is not the released one.
        decode_batch_size: sequences decoded at once.
    """

    def __init__(
        self, vae_checkpoint: str | None = None, vae_kwargs: dict[str, Any] | None = None, decode_batch_size: int = 100
    ):
        super().__init__()
        vae_kwargs = dict(vae_kwargs or {})
        vae = load_vae_checkpoint(vae_checkpoint, **vae_kwargs) if vae_checkpoint else build_vae(**vae_kwargs)
        self.vae = vae.eval().requires_grad_(False)
        self.decode_batch_size = decode_batch_size

    def train(self, mode: bool = True) -> VARImageDecoder:  # always in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        sizes = [pn * pn for pn in self.vae.quantize.v_patch_nums]
        if tokens.ndim != 2 or tokens.shape[1] != sum(sizes):
            raise ValueError(f"expected tokens [B, {sum(sizes)}], got {tuple(tokens.shape)}")
        images = torch.cat(
            [
                self.vae.idxBl_to_img(list(chunk.long().split(sizes, 1)), same_shape=True, last_one=True)
                for chunk in tokens.split(self.decode_batch_size)
            ]
        )
        return model_to_uint8(images)
