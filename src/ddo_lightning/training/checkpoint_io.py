"""Checkpoint files that are never half-written, and truncated ones that are recognised.

``AtomicCheckpointIO`` (the ``ddo`` command installs it unless a config names another checkpoint plugin)
writes every Lightning checkpoint to a temporary name in the same directory, flushes it to disk and
renames it: a crash or SIGKILL leaves either the old file or the new one. ``usable_checkpoint`` checks a
checkpoint loads (``torch.load(weights_only=True)``: our checkpoints hold tensors and plain containers
only) and, when it does not, falls back to the newest good checkpoint in the same directory.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from ..errors import CorruptCheckpoint
from ..files import read_tensor_file
from .atomic import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with write-to-temporary-then-rename saves and a clear error for unreadable files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, str(path))  # a failed write removes its temporary file and names `path`

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise CorruptCheckpoint(
                f"checkpoint {path} cannot be read (truncated or corrupt?): {type(err).__name__}: {err}"
            ) from err


def check_checkpoint(path: str) -> None:
    """Raise :class:`CorruptCheckpoint` unless ``path`` loads with ``torch.load(weights_only=True)``."""
    read_tensor_file(path, mmap=True)


def usable_checkpoint(path: str) -> str:
    """``path`` if it loads; otherwise the newest other ``*.ckpt`` in its directory that loads (with a
    warning naming both); otherwise :class:`CorruptCheckpoint` naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        check_checkpoint(path)
        return path
    except CorruptCheckpoint as err:
        first = err
    here = os.path.dirname(os.path.abspath(path))
    others = sorted(
        (p for p in glob.glob(os.path.join(here, "*.ckpt")) if os.path.abspath(p) != os.path.abspath(path)),
        key=os.path.getmtime,
        reverse=True,
    )
    for other in others:
        try:
            check_checkpoint(other)
        except CorruptCheckpoint:
            continue
        rank_zero_warn(f"{first}. Resuming from the newest good checkpoint in {here} instead: {other}")
        return other
    raise CorruptCheckpoint(f"{first}; no other readable checkpoint in {here}")
