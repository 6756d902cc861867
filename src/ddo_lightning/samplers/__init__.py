"""Samplers: pure functions of (network, noise, labels, grid)."""

from .base import Sampler
from .edm import HeunSampler, heun_sampler
from .noise import mix_seed, seeded_normal
from .tokens import TokenSampler, filtered_probs, sample_tokens, seeded_uniform

__all__ = ["HeunSampler", "Sampler", "TokenSampler", "filtered_probs", "heun_sampler", "mix_seed", "sample_tokens", "seeded_normal", "seeded_uniform"]
