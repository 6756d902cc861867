"""Interfaces shared by every layer.

Shape key used in docstrings: B batch, C channels, H/W height/width, D data dimensions (any trailing
shape), K label dimension (one-hot; 0 for unconditional models).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch


class Samples(NamedTuple):
    """A batch of samples with their labels.

    x: [B, *D] data in model space (e.g. images in [-1, 1]).
    labels: [B, K] one-hot class labels as float; K = 0 for unconditional data.
    """

    x: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:  # the batch size, not the tuple length
        return int(self.x.shape[0])


class PairedBatch(NamedTuple):
    """What the DDO training step consumes: real and fake samples of the same batch size."""

    real: Samples
    fake: Samples


@runtime_checkable
class Denoiser(Protocol):
    """A preconditioned diffusion denoiser D(x; sigma, labels) ≈ E[x0 | x0 + sigma·n = x].

    x: [B, *D]; sigma: [B] (or broadcastable); labels: [B, K]. Returns [B, *D] in float32.
    ``sigma_data`` is the data standard deviation the preconditioning assumes (EDM: 0.5).
    """

    sigma_data: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TokenModel(Protocol):
    """A next-token model, teacher-forced: ``model(tokens, labels)`` returns logits [B, L, V] where
    ``logits[:, t]`` is the distribution of ``tokens[:, t]`` given ``tokens[:, :t]`` and the condition
    (the model shifts its inputs itself: a start token, VAR's class token, ...).

    tokens: [B, L] int64 in [0, V); labels: [B, K] one-hot, an all-zero row meaning "no condition"
    (CFG's unconditional branch: label dropout is applied outside the model, docs/method.md §3).
    """

    def __call__(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class SampleFn(Protocol):
    """Draws samples from a model for given per-sample seeds: what a fake source needs of a model.

    seeds: [B] int64 (one seed per sample, so a sample does not depend on batching or world size);
    labels: [B, K]. Returns [B, *D], no gradient.
    """

    def __call__(self, seeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...
