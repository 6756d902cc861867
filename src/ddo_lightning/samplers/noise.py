"""Per-sample seeded noise: a sample's noise depends on its own seed only, never on the batch it was
drawn in, the device count or the rank — so pools and evaluation sets are identical however they are
sharded (the idea of EDM's per-seed generators)."""

from __future__ import annotations

import hashlib

import torch


def mix_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (e.g. (base_seed, round, index)); independent of Python's
    hash randomisation and platform."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeded_normal(
    seeds: torch.Tensor | list[int], shape: tuple[int, ...], *, device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise [len(seeds), *shape], row i drawn from a CPU generator seeded with seeds[i].

    Drawn on the CPU (bitwise identical on every machine) and moved to ``device``.
    """
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    gen = torch.Generator()
    rows = []
    for s in seeds:
        gen.manual_seed(s)
        rows.append(torch.randn(shape, generator=gen, dtype=dtype))
    out = torch.stack(rows) if rows else torch.empty((0, *shape), dtype=dtype)
    return out.to(device) if device is not None else out
