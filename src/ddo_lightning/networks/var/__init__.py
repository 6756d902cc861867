"""VAR (Tian et al. 2024): the multi-scale VQ-VAE tokenizer, the next-scale-prediction transformer, their
builders and strict checkpoint loaders (names as FoundationVision/VAR), and ``VARTokenModel``, the
``protocols.TokenModel`` adapter used by autoregressive DDO. See docs/var.md."""

from .adapter import VARNetwork, VARSample, VARTokenModel
from .build import (
    PATCH_NUMS_256,
    VAR_CHECKPOINTS,
    CheckpointMismatch,
    build_vae,
    build_vae_var,
    build_var,
    load_vae_checkpoint,
    load_var_checkpoint,
)
from .decoder import VARImageDecoder
from .transformer import VAR, AdaLNBeforeHead, AdaLNSelfAttn
from .vqvae import VQVAE, VectorQuantizer2

__all__ = [
    "PATCH_NUMS_256",
    "VAR",
    "VAR_CHECKPOINTS",
    "VQVAE",
    "AdaLNBeforeHead",
    "AdaLNSelfAttn",
    "CheckpointMismatch",
    "VARImageDecoder",
    "VARNetwork",
    "VARSample",
    "VARTokenModel",
    "VectorQuantizer2",
    "build_vae",
    "build_vae_var",
    "build_var",
    "load_vae_checkpoint",
    "load_var_checkpoint",
]
