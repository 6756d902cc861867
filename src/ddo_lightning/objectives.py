"""Objectives: (target, reference, real, fake) → loss and statistics.

An objective owns one model family's estimator (here: diffusion) and turns it into the DDO loss of
``losses.py``; a new family (e.g. next-token models) adds an estimator and an objective, never a branch
in the loss. Objectives are plain Python objects configured from YAML; they hold no parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .likelihood import diffusion_log_ratio, token_log_prob, token_log_ratio
from .losses import check_alpha_beta, ddo_loss, dsm_loss
from .protocols import Denoiser, PairedBatch, Samples, TokenModel
from .schedules import edm_weight, sample_log_normal_sigma


@dataclass(frozen=True)
class ObjectiveOutput:
    """loss: scalar to backpropagate (batch mean); per_sample: [B]; stats: detached scalars to log."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def check_pair(real: Samples, fake: Samples) -> None:
    """Real and fake must pair 1:1: same batch size, sample shape and label width."""
    if len(real) != len(fake):
        raise ValueError(
            f"the fake batch has {len(fake)} samples but the real batch has {len(real)}: "
            "DDO pairs each real sample with one fake sample (make the fake source yield the real batch size)"
        )
    if real.x.shape[1:] != fake.x.shape[1:]:
        raise ValueError(f"real samples have shape {tuple(real.x.shape[1:])}, fake {tuple(fake.x.shape[1:])}")
    if real.labels.shape[1:] != fake.labels.shape[1:]:
        raise ValueError(f"real labels have width {tuple(real.labels.shape[1:])}, fake {tuple(fake.labels.shape[1:])}")


