"""The one pixel convention of the project: uint8 [0, 255] <-> model space [-1, 1] (EDM's).

Real images enter the model as ``x / 127.5 - 1``; generated images leave it as EDM's ``generate.py``
writes them, ``floor(x * 127.5 + 128)`` clipped to [0, 255] (round half up). FID features, sample
files, the quantised fake pool and the sample grids all use these two functions, so generated and real
images are quantised identically (docs/method.md §4).
"""

from __future__ import annotations

import numpy as np
import torch


def uint8_to_model(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] as x / 127.5 - 1 (EDM's mapping). Any shape."""
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8:
        raise TypeError(f"uint8_to_model expects uint8 images, got {x.dtype}")
    return x.to(torch.float32) / 127.5 - 1


def model_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] as EDM writes samples: ``(x * 127.5 + 128).clip(0, 255)`` truncated
    to uint8, i.e. round((x + 1) * 127.5) with halves rounded up. Exact inverse of ``uint8_to_model`` on
    its 256 values. Any shape."""
    return (x.to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Model-space samples through the real data's quantisation: round to the 256 uint8 levels, clip,
    map back to [-1, 1] (float32). Use on fakes so they differ from reals only in content."""
    return uint8_to_model(model_to_uint8(x))
