"""Re-export of :mod:`ddo_lightning.files` (the atomic-write helpers live at the bottom layer so that
checkpoints/, data/, metrics/ and fetch/ use the same one)."""

from ..files import WriteError, atomic_path, atomic_torch_save, atomic_write_bytes, atomic_write_text

__all__ = ["WriteError", "atomic_path", "atomic_torch_save", "atomic_write_bytes", "atomic_write_text"]
