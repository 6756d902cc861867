"""Networks: preconditioning wrappers and raw architectures."""

from .base import Backbone, Network
from .edm2 import EDM2_PRESETS, edm2_preset_kwargs
from .edm2 import Precond as EDM2Precond
from .edm2 import UNet as EDM2UNet
from .edm_factory import build_edm2_network, build_edm_network
from .edm_unets import DhariwalUNet, SongUNet
from .precond import EDMPrecond, VEPrecond, VPPrecond, edm_coefficients, iDDPMPrecond, raw_network
from .token_gpt import TokenGPT
from .toy import ToyMLP
from .var import VAR, VQVAE, VARNetwork, VARTokenModel, build_vae, build_var, load_vae_checkpoint, load_var_checkpoint

__all__ = [
    "TokenGPT",
    "Backbone",
    "Network",
    "EDM2_PRESETS",
    "EDM2Precond",
    "EDM2UNet",
    "build_edm2_network",
    "edm2_preset_kwargs",
    "DhariwalUNet",
    "EDMPrecond",
    "SongUNet",
    "ToyMLP",
    "VEPrecond",
    "VPPrecond",
    "build_edm_network",
    "edm_coefficients",
    "iDDPMPrecond",
    "raw_network",
    "VAR",
    "VQVAE",
    "VARNetwork",
    "VARTokenModel",
    "build_vae",
    "build_var",
    "load_vae_checkpoint",
    "load_var_checkpoint",
]
