"""Samplers: pure functions of (network, noise, labels), one contract (``base.Sampler``):
``sampler(net, noise, labels)``, the noise made from per-sample seeds by ``sampler.noise(seeds, shape)``."""

from .base import Sampler
from .edm import HeunSampler, heun_sampler
from .noise import inverse_cdf, mix_seed, seeded_normal, seeded_rows, seeded_uniform
from .tokens import TokenSampler, filtered_probs, sample_tokens

__all__ = [
    "HeunSampler",
    "Sampler",
    "TokenSampler",
    "filtered_probs",
    "heun_sampler",
    "inverse_cdf",
    "mix_seed",
    "sample_tokens",
    "seeded_normal",
    "seeded_rows",
    "seeded_uniform",
]
