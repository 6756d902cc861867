"""What the MLE and DDO Lightning modules share: a denoiser with an EMA, a sampler, fixed-seed
evaluation, fp32 enforcement and the optimizer."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torchmetrics import Metric

from ..errors import DataNetworkMismatch
from ..networks import raw_network
from ..objectives import DenoisingScoreMatching, DiffusionDDO, TokenDDO, TokenMLE
from ..protocols import (
    ConnectsToData,
    Denoiser,
    HasRealData,
    MeasuresNetwork,
    ReportsProvenance,
    RoundCheckpoints,
    SampleSpec,
    TokenVocabulary,
)
from ..samplers import HeunSampler, Sampler, TokenSampler, mix_seed
from .datamodule import balanced_labels
from .sharding import is_sharded, rank_batches

# Lightning ≥ 2.2 warns when submodules are in eval mode at fit start; our frozen reference and EMA are
# in eval mode on purpose (docs/architecture.md, "Settled choices").
warnings.filterwarnings("ignore", message=r".*in eval mode at the start of training.*")

REQUIRED_PRECISION = "32-true"
SELECTION_STREAM = 3  # evaluation sample i's seed: mix_seed(seed, i, 3) (what SelfPlay selects checkpoints by)
REPORT_STREAM = 6  # report seed set k: mix_seed(seed, i, 6, k), disjoint from the selection seeds


def evaluation_seed(seed: int, index: int, seed_set: int | None = None) -> int:
    """The seed of evaluation sample ``index``: the selection seeds (``seed_set`` None; every evaluation
    during training, which SelfPlay selects checkpoints by) or report seed set ``seed_set`` (0, 1, ...: the
    final report's independent re-evaluations, docs/search.md "Report seeds")."""
    if seed_set is None:
        return mix_seed(seed, index, SELECTION_STREAM)
    if isinstance(seed_set, bool) or not isinstance(seed_set, int) or seed_set < 0:
        raise ValueError(f"seed_set must be None (selection) or a report set number >= 0, got {seed_set!r}")
    return mix_seed(seed, index, REPORT_STREAM, seed_set)


def check_precision(precision: Any) -> None:
    """Refuse any precision but fp32, naming ``precision`` as given (the ``ddo`` command checks the
    config's value before Lightning normalises it, e.g. '16-mixed' to 'bf16-mixed' on CPU)."""
    if precision is None or str(precision) in (REQUIRED_PRECISION, "32"):
        return
    raise ValueError(
        f"ddo_lightning runs in full fp32: trainer.precision must be '{REQUIRED_PRECISION}', got "
        f"'{precision}'. The DDO log-ratio is a small difference of two large sums and mixed precision "
        "destroys it; set `trainer.precision: 32-true`."
    )


def disable_dropout(net: nn.Module) -> int:
    """Set p = 0 in every dropout layer (docs/method.md §2: dropout off in target and reference).
    Returns how many layers were changed."""
    n = 0
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p != 0:
            m.p = 0.0
            n += 1
    return n


def check_model_family(network: nn.Module, objective: Any, sampler: Any) -> None:
    """A diffusion denoiser (has ``sigma_data``) goes with a diffusion objective and sampler; a
    next-token model with TokenDDO/TokenMLE and TokenSampler. Mixing them fails here, by name."""
    diffusion = isinstance(network, Denoiser)
    mixed = (
        isinstance(objective, (TokenDDO, TokenMLE)) or isinstance(sampler, TokenSampler)
        if diffusion
        else isinstance(objective, (DiffusionDDO, DenoisingScoreMatching)) or isinstance(sampler, HeunSampler)
    )
    if not mixed:
        return
    got = f"objective {type(objective).__name__} and sampler {type(sampler).__name__}"
    if diffusion:
        raise ValueError(
            f"{type(network).__name__} is a diffusion denoiser (it has sigma_data) but got {got}: "
            "use DiffusionDDO / DenoisingScoreMatching and HeunSampler"
        )
    raise ValueError(
        f"{type(network).__name__} is not a diffusion denoiser (no sigma_data) but got {got}: a "
        "next-token model needs objective TokenDDO (TokenMLE for pretraining) and sampler TokenSampler"
    )


NETWORK = "model.init_args.network"


def _network_attr(net: nn.Module, *names: str) -> tuple[Any, str] | None:
    """(value, config key) of the first of ``names`` on the raw network (``net.model``: EDM's wrappers keep
    the sizes there, their own ``label_dim`` only forwards it) or on the network, or None."""
    raw = raw_network(net)
    places = [(net, f"{NETWORK}.init_args")]
    if raw is not net:  # a preconditioner: its raw network first
        places.insert(0, (raw, f"{NETWORK}.init_args.model.init_args"))
    for obj, where in places:
        for name in names:
            value = getattr(obj, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value, f"{where}.{name}"
    return None


def _data_vocab(real: Any) -> int | None:
    """How many token values the data can hold, where the dataset says (:class:`TokenVocabulary`)."""
    v = real.vocab_size if isinstance(real, TokenVocabulary) else None
    return v if isinstance(v, int) else None


def check_data_fits_network(net: nn.Module, sample_shape: tuple[int, ...], label_dim: int, real: Any = None) -> None:
    """Raise :class:`DataNetworkMismatch` when the data cannot be what ``net`` was built for, naming both:

    * images [C, H, W]: ``img_resolution`` (H = W = R) and ``img_channels``/``in_channels`` (C) of the network
      (EDM2's Precond, or the raw network of EDM's wrappers); vectors [D]: ``data_dim`` (ToyMLP); token
      sequences [L]: ``length`` and, where the dataset tells it, ``vocab_size`` (TokenGPT, VAR's adapter);
    * labels: the data's K classes against the network's ``label_dim``. An unconditional network on labelled
      data, and a conditional network on unlabelled data (it would only ever see the "no label" input), are
      errors too.

    A size the network does not expose is not checked. ``real`` (the dataset) names the data in messages.
    """
    data = type(real).__name__ if real is not None else "the data"
    shape = tuple(int(d) for d in sample_shape)
    net_name = type(net).__name__ + (
        f" around {type(raw_network(net)).__name__}" if raw_network(net) is not net else ""
    )
    problems: list[str] = []
    res = _network_attr(net, "img_resolution")
    ch = _network_attr(net, "img_channels", "in_channels")
    if res is not None or ch is not None:
        if len(shape) != 3:
            problems.append(f"{data} yields samples of shape {list(shape)}, the network takes images [C, H, W]")
        else:
            if res is not None and shape[1:] != (res[0], res[0]):
                problems.append(
                    f"{data} has {shape[1]}×{shape[2]} images, the network is built for {res[0]}×{res[0]} ({res[1]})"
                )
            if ch is not None and shape[0] != ch[0]:
                problems.append(f"{data} has {shape[0]}-channel images, the network takes {ch[0]} channels ({ch[1]})")
    for attr, what in (("data_dim", "vectors of length"), ("length", "sequences of length")):
        found = _network_attr(net, attr)
        if found is not None and shape != (found[0],):
            problems.append(
                f"{data} yields samples of shape {list(shape)}, the network takes {what} {found[0]} ({found[1]})"
            )
    vocab, data_vocab = _network_attr(net, "vocab_size"), _data_vocab(real)
    if vocab is not None and data_vocab is not None and data_vocab > vocab[0]:
        problems.append(f"{data} has {data_vocab} token values, the network's vocabulary has {vocab[0]} ({vocab[1]})")
    labels = _network_attr(net, "label_dim")
    if labels is not None and labels[0] != label_dim:
        k, where = labels
        if label_dim == 0:
            problems.append(
                f"the network is class-conditional (label_dim {k}, {where}) but {data} has no labels: it "
                "would only ever see the no-label input; use labelled data or set label_dim: 0"
            )
        elif k == 0:
            problems.append(
                f"{data} has {label_dim} classes but the network is unconditional (label_dim 0, {where}): "
                f"set label_dim: {label_dim}, or use the data without labels"
            )
        else:
            problems.append(f"{data} has {label_dim} classes, the network's label_dim is {k} ({where})")
    if problems:
        raise DataNetworkMismatch(f"the data does not fit the network {net_name}: " + "; ".join(problems))


class DenoiserModule(pl.LightningModule):
    """Base class; subclasses define which network is trained and how.

    Args:
        lr: Adam learning rate (constant).
        betas: Adam (β1, β2).
        ema_halflife_kimg: EMA half-life in thousands of images.
        ema_rampup_ratio: EDM's EMA ramp-up (None: off).
        sampler: how samples are drawn for evaluation and fakes (default: EDM Heun, 18 steps; token models:
            ``TokenSampler``).
        evaluator: sample-quality metric computed by ``evaluate`` (e.g. MixtureMetrics); None: no evaluation.
        num_eval_samples: samples per evaluation, with fixed seeds (class-balanced labels).
        eval_batch_size: samples per sampler call during evaluation.
        seed: base seed of the per-step noise (σ, ε) and of evaluation samples.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_halflife_kimg: float = 500.0,
        ema_rampup_ratio: float | None = 0.05,
        sampler: Sampler | None = None,
        evaluator: Metric | None = None,
        num_eval_samples: int = 5000,
        eval_batch_size: int = 1000,
        seed: int = 0,
    ):
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if num_eval_samples < 1 or eval_batch_size < 1:
            raise ValueError("num_eval_samples and eval_batch_size must be >= 1")
        self.lr, self.betas = lr, tuple(betas)
        self.ema_halflife_kimg, self.ema_rampup_ratio = ema_halflife_kimg, ema_rampup_ratio
        self.sampler = sampler if sampler is not None else HeunSampler()
        self.evaluator = evaluator
        self.num_eval_samples, self.eval_batch_size, self.seed = num_eval_samples, eval_batch_size, seed
        self.sample_shape: tuple[int, ...] | None = None
        self.label_dim = 0
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.int64))
        # (seed, first step) of the training noise when a search candidate has its own stream (SelfPlay
        # sets it per candidate); None: the run's stream, seeded by (seed, global step)
        self.step_stream: tuple[int, int] | None = None

    def save_config_hyperparameters(self, object_args: list[str]) -> None:
        """Store the module's arguments in every checkpoint (``hyper_parameters``), so that
        ``load_from_checkpoint(path)`` rebuilds it without the YAML. Built by ``ddo`` (LightningCLI), they
        are the config itself: networks, objective, sampler and evaluator as ``class_path`` + ``init_args``.
        Built in Python, the objects in ``object_args`` are left out (a checkpoint stores weights, not
        pickled modules): give them to ``load_from_checkpoint`` as keyword arguments."""
        import inspect

        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        from_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(
            ignore=[] if from_cli else object_args, frame=inspect.currentframe().f_back, logger=False
        )  # the CLI logs the whole config (LogConfigCallback)

    # ---- the trained network: subclasses set self.ema and implement trained_network -------------
    def trained_network(self) -> nn.Module:
        raise NotImplementedError

    # ---- setup -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        check_precision(self.trainer.precision)
        dm = self.trainer.datamodule
        if not isinstance(dm, SampleSpec):
            raise TypeError("ddo_lightning modules need a DDODataModule (it tells the sample shape and labels)")
        self.sample_shape, self.label_dim = tuple(dm.sample_shape), int(dm.label_dim)
        check_data_fits_network(
            self.trained_network(), self.sample_shape, self.label_dim, dm.real if isinstance(dm, HasRealData) else None
        )
        if isinstance(self.evaluator, ConnectsToData):
            self.evaluator.connect(dm)  # the evaluator takes what it needs: ground truth, real images

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trained_network().parameters(), lr=self.lr, betas=self.betas)

    def current_lr(self) -> float:
        """The rate of the next optimizer step: ``lr`` (MLEModule's step decay overrides this)."""
        return self.lr

    def apply_lr(self) -> float:
        """Write ``current_lr()`` into the optimizers' parameter groups (the one place the rate is set:
        here at the start of training, SelfPlay for a search candidate, MLEModule before each step of a
        decay); returns it."""
        lr = self.current_lr()
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def on_train_start(self) -> None:
        """A resume restores Adam's state with the rate it had then; a rate changed since (``--force_resume``
        with a new ``model.init_args.lr``) is applied here. SelfPlay's ``on_train_start`` runs before this hook
        and sets ``lr`` to a search candidate's."""
        self.apply_lr()

    def step_generator(self) -> torch.Generator:
        """Noise for this step, seeded by (seed, step): every rank draws the global batch's noise and
        keeps its rows (``shard``), so runs are reproducible, resume-safe and the same for any number of
        processes at the same global batch."""
        gen = torch.Generator(device=self.device)
        if self.step_stream is not None:  # a search candidate: its own seed, steps counted from its start
            seed, first = self.step_stream
            return gen.manual_seed(mix_seed(seed, self.global_step - first))
        return gen.manual_seed(mix_seed(self.seed, self.global_step))

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size) of this process."""
        return (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)

    def log_stats(self, stats: dict[str, torch.Tensor], prog_bar: set[str] = frozenset()) -> None:
        """Log ``train/<name>`` for each statistic, averaged over ranks in one all-reduce (the logged
        numbers are the global batch's, as in a single process)."""
        names = list(stats)
        values = torch.stack([stats[k].detach().float().reshape(()) for k in names])
        if self._trainer is not None and self.trainer.world_size > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="mean")
        for k, v in zip(names, values):
            self.log(f"train/{k}", v, prog_bar=k in prog_bar)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the image count and the EMA: both are current when any callback's
        ``on_train_batch_end`` runs (Lightning calls callbacks' batch-end hooks before the module's, so
        SelfPlay evaluates the EMA that includes this step). ``images_seen`` is the run's one image counter
        (in every checkpoint); SelfPlay's images in the round are derived from it."""
        super().optimizer_step(*args, **kwargs)
        images = self.trainer.datamodule.global_batch_size
        self.images_seen += images
        self.ema.update(self.trained_network(), images)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("kimg", self.images_seen.float() / 1000)

    # ---- sampling and evaluation ------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, net: nn.Module, seeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Samples [N, *D] from ``net``, each a function of its seed (``Sampler.from_seeds``)."""
        if self.sample_shape is None:
            raise RuntimeError("sample() needs the data's sample shape: call it after trainer setup")
        return self.sampler.from_seeds(net, seeds, labels, self.sample_shape, self.device)

    def evaluation_provenance(self, seed_set: int | None = None) -> dict[str, Any]:
        """How an evaluation's numbers were obtained besides the model (``metrics.fid.sample_provenance``):
        the sample count, the seeds (rule, stream, first and last), whether the labels were class-balanced
        (sample i has class i mod K: exactly balanced when K divides the count; None unconditional),
        ``proxy`` (fewer than 50,000 samples) and, for an FID-like evaluator, the sha256 of its reference
        statistics and feature extractor."""
        from ..metrics.fid import sample_provenance

        n, k = self.num_eval_samples, self.label_dim
        rule = "mix_seed(seed, i, 3)" if seed_set is None else f"mix_seed(seed, i, 6, {seed_set})"
        seeds = {
            "rule": rule,
            "set": "selection" if seed_set is None else f"report-{seed_set}",
            "base_seed": int(self.seed),
            "first_index": 0,
            "last_index": n - 1,
            "first": evaluation_seed(self.seed, 0, seed_set),
            "last": evaluation_seed(self.seed, n - 1, seed_set),
        }
        balanced = None if not k else n % k == 0
        evaluator = self.evaluator if isinstance(self.evaluator, ReportsProvenance) else None
        return sample_provenance(n, seeds, balanced, evaluator)

    @torch.no_grad()
    def evaluate(self, net: nn.Module | None = None, seed_set: int | None = None) -> dict[str, float]:
        """Evaluator metrics of ``net`` (default: the EMA) on ``num_eval_samples`` fixed-seed samples,
        sharded over ranks by index and gathered by the metric: the selection seeds, or report seed set
        ``seed_set`` (:func:`evaluation_seed`). Adds ``num_samples``, ``nfe`` (network evaluations per
        sample), ``sampler_steps`` and ``eval_seconds`` (the cost of this evaluation), and for an FID-like
        evaluator ``proxy`` (1.0: fewer than 50,000 samples, the value is a proxy of the protocol's FID)."""
        if self.evaluator is None:
            return {}
        net = self.ema.model if net is None else net
        t0 = time.perf_counter()
        self.evaluator.reset()
        rank, world = self.shard
        for chunk, n in rank_batches(self.num_eval_samples, self.eval_batch_size, rank, world, is_sharded(net)):
            seeds = torch.tensor([evaluation_seed(self.seed, int(i), seed_set) for i in chunk])
            labels = balanced_labels(chunk, self.label_dim).to(self.device)
            x = self.sample(net, seeds, labels)
            if n:
                self.evaluator.update(x[:n], labels[:n])
        metrics = {k: float(v) for k, v in self.evaluator.compute().items()}
        if isinstance(self.evaluator, MeasuresNetwork):  # metrics of the network itself (exact likelihoods)
            metrics.update({k: float(v) for k, v in self.evaluator.measure_network(net).items()})
        # how the number was obtained travels with it: sample count, sampler cost, wall time
        metrics["num_samples"] = float(self.num_eval_samples)
        metrics["nfe"] = float(self.sampler.nfe)
        metrics["sampler_steps"] = float(self.sampler.num_steps)
        metrics["eval_seconds"] = time.perf_counter() - t0
        if isinstance(self.evaluator, ReportsProvenance):
            from ..metrics.fid import is_proxy

            metrics["proxy"] = float(is_proxy(self.num_eval_samples))
        return metrics

    def _log_evaluation(self, prefix: str) -> None:
        from .report import publish_evaluation

        metrics = self.evaluate()
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, rank_zero_only=True)
        if metrics:  # the sample grids and other evaluation listeners
            publish_evaluation(self.trainer, self, metrics, prefix=prefix, log=False)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """One evaluation of the EMA (the dataloader has a single item); logs ``val/<metric>``."""
        self._log_evaluation("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """As validation; logs ``test/<metric>``."""
        self._log_evaluation("test")


def newest_checkpoint(trainer: pl.Trainer) -> str | None:
    """The most recent checkpoint file any callback of ``trainer`` has written, if any."""
    paths = []
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint):
            paths += [cb.last_model_path, cb.best_model_path]
        if isinstance(cb, RoundCheckpoints):
            paths.append(cb.last_round_path)
    paths = [p for p in paths if p and os.path.isfile(p)]
    return max(paths, key=os.path.getmtime) if paths else None
