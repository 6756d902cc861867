"""Real datasets. Each yields ``Samples(x, labels)`` and exposes ``sample_shape`` and ``label_dim``;
datasets with a known density also expose ``ground_truth``. Image datasets hold uint8 images and map
them to [-1, 1] with ``uint8_to_model``; fakes go through the same quantisation with ``quantize``."""

from .digit_mixture import DigitMixtureDataset, LowRankGaussianMixture, digit_mixture
from .images import (
    Cifar10Dataset,
    DigitsDataset,
    ImageDataset,
    ImageFolderDataset,
    model_to_uint8,
    quantize,
    uint8_to_model,
)
from .latents import LatentFolderDataset, LatentScaling, StabilityVAE
from .tokens import MarkovSource, MarkovTokenDataset
from .toy2d import GaussianMixture, Toy2DDataset, mixture_preset
from .var_tokens import VARTokenDataset, encode_dataset

__all__ = [
    "MarkovSource",
    "MarkovTokenDataset",
    "Cifar10Dataset",
    "DigitsDataset",
    "DigitMixtureDataset",
    "LowRankGaussianMixture",
    "digit_mixture",
    "GaussianMixture",
    "ImageDataset",
    "ImageFolderDataset",
    "LatentFolderDataset",
    "LatentScaling",
    "StabilityVAE",
    "Toy2DDataset",
    "mixture_preset",
    "model_to_uint8",
    "quantize",
    "uint8_to_model",
    "VARTokenDataset",
    "encode_dataset",
]
