"""Per-sample seeded randomness: a sample's noise depends on its own seed only, never on the batch it was
drawn in, the device count or the rank — so pools and evaluation sets are identical however they are
sharded (the idea of EDM's per-seed generators).

One helper, :func:`seeded_rows`, runs the per-seed generator; :func:`seeded_normal` (diffusion's initial
noise) and :func:`seeded_uniform` (the uniforms of the token samplers' inverse-CDF draws) are draws through
it. :func:`inverse_cdf` is the one inverse-CDF draw, shared by the generic token sampler and VAR's scale
sampler.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch


def mix_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (e.g. (base_seed, round, index)); independent of Python's
    hash randomisation and platform."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeded_rows(
    seeds: torch.Tensor | list[int],
    shape: tuple[int, ...],
    draw: Callable[..., torch.Tensor],
    *,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[len(seeds), *shape]: row i is ``draw(shape, generator=g, dtype=dtype)`` with a CPU generator ``g``
    seeded with seeds[i] (``draw``: ``torch.randn``, ``torch.rand``, …).

    Drawn on the CPU (bitwise identical on every machine) and moved to ``device``.
    """
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    gen = torch.Generator()
    rows = []
    for s in seeds:
        gen.manual_seed(s)
        rows.append(draw(shape, generator=gen, dtype=dtype))
    out = torch.stack(rows) if rows else torch.empty((0, *shape), dtype=dtype)
    return out.to(device) if device is not None else out


def seeded_normal(
    seeds: torch.Tensor | list[int],
    shape: tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise [len(seeds), *shape], row i from seeds[i] (:func:`seeded_rows`)."""
    return seeded_rows(seeds, tuple(shape), torch.randn, dtype=dtype, device=device)


def seeded_uniform(
    seeds: torch.Tensor | list[int], length: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Uniforms in [0, 1) [len(seeds), length], float64, row i from seeds[i] (:func:`seeded_rows`)."""
    return seeded_rows(seeds, (int(length),), torch.rand, dtype=torch.float64, device=device)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices [B] drawn from probabilities [B, V] (float64, rows need not sum exactly to 1) at uniforms
    u [B] in [0, 1): the first index whose cumulative probability exceeds u·total. Scaling u by the row's
    total (rather than normalising the CDF) keeps the draw robust to rounding; the clamp catches u·total
    landing on the total itself."""
    cdf = probs.cumsum(-1)
    x = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, x, right=True).clamp_max(cdf.shape[-1] - 1).squeeze(-1)
