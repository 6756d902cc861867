"""FID of VAR token samples: decode with the VQ-VAE, then the usual ``metrics.FrechetDistance``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...metrics.fid import FrechetDistance
from .build import build_vae, load_vae_checkpoint
from .transformer import SharedRef


class DecodedFrechetDistance(FrechetDistance):
    """``FrechetDistance`` whose ``update`` also takes token sequences [B, L] (integer dtype): they are
    decoded by VAR's VQ-VAE to images in [−1, 1], quantised to uint8 with the project's rule and fed to
    the extractor. Images (uint8 or float) are taken as ``FrechetDistance`` takes them. Give
    ``reference_stats`` (e.g. the mu/sigma of OpenAI's ``VIRTUAL_imagenet256_labeled.npz``): a token
    dataset has no images to compute them from.

    Args:
        extractor, name, reference_stats, reference_batch_size: as ``FrechetDistance``.
        vae_checkpoint: the tokenizer's ``.pth`` (``vae_ch160v4096z32.pth``); None: random (tests).
        vae_kwargs: ``build_vae`` arguments when the tokenizer is not the released one.
        decode_batch_size: sequences decoded at once.
    """

    def __init__(self, extractor: nn.Module, vae_checkpoint: str | None = None, name: str = "fid",
                 reference_stats: str | None = None, reference_batch_size: int = 500,
                 vae_kwargs: dict[str, Any] | None = None, decode_batch_size: int = 100, **kwargs: Any):
        super().__init__(extractor, name=name, reference_stats=reference_stats,
                         reference_batch_size=reference_batch_size, **kwargs)
        vae_kwargs = dict(vae_kwargs or {})
        vae = load_vae_checkpoint(vae_checkpoint, **vae_kwargs) if vae_checkpoint else build_vae(**vae_kwargs)
        self.vae_proxy = SharedRef((vae.eval().requires_grad_(False),))  # not in state_dict
        self.decode_batch_size = decode_batch_size

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        vae = self.vae_proxy[0]
        vae.to(tokens.device)
        sizes = [pn * pn for pn in vae.quantize.v_patch_nums]
        if tokens.ndim != 2 or tokens.shape[1] != sum(sizes):
            raise ValueError(f"expected tokens [B, {sum(sizes)}], got {tuple(tokens.shape)}")
        return torch.cat([vae.idxBl_to_img(list(chunk.long().split(sizes, 1)), same_shape=True, last_one=True)
                          for chunk in tokens.split(self.decode_batch_size)])

    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if not x.is_floating_point() and x.dtype != torch.uint8:
            x = self.decode(x)
        super().update(x, labels)
