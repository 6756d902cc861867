"""Side-by-side scatter plots of 2-D samples: data, the reference at fit start, the final reference."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch

from ...samplers import mix_seed
from ..fake_sources import balanced_labels


class ScatterFigure(pl.Callback):
    """Write a PNG comparing real data with samples of the starting and the final reference
    (same seeds), for 2-D data.

    Args:
        path: output PNG.
        num_samples: points per panel.
        seed: seed of the plotted samples (the same for both models).
    """

    def __init__(self, path: str = "outputs/demo/samples.png", num_samples: int = 5000, seed: int = 2024):
        self.path, self.num_samples, self.seed = path, num_samples, seed
        self._start: torch.Tensor | None = None

    def _draw(self, pl_module: Any) -> torch.Tensor:
        idx = torch.arange(self.num_samples)
        seeds = torch.tensor([mix_seed(self.seed, int(i), 4) for i in idx])
        labels = balanced_labels(idx, pl_module.label_dim)
        return pl_module.sample(pl_module.reference, seeds, labels).cpu()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.sample_shape != (2,):
            raise ValueError(f"ScatterFigure plots 2-D data, got samples of shape {pl_module.sample_shape}")
        if trainer.is_global_zero:
            self._start = self._draw(pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self._start is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        real = trainer.datamodule.real.x[: self.num_samples]
        panels = [("data", real), ("reference at start (MLE)", self._start),
                  (f"after DDO (round {getattr(pl_module, 'round_index', '?')} reference)", self._draw(pl_module))]
        lim = float(real.abs().max()) * 1.3
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.6), sharex=True, sharey=True)
        for ax, (title, pts) in zip(axes, panels):
            ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.35, linewidths=0)
            ax.set_title(title)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fig.savefig(self.path, dpi=110)
        plt.close(fig)
