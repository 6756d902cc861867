"""The one restricted-unpickler base: pickles read without executing anything stored in them.

A pickle names the globals (functions, classes) it needs to rebuild its objects; an ordinary
``pickle.load`` imports and calls whatever it names. :class:`RestrictedUnpickler` resolves a global only
through an explicit ``(module, name) -> object`` table and refuses everything else by name, so a
malicious or foreign file fails with :class:`~ddo_lightning.errors.RefusedGlobal` instead of running
code. Persistent ids are refused too (the base class raises when ``persistent_load`` is not defined).

Users: NVIDIA's EDM/EDM2 network pickles and EDM2's reference statistics
(:mod:`ddo_lightning.checkpoints.nvidia_pickle`), CIFAR-10's python batches (:mod:`ddo_lightning.data.images`).
:func:`numpy_globals` is the table entry set both need for plain numpy arrays.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

from .errors import RefusedGlobal

__all__ = ["RestrictedUnpickler", "codecs_encode", "numpy_globals"]


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals only through ``allowed``; any other global raises ``refused`` naming it and ``source``.

    ``source`` names the file in errors; ``hint`` ends the refusal message (what is allowed, where the
    table lives); ``encoding`` as :class:`pickle.Unpickler` (``"bytes"`` for Python 2 pickles).
    """

    def __init__(
        self,
        file: IO[bytes],
        source: str,
        allowed: Mapping[tuple[str, str], Any],
        *,
        hint: str = "",
        refused: type[Exception] = RefusedGlobal,
        encoding: str = "ASCII",
    ) -> None:
        super().__init__(file, encoding=encoding)
        self.source, self.allowed, self.hint, self.refused = source, allowed, hint, refused

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise self.refused(
                f"{self.source}: refusing the global '{module}.{name}' referenced by the pickle"
                + (f": {self.hint}" if self.hint else "")
            ) from None


def codecs_encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: only ``str`` -> latin-1 bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode: only str -> latin1 bytes is allowed")
    return text.encode("latin1")


def _numpy_module(name: str) -> Any:
    for prefix in ("numpy._core", "numpy.core"):  # numpy >= 2 (and 1.26's shim), then numpy 1.x
        try:
            return importlib.import_module(f"{prefix}.{name}")
        except ImportError:
            continue
    raise ImportError(f"numpy has no {name} module")  # pragma: no cover


_np_multiarray = _numpy_module("multiarray")
_np_numeric = _numpy_module("numeric")


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy ... multiarray._reconstruct`` restricted to plain ``ndarray``."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"numpy _reconstruct: only numpy.ndarray is allowed, got {subtype!r}")
    return _np_multiarray._reconstruct(subtype, shape, dtype)


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """``numpy ... numeric._frombuffer`` (protocol-5 pickles of arrays), non-object dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("numpy _frombuffer: needs a non-object dtype")
    return _np_numeric._frombuffer(buf, dtype, shape, order)


def numpy_globals() -> dict[tuple[str, str], Any]:
    """Table entries for plain numpy arrays and scalars (numpy 1.x and 2.x module names), and latin-1 bytes."""
    table: dict[tuple[str, str], Any] = {
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("_codecs", "encode"): codecs_encode,
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = _np_reconstruct
        table[(f"{prefix}.multiarray", "scalar")] = _np_multiarray.scalar
        table[(f"{prefix}.numeric", "_frombuffer")] = _np_frombuffer
    return table
