"""Samplers: pure functions of (network, noise, labels, grid)."""

from .edm import HeunSampler, heun_sampler
from .noise import mix_seed, seeded_normal

__all__ = ["HeunSampler", "heun_sampler", "mix_seed", "seeded_normal"]
