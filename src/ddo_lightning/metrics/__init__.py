"""Sample-quality metrics. An evaluator has ``connect(ground_truth)``, ``reset()``,
``update(x, labels)`` and ``compute() -> dict[str, float]`` (torchmetrics' protocol)."""

from .toy2d import MixtureMetrics, energy_distance, mixture_metrics, mmd_rbf

__all__ = ["MixtureMetrics", "energy_distance", "mixture_metrics", "mmd_rbf"]
