"""Networks: preconditioning wrappers and raw architectures."""

from .edm_factory import build_edm_network
from .edm_unets import DhariwalUNet, SongUNet
from .precond import EDMPrecond, VEPrecond, VPPrecond, edm_coefficients, iDDPMPrecond
from .token_gpt import TokenGPT
from .toy import ToyMLP
from .var import VAR, VQVAE, VARNetwork, VARTokenModel, build_vae, build_var, load_vae_checkpoint, load_var_checkpoint

__all__ = ["TokenGPT", 
    "DhariwalUNet",
    "EDMPrecond",
    "SongUNet",
    "ToyMLP",
    "VEPrecond",
    "VPPrecond",
    "build_edm_network",
    "edm_coefficients",
    "iDDPMPrecond",
    "VAR", "VQVAE", "VARNetwork", "VARTokenModel", "build_vae", "build_var", "load_vae_checkpoint", "load_var_checkpoint",
]
