"""Sample-quality metrics. An evaluator has ``connect(ground_truth)``, ``reset()``,
``update(x, labels)`` and ``compute() -> dict[str, float]`` (torchmetrics' protocol)."""

from .digits import DigitsFeatures
from .fid import FrechetDistance, frechet_distance
from .image_mixture import ImageMixtureMetrics, image_mixture_metrics
from .inception import InceptionFeatures
from .tokens import MarkovMetrics
from .toy2d import MixtureMetrics, energy_distance, mixture_metrics, mmd_rbf

__all__ = [
    "DigitsFeatures",
    "FrechetDistance",
    "ImageMixtureMetrics",
    "image_mixture_metrics",
    "InceptionFeatures",
    "MarkovMetrics",
    "frechet_distance",
    "MixtureMetrics",
    "energy_distance",
    "mixture_metrics",
    "mmd_rbf",
]
