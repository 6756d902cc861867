"""Loading weights into our networks from checkpoints: ours, NVIDIA's EDM/EDM2 pickles (safely); VAR later."""

from ..errors import ArchitectureMismatch, CheckpointError
from .architecture import check_checkpoint_fits, check_same_architecture
from .load import (
    denoiser_state_dict,
    load_network_weights,
    read_denoiser,
)
from .nvidia_pickle import (
    NvidiaPickleError,
    PersistentRecord,
    UnsafeGlobalError,
    load_edm2_training_state,
    load_network_from_nvidia_pickle,
    load_nvidia_pickle,
    network_from_record,
)
from .recorded import RecordedNetworkMismatch, check_recorded_network

__all__ = [
    "ArchitectureMismatch",
    "CheckpointError",
    "NvidiaPickleError",
    "PersistentRecord",
    "UnsafeGlobalError",
    "check_same_architecture",
    "denoiser_state_dict",
    "load_edm2_training_state",
    "load_network_from_nvidia_pickle",
    "load_network_weights",
    "load_nvidia_pickle",
    "network_from_record",
    "RecordedNetworkMismatch",
    "check_checkpoint_fits",
    "check_recorded_network",
    "read_denoiser",
]
