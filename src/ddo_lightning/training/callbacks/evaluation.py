"""Listeners of evaluations: :class:`SampleGrids` draws a grid at every evaluation.

An evaluation, once computed, is published by ``training.report.publish_evaluation``: every logger gets it
(with the round as a dimension), and every callback with an ``on_evaluation(trainer, pl_module, record)``
hook is told. ``SelfPlay`` is the FID monitor of a DDO run (it schedules evaluations every
``eval_every_kimg`` and picks each round's best from them); MLE pretraining evaluates in its validation
loop. Both publish there, so the curves, the sample grids and the W&B layout are the same for both.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from ...files import atomic_path
from ...pixels import model_to_uint8
from ...protocols import DecodesSamples
from ...samplers import mix_seed
from ..datamodule import balanced_labels
from ..report import logger_dirs
from ..sharding import on_rank_zero


def image_grid(x: torch.Tensor, columns: int) -> torch.Tensor:
    """[N, C, H, W] in [−1, 1] → one [H', W', C] uint8 grid image (1-pixel gaps), quantised as samples
    are (``pixels.model_to_uint8``)."""
    n, c, h, w = x.shape
    rows = -(-n // columns)
    grid = torch.full((c, rows * (h + 1) + 1, columns * (w + 1) + 1), -1.0)
    for i in range(n):
        r, q = divmod(i, columns)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[i]
    return model_to_uint8(grid).permute(1, 2, 0)


def save_png(image_hwc: torch.Tensor, path: str, scale: int = 1) -> None:
    """Write a uint8 [H, W, C] image (C = 1 or 3) as PNG, optionally enlarged by an integer factor."""
    from PIL import Image

    a = image_hwc.cpu().numpy()
    img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp)


class SampleGrids(pl.Callback):
    """At every evaluation, a grid of the evaluated network's samples on fixed seeds and class-balanced
    labels (the same seeds each time, so grids are comparable across steps and rounds). Latent samples
    (EDM2 512 px) are decoded to pixels by the evaluator's ``decoder`` when it has one. Logged as an
    image to W&B (key ``samples``); written as ``<log dir>/samples/step-<step>.png`` for file loggers.

    Args:
        num_samples: images per grid.
        columns: images per row.
        seed: seed of the grid's noise.
        scale: integer enlargement of the PNG (small images are easier to see).
    """

    def __init__(self, num_samples: int = 64, columns: int = 8, seed: int = 2024, scale: int = 4):
        if num_samples < 1 or columns < 1 or scale < 1:
            raise ValueError("num_samples, columns and scale must be >= 1")
        self.num_samples, self.columns, self.seed, self.scale = num_samples, columns, seed, scale
        self.written: list[str] = []

    def on_evaluation(self, trainer: pl.Trainer, pl_module: Any, record: dict[str, float]) -> None:
        if pl_module.sample_shape is None or len(pl_module.sample_shape) != 3:
            return  # images only (2-D toy data has its scatter figure)
        idx = torch.arange(self.num_samples)
        seeds = torch.tensor([mix_seed(self.seed, int(i), 5) for i in idx])
        net = pl_module.ema.model
        x = on_rank_zero(
            net, trainer.is_global_zero, lambda: pl_module.sample(net, seeds, balanced_labels(idx, pl_module.label_dim))
        )
        if x is None:
            return
        evaluator = pl_module.evaluator  # latents -> images (EDM2 512 px)
        x = (evaluator.images_of(x) if isinstance(evaluator, DecodesSamples) else x).cpu()
        grid = image_grid(x, self.columns)
        step = trainer.global_step
        caption = f"step {step}" + (f", round {int(record['round'])}" if "round" in record else "")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                big = grid.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1).numpy()
                logger.log_image(
                    key="samples", images=[big[..., 0] if big.shape[-1] == 1 else big], step=step, caption=[caption]
                )
        for d in logger_dirs(trainer):
            path = os.path.join(d, "samples", f"step-{step:07d}.png")
            save_png(grid, path, self.scale)
            self.written.append(path)
