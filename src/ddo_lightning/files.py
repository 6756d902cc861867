"""Files written all at once or not at all: the package's one tmp-then-rename helper.

Every output (checkpoints, ``best.pt``, ``summary.json``, figures, ``config.yaml``, FID statistics,
``ddo sample`` archives, converted pickles, the fetch lock file, token caches) is written to a temporary name in the destination's directory and renamed over the destination: a crash leaves either
the old file or the new one. When the write fails (a full disk, a read-only folder, a killed pickler) the
temporary file is removed and the error names the destination, so a failed write leaves nothing behind
and says where it failed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from .errors import CorruptCheckpoint, WriteError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    ``suffix`` ends the temporary name (e.g. ``".png"``: matplotlib picks the format from the name). On any
    exception the temporary file is deleted; an ``OSError`` is re-raised as :class:`WriteError` naming
    ``path`` (same errno), anything else unchanged but with a note naming ``path``.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(
                err.errno, f"writing {path} failed ({err.strerror or err}); nothing was written", path
            ) from err
        if isinstance(err, Exception):
            err.add_note(f"while writing {path} (nothing was written)")
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (flushed to disk before the rename)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def read_tensor_file(
    path: str | os.PathLike, *, what: str = "checkpoint", mmap: bool = False, map_location: Any = "cpu"
) -> Any:
    """The package's one reader of torch files (checkpoints ``.ckpt``/``.pt``, VAR's ``.pth``, token files):
    ``torch.load(weights_only=True)``, so nothing stored in the file can execute (tensors and plain
    containers only). NVIDIA's pickles go through :mod:`ddo_lightning.checkpoints.nvidia_pickle` instead;
    :func:`ddo_lightning.checkpoints.read_denoiser` picks the right reader for denoiser weights.

    A missing file raises ``FileNotFoundError`` ("<what> not found: <path>"); an unreadable one
    :class:`~ddo_lightning.errors.CorruptCheckpoint` naming the file and the cause. ``mmap`` maps the
    file instead of reading it (cheap checks of large checkpoints)."""
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # truncated zip, foreign pickle, unsafe global, ...: name the file and the cause
        raise CorruptCheckpoint(
            f"{what} {path} cannot be read (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err
