"""DDOModule: a trainable target and a frozen reference, trained with the DDO objective."""

from __future__ import annotations

import copy
from contextvars import ContextVar
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import Metric

from ..checkpoints import load_network_weights
from ..errors import NonFiniteLossError
from ..networks import Network
from ..objectives import DDOObjective, DiffusionDDO, MLEObjective
from ..protocols import PairedBatch, PreparesFakes, RoundAware, Samples
from ..samplers import Sampler
from .base import DenoiserModule, check_model_family, disable_dropout, newest_checkpoint
from .datamodule import DDODataModule
from .ema import make_ema
from .sharding import is_sharded, load_full_state_dict, local_part, reset_optimizer_state, shard_network

PROGRESS_BAR_STATS = ("loss", "disc_acc")
_RESTORING: ContextVar[bool] = ContextVar("ddo_restoring", default=False)  # inside load_from_checkpoint


class DDOModule(DenoiserModule):
    """DDO fine-tuning (Zheng et al. 2025): target θ and frozen reference θ_ref start from the same
    weights; fakes come from the reference (the data module's fake source).

    The reference is in eval mode, has ``requires_grad=False``, is outside the optimizer and the EMA,
    and lives in every checkpoint (``reference.*``), so a resumed run keeps its reference. Dropout is
    switched off in both networks. Runs in fp32 only.

    Args:
        network: the model: a diffusion denoiser (e.g. ``EDMPrecond`` around a raw network), or a next-token
            model (``TokenGPT``, VAR's adapter) together with ``objective: TokenDDO`` and ``sampler: TokenSampler``.
        init_from: checkpoint whose weights start both target and reference (an MLE run's EMA, or a
            DDO run's promoted reference). None starts from the network's random init (tests only).
        objective: the DDO objective: ``DiffusionDDO`` (α, β, σ distribution; the default) or ``TokenDDO``
            (α, β, label dropout).
        lr: Adam learning rate (paper: 1.5e-4 EDM CIFAR-10, 5e-5 EDM2).
        ema_sigma_rel: use EDM2's power-function EMA with this σ_rel (EDM2 DDO: 0.05) instead of the
            half-life EMA (``ema_halflife_kimg``/``ema_rampup_ratio`` are then unused).
        Other arguments: see :class:`DenoiserModule`.
    """

    def __init__(
        self,
        network: Network,
        init_from: str | None = None,
        objective: DDOObjective | None = None,
        lr: float = 1.5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_halflife_kimg: float = 250.0,
        ema_rampup_ratio: float | None = 0.05,
        sampler: Sampler | None = None,
        evaluator: Metric | None = None,
        num_eval_samples: int = 5000,
        eval_batch_size: int = 1000,
        seed: int = 0,
        ema_sigma_rel: float | None = None,
    ):
        super().__init__(
            lr, betas, ema_halflife_kimg, ema_rampup_ratio, sampler, evaluator, num_eval_samples, eval_batch_size, seed
        )
        self.save_config_hyperparameters(["network", "objective", "sampler", "evaluator"])
        if init_from is not None:
            load_network_weights(network, init_from, what=f"init_from {init_from}")
        elif not _RESTORING.get():
            rank_zero_warn("DDOModule without init_from: target and reference start from a random init")
        changed = disable_dropout(network)
        if changed:
            rank_zero_info(f"DDO: dropout switched off in {changed} layer(s) of target and reference")
        self.target = network
        self.reference = copy.deepcopy(network).eval().requires_grad_(False)
        self.objective = objective if objective is not None else DiffusionDDO()
        check_model_family(network, self.objective, self.sampler)
        self.ema = make_ema(self.target, ema_halflife_kimg, ema_rampup_ratio, ema_sigma_rel)
        self.round_index = 0  # the round in progress (SelfPlay: start_round); its fakes are this round's
        # SelfPlay's MLE control: while set, a step trains the target on the real batch alone with this
        # objective (the data module then yields real batches only); None: DDO
        self.control_objective: MLEObjective | None = None

    def trained_network(self) -> nn.Module:
        return self.target

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> DDOModule:
        """Lightning's, with ``init_from`` skipped: the checkpoint holds target, reference and EMA, so the
        run's starting weights (which may no longer exist on this machine) are not read."""
        kwargs.setdefault("init_from", None)
        token = _RESTORING.set(True)
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        finally:
            _RESTORING.reset(token)

    def train(self, mode: bool = True) -> DDOModule:
        super().train(mode)
        self.reference.eval()  # never in training mode, whatever Lightning toggles
        return self

    # ---- fakes -------------------------------------------------------------------------------------
    def sample_reference(self, seeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The fake sources' sampling function: the current reference, with this module's sampler. A
        network with a ``prepare_fakes(x)`` method (:class:`~ddo_lightning.protocols.PreparesFakes`)
        post-processes its samples into what DDO trains on (VAR: re-encode the decoded images); evaluation
        samples are never post-processed."""
        x = self.sample(self.reference, seeds, labels)
        return self.reference.prepare_fakes(x) if isinstance(self.reference, PreparesFakes) else x

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule
        if stage == "fit" and not (isinstance(dm, DDODataModule) and dm.fake is not None):
            raise RuntimeError("DDO needs fake samples: give DDODataModule a `fake` source (pool or online)")

    def start_round(self, round_index: int) -> None:
        """Round ``round_index`` (0-based) begins with the current reference: the objective is told (e.g.
        DiffusionDDO's per-round ``P_std_schedule``), and the data module's next batch draws its fakes from
        this round's reference."""
        self.round_index = round_index
        if isinstance(self.objective, RoundAware):
            self.objective.start_round(round_index)

    # ---- one step ------------------------------------------------------------------------------------
    def training_step(self, batch: PairedBatch, batch_idx: int) -> torch.Tensor:
        if self.control_objective is not None:  # SelfPlay's MLE control: real images only
            real = batch.real if isinstance(batch, PairedBatch) else Samples(*batch)
            out = self.control_objective(self.target, real, generator=self.step_generator(), shard=self.shard)
            if not torch.isfinite(out.loss):
                raise NonFiniteLossError(f"non-finite MLE loss in the control at step {self.global_step}")
            self.log_stats({f"control_{k}": v for k, v in out.stats.items()}, {"control_loss"})
            return out.loss
        out = self.objective(self.target, self.reference, batch, generator=self.step_generator(), shard=self.shard)
        if not torch.isfinite(out.loss):
            stats = ", ".join(f"{k}={float(v):.4g}" for k, v in out.stats.items())
            last = newest_checkpoint(self.trainer)
            raise NonFiniteLossError(
                f"non-finite DDO loss at step {self.global_step} (round {self.round_index + 1}, "
                f"{int(self.images_seen) / 1000:.1f} kimg): {stats}. Training stopped before this step "
                f"changed any weight; last good checkpoint: {last or 'none written yet'}. "
                + self.non_finite_advice(out.stats, batch)
            )
        self.log_stats(out.stats, PROGRESS_BAR_STATS)
        return out.loss

    def non_finite_advice(self, stats: dict[str, torch.Tensor], batch: PairedBatch) -> str:
        """What to do about a non-finite loss, from which of its parts went non-finite first: the target's
        weights, the real or fake batch, the log-ratios Δ (the networks' outputs), or only the loss terms
        (finite Δ, so β·Δ or α·term overflowed)."""
        bad = {k for k, v in stats.items() if not torch.isfinite(v).all()}
        alpha, beta = self.objective.alpha, self.objective.beta
        if any(not torch.isfinite(local_part(p)).all() for p in self.target.parameters()):
            return (
                "Cause: the target's weights are already NaN/inf (an earlier update diverged): lower lr and "
                "resume from that checkpoint."
            )
        for name, part in (("real", batch.real), ("fake", batch.fake)):
            if not torch.isfinite(part.x).all():
                source = "the data set" if name == "real" else "the fake source (the reference's samples)"
                return f"Cause: the {name} batch holds NaN/inf: check {source}; the weights are fine."
        if any(k.startswith(("delta_", "dsm_", "nll_")) for k in bad):
            return (
                "Cause: the log-ratio Δ = log p_θ − log p_ref is non-finite with finite weights and inputs "
                "(the network's output overflowed): lower lr, or resume from that checkpoint."
            )
        if bad & {"loss_real", "loss_fake"}:  # -log σ(±βΔ) is finite for finite βΔ: βΔ itself overflowed
            return f"Cause: beta·Δ overflowed float32 with finite Δ (beta={beta}): lower beta (the paper: 0.01 to 0.1)."
        return (
            f"Cause: both loss terms are finite, so alpha × fake term overflowed float32 (alpha={alpha}): "
            "lower alpha (the paper: 0.5 to 50)."
        )

    # ---- self-play -----------------------------------------------------------------------------------
    @torch.no_grad()
    def promote(self, weights: dict[str, torch.Tensor]) -> None:
        """Start a new round from ``weights`` (full, unsharded): they become reference, target and EMA;
        Adam restarts. Works on FSDP2-sharded networks (every rank passes the same weights)."""
        for net in (self.reference, self.target, self.ema.model):
            load_full_state_dict(net, weights)
        self.ema.images.zero_()
        for opt in self.trainer.optimizers:
            reset_optimizer_state(opt, is_sharded(self.target))

    @torch.no_grad()
    def restart_from_reference(self) -> None:
        """Target and EMA back to the reference's weights, Adam and the EMA restarted; the reference and
        the round stay (SelfPlay: the next candidate of a round starts where the round started). Shard by
        shard: the three networks are sharded alike."""
        reference = self.reference.state_dict()
        for net in (self.target, self.ema.model):
            for name, dst in net.state_dict().items():
                dst.copy_(reference[name])
        self.ema.images.zero_()
        for opt in self.trainer.optimizers:
            reset_optimizer_state(opt, is_sharded(self.target))

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2): shard target, reference and EMA separately over the
        data-parallel mesh (``configs/strategy/fsdp2.yaml``). Nothing otherwise."""
        mesh = self.device_mesh  # set by ModelParallelStrategy, else None
        if mesh is None or is_sharded(self.target):
            return
        dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        for net in (self.target, self.reference, self.ema.model):
            shard_network(net, dp)
