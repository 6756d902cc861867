"""Real datasets. Each yields ``Samples(x, labels)`` and exposes ``sample_shape`` and ``label_dim``;
datasets with a known density also expose ``ground_truth``."""

from .toy2d import GaussianMixture, Toy2DDataset, mixture_preset

__all__ = ["GaussianMixture", "Toy2DDataset", "mixture_preset"]
