"""MLE pretraining (denoising score matching, or cross-entropy for token models): makes a reference
where none exists."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import Metric

from ..networks import Network
from ..objectives import DenoisingScoreMatching, MLEObjective
from ..protocols import Samples
from ..samplers import Sampler
from .base import DenoiserModule, check_model_family
from .ema import make_ema


class MLEModule(DenoiserModule):
    """Train ``network`` by EDM's denoising score matching; its EMA becomes a DDO reference.

    Args:
        network: the model: a diffusion denoiser (e.g. ``EDMPrecond`` around a raw network) or a next-token
            model (with ``objective: TokenMLE`` and ``sampler: TokenSampler``).
        objective: the MLE loss: ``DenoisingScoreMatching`` (EDM's log-normal σ; default P_mean −1.2,
            P_std 1.2; the default) or ``TokenMLE`` (cross-entropy with label dropout).
        ema_sigma_rel: use EDM2's power-function EMA with this σ_rel (EDM2 DDO: 0.05) instead of the
            half-life EMA (``ema_halflife_kimg``/``ema_rampup_ratio`` are then unused).
        lr_milestones_kimg: step decay of the learning rate: from each of these image counts (thousands of
            images, increasing) on, the rate is multiplied by ``lr_gamma`` (the rule of torch's
            ``MultiStepLR``, counted in images rather than epochs). The rate is a function of the image
            count alone, set before every optimizer step, so a resumed run continues it exactly and a run
            whose checkpoint predates the schedule can be continued with it. None: a constant rate.
        lr_gamma: the factor applied at each milestone, in (0, 1].
        Other arguments: see :class:`DenoiserModule`.
    """

    def __init__(
        self,
        network: Network,
        objective: MLEObjective | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_halflife_kimg: float = 500.0,
        ema_rampup_ratio: float | None = 0.05,
        sampler: Sampler | None = None,
        evaluator: Metric | None = None,
        num_eval_samples: int = 5000,
        eval_batch_size: int = 1000,
        seed: int = 0,
        ema_sigma_rel: float | None = None,
        lr_milestones_kimg: list[float] | None = None,
        lr_gamma: float = 0.1,
    ):
        milestones = [float(m) for m in (lr_milestones_kimg or [])]
        if any(m <= 0 for m in milestones) or any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"lr_milestones_kimg must be positive and increasing, got {lr_milestones_kimg}")
        if not 0 < lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be in (0, 1], got {lr_gamma}")
        super().__init__(
            lr, betas, ema_halflife_kimg, ema_rampup_ratio, sampler, evaluator, num_eval_samples, eval_batch_size, seed
        )
        self.lr_milestones_kimg, self.lr_gamma = milestones, float(lr_gamma)
        self.save_config_hyperparameters(["network", "objective", "sampler", "evaluator"])
        self.net = network
        self.objective = objective if objective is not None else DenoisingScoreMatching()
        check_model_family(network, self.objective, self.sampler)
        self.ema = make_ema(self.net, ema_halflife_kimg, ema_rampup_ratio, ema_sigma_rel)

    def trained_network(self) -> nn.Module:
        return self.net

    def lr_at(self, kimg: float) -> float:
        """The learning rate after ``kimg`` thousand images: ``lr · lr_gamma^(milestones reached)``."""
        return self.lr * self.lr_gamma ** sum(kimg >= m for m in self.lr_milestones_kimg)

    def current_lr(self) -> float:
        return self.lr_at(float(self.images_seen) / 1000)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        if self.lr_milestones_kimg:  # the rate follows the image count
            self.log("train/lr", self.apply_lr())
        super().optimizer_step(*args, **kwargs)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out = self.objective(self.net, Samples(*batch), generator=self.step_generator(), shard=self.shard)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"non-finite MLE loss at step {self.global_step}")
        self.log_stats(out.stats or {"loss": out.loss}, {"loss"})
        return out.loss
