"""Loading weights into our networks from checkpoints (ours now; NVIDIA/VAR formats later)."""

from .load import ArchitectureMismatch, check_same_architecture, denoiser_state_dict, load_network_weights

__all__ = ["ArchitectureMismatch", "check_same_architecture", "denoiser_state_dict", "load_network_weights"]