def pair_noise(
    batch_size: int,
    shape: tuple[int, ...],
    P_mean: float,
    P_std: float,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
    shard: tuple[int, int] = (0, 1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """σ [B] and ε [B, *D] for this process's B samples, drawn for the global batch of B·world samples
    and sliced at rows ``rank::world``: a sample's noise depends on its global position only, not on how
    many processes share the batch (a DistributedSampler hands rank r the global positions r, r + world,
    …), so one process with batch B·world and ``world`` processes with batch B draw the same noise."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    sigma = sample_log_normal_sigma(batch_size * world, P_mean, P_std, generator=generator, device=device)
    noise = torch.randn((batch_size * world, *shape), generator=generator, device=device, dtype=dtype)
    return sigma[rank::world], noise[rank::world]


class DDOObjective:
    """Base class of DDO objectives (what ``DDOModule(objective=...)`` accepts):
    ``objective(target, reference, PairedBatch, generator=, shard=) -> ObjectiveOutput``.

    ``alpha`` (weight of the fake term) and ``beta`` (scale of the log-ratio) are named in the advice a
    non-finite loss prints; None for an objective without them."""

    alpha: float | None = None
    beta: float | None = None

    def __call__(
        self,
        target,
        reference,
        batch: PairedBatch,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> ObjectiveOutput:
        raise NotImplementedError


class MLEObjective:
    """Base class of likelihood (pretraining) objectives (what ``MLEModule(objective=...)`` accepts):
    ``objective(net, Samples, generator=, shard=) -> ObjectiveOutput``."""

    def __call__(
        self, net, batch: Samples, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
    ) -> ObjectiveOutput:
        raise NotImplementedError


class DiffusionDDO(DDOObjective):
    """DDO for diffusion models (paper Eq. 13–16, docs/method.md §2).

    Args:
        alpha: weight of the fake term (α ≥ 0). Paper range [0.5, 50]; diffusion ablations 0.5–6.
        beta: scale of the log-ratio inside the sigmoid (β > 0). Paper range [0.01, 0.1] for images,
            whose log-ratios sum over thousands of dimensions; low-dimensional data wants larger β.
        P_mean: mean of ln σ for the log-ratio estimate (EDM CIFAR-10: −1.2; EDM2 ImageNet-64: −0.8).
        P_std: standard deviation of ln σ (EDM CIFAR-10: 1.2; EDM2: 1.6, raised to 3.0 in late rounds).
        P_std_schedule: optional P_std per self-play round (entry r for round r, the last entry for every
            later round), applied by ``start_round`` (SelfPlay calls it at each round start); it
            overrides ``P_std`` from round 0 on. E.g. ``[1.6, 1.6, 3.0]``.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.05,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        P_std_schedule: list[float] | None = None,
    ):
        check_alpha_beta(alpha, beta)
        if not P_std > 0 or any(not s > 0 for s in P_std_schedule or ()):
            raise ValueError(f"P_std must be > 0, got {P_std} (schedule {P_std_schedule})")
        if P_std_schedule is not None and not len(P_std_schedule):
            raise ValueError("P_std_schedule must have at least one entry (or be None)")
        self.alpha, self.beta, self.P_mean, self.P_std = alpha, beta, P_mean, P_std
        self.P_std_schedule = None if P_std_schedule is None else [float(s) for s in P_std_schedule]
        self.start_round(0)

    def start_round(self, round_index: int) -> None:
        """Set this round's ``P_std`` from ``P_std_schedule`` (nothing without a schedule)."""
        if self.P_std_schedule is not None:
            self.P_std = self.P_std_schedule[min(round_index, len(self.P_std_schedule) - 1)]

    def __call__(
        self,
        target: Denoiser,
        reference: Denoiser,
        batch: PairedBatch,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> ObjectiveOutput:
        """One σ and ε per pair, shared by real and fake and by target and reference; one 2B forward
        of the target (grad) and one of the reference (no grad). ``shard`` = (rank, world): see
        :func:`pair_noise`."""
        real, fake = batch
        check_pair(real, fake)
        B, device = len(real), real.x.device
        sigma, noise = pair_noise(
            B, tuple(real.x.shape[1:]), self.P_mean, self.P_std, generator, device, real.x.dtype, shard
        )
        est = diffusion_log_ratio(
            target,
            reference,
            torch.cat([real.x, fake.x]),
            torch.cat([real.labels, fake.labels]),
            sigma.repeat(2),
            noise.repeat((2,) + (1,) * (noise.ndim - 1)),
        )
        out = ddo_loss(est.delta[:B], est.delta[B:], self.alpha, self.beta)
        stats = out.stats()
        numel = real.x[0].numel()
        # plain denoising loss of the target on real data (per dimension, like EDM's training loss):
        # it blowing up means the round went too far (docs/method.md §7)
        stats["dsm_real"] = est.err_target[:B].detach().mean() / numel
        stats["dsm_fake"] = est.err_target[B:].detach().mean() / numel
        return ObjectiveOutput(out.loss.mean(), out.loss, stats)


def check_label_drop(p: float) -> None:
    if not 0 <= p < 1:
        raise ValueError(f"label_drop must be in [0, 1), got {p}")


def drop_labels(labels: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """``labels`` [B, K] with the rows where ``dropped`` [B] is True replaced by the all-zero "no
    condition" row (CFG's unconditional branch)."""
    return labels * (~dropped).to(labels.dtype).unsqueeze(1)


class TokenDDO(DDOObjective):
    """DDO for next-token models (paper §4.2, docs/method.md §3), CFG-compatible.

    One label-drop mask per example (real and fake alike), drawn here and applied to the labels that
    BOTH target and reference see (the models' own label dropout must be off); a dropped example gets
    the all-zero "no condition" label. Dropped *fake* examples get α = 0 (they contribute nothing: the
    unconditional branch is trained by the real term only). Δ is exact (``token_log_ratio``).

    Args:
        alpha: weight of the fake term (paper for VAR: 10–100).
        beta: scale of the log-ratio (paper for VAR: 0.02).
        label_drop: probability of dropping an example's label (VAR: 0.1); 0 for unconditional models.
        normalize: divide the loss by max(α, 1) so the gradient scale does not grow with α.
    """

    def __init__(self, alpha: float = 10.0, beta: float = 0.02, label_drop: float = 0.1, normalize: bool = False):
        check_alpha_beta(alpha, beta)
        check_label_drop(label_drop)
        self.alpha, self.beta, self.label_drop, self.normalize = alpha, beta, label_drop, normalize

    def drop_mask(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device, shard: tuple[int, int] = (0, 1)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean [B] masks (real, fake) of dropped labels, drawn for the global batch and sliced at
        ``rank::world`` like the diffusion noise (the same for any number of processes)."""
        return label_drop_mask(batch_size, 2, self.label_drop, generator, device, shard)

    def __call__(
        self,
        target: TokenModel,
        reference: TokenModel,
        batch: PairedBatch,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> ObjectiveOutput:
        real, fake = batch
        check_pair(real, fake)
        B, device = len(real), real.x.device
        drop_real, drop_fake = self.drop_mask(B, generator, device, shard)
        labels = torch.cat([real.labels, fake.labels])
        if labels.shape[1] and self.label_drop > 0:
            labels = drop_labels(labels, torch.cat([drop_real, drop_fake]))
        else:
            drop_real, drop_fake = torch.zeros_like(drop_real), torch.zeros_like(drop_fake)
        est = token_log_ratio(target, reference, torch.cat([real.x, fake.x]), labels)
        alpha = self.alpha * (~drop_fake).to(est.delta.dtype)
        out = ddo_loss(est.delta[:B], est.delta[B:], alpha, self.beta)
        per_sample = out.loss / max(self.alpha, 1.0) if self.normalize else out.loss
        stats = out.stats()
        stats["loss"] = per_sample.detach().mean()
        length = real.x.shape[1]
        stats["nll_real"] = -est.logp_target[:B].detach().mean() / length  # per token, nats
        stats["nll_fake"] = -est.logp_target[B:].detach().mean() / length
        stats["label_drop_rate"] = torch.cat([drop_real, drop_fake]).float().mean()
        return ObjectiveOutput(per_sample.mean(), per_sample, stats)


def label_drop_mask(
    batch_size: int,
    columns: int,
    p: float,
    generator: torch.Generator | None,
    device: torch.device,
    shard: tuple[int, int] = (0, 1),
) -> tuple[torch.Tensor, ...]:
    """``columns`` boolean [B] masks, True with probability ``p``, drawn for the global batch of
    B·world examples and sliced at rows ``rank::world``."""
    rank, world = shard
    u = torch.rand((batch_size * world, columns), generator=generator, device=device)[rank::world]
    return tuple(u[:, j] < p for j in range(columns))


class TokenMLE(MLEObjective):
    """Maximum likelihood (teacher-forced cross-entropy) for next-token models: pretrains a token
    reference. With ``label_drop`` > 0 a fraction of the labels is replaced by the all-zero "no
    condition" row (the unconditional branch CFG needs), with the same global-batch mask as TokenDDO.

    Args:
        label_drop: probability of dropping an example's label (VAR: 0.1; 0 for unconditional data).
    """

    def __init__(self, label_drop: float = 0.1):
        check_label_drop(label_drop)
        self.label_drop = label_drop

    def __call__(
        self, net: TokenModel, batch: Samples, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
    ) -> ObjectiveOutput:
        tokens, labels = batch
        if labels.shape[1] and self.label_drop > 0:
            (drop,) = label_drop_mask(len(batch), 1, self.label_drop, generator, tokens.device, shard)
            labels = drop_labels(labels, drop)
        per_sample = -token_log_prob(net, tokens, labels)  # nats per sequence
        loss = per_sample.mean() / tokens.shape[1]  # per token: the scale of the usual LM loss
        return ObjectiveOutput(loss, per_sample, {"loss": loss.detach(), "nll_real": loss.detach()})


class DenoisingScoreMatching(MLEObjective):
    """EDM's MLE training loss (denoising score matching, EDM Eq. 2) used to pretrain references.

    Args:
        P_mean: mean of ln σ (EDM: −1.2).
        P_std: standard deviation of ln σ (EDM: 1.2).
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2):
        if not P_std > 0:
            raise ValueError(f"P_std must be > 0, got {P_std}")
        self.P_mean, self.P_std = P_mean, P_std

    def __call__(
        self, net: Denoiser, batch: Samples, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
    ) -> ObjectiveOutput:
        x, labels = batch
        sigma, noise = pair_noise(
            len(batch), tuple(x.shape[1:]), self.P_mean, self.P_std, generator, x.device, x.dtype, shard
        )
        shape = (-1,) + (1,) * (x.ndim - 1)
        denoised = net(x + sigma.reshape(shape) * noise, sigma, labels)
        per_sample = dsm_loss(denoised, x, edm_weight(sigma, net.sigma_data))
        loss = per_sample.mean()
        return ObjectiveOutput(loss, per_sample, {"loss": loss.detach(), "dsm_real": loss.detach()})


def mle_counterpart(objective: DDOObjective) -> MLEObjective:
    """The maximum-likelihood objective of a DDO objective's model family, with the same noise or label
    settings (what SelfPlay's MLE ``control`` trains with): ``DiffusionDDO`` -> ``DenoisingScoreMatching``
    with its ``P_mean`` and current ``P_std``; ``TokenDDO`` -> ``TokenMLE`` with its ``label_drop``. Any
    other objective has no known counterpart: a TypeError names it."""
    if isinstance(objective, DiffusionDDO):
        return DenoisingScoreMatching(P_mean=objective.P_mean, P_std=objective.P_std)
    if isinstance(objective, TokenDDO):
        return TokenMLE(label_drop=objective.label_drop)
    raise TypeError(
        f"no MLE counterpart is known for the objective {type(objective).__name__}: the MLE control needs "
        "DiffusionDDO (-> DenoisingScoreMatching) or TokenDDO (-> TokenMLE); set control: false"
    )


__all__ = [
    "DDOObjective",
    "DenoisingScoreMatching",
    "DiffusionDDO",
    "MLEObjective",
    "ObjectiveOutput",
    "TokenDDO",
    "TokenMLE",
    "check_pair",
    "label_drop_mask",
    "mle_counterpart",
    "pair_noise",
]
