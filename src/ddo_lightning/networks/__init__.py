"""Networks: preconditioning wrappers and raw architectures."""

from .precond import EDMPrecond, edm_coefficients
from .toy import ToyMLP

__all__ = ["EDMPrecond", "ToyMLP", "edm_coefficients"]
