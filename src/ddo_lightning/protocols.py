"""Interfaces shared by every layer, and the optional hooks a component may implement.

Shape key used in docstrings: B batch, C channels, H/W height/width, D data dimensions (any trailing
shape), K label dimension (one-hot; 0 for unconditional models), L sequence length, V vocabulary size.

Optional hooks are declared here as ``runtime_checkable`` protocols, one per hook: a caller asks
``isinstance(obj, Hook)`` and then calls the hook directly, so every hook the framework calls is named
and documented in this one file (nothing looks attributes up by string).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

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


# ---- what one sample is ------------------------------------------------------------------------------
@runtime_checkable
class Labelled(Protocol):
    """Something with class labels of width ``label_dim`` (K, 0 for unconditional)."""

    @property
    def label_dim(self) -> int: ...


@runtime_checkable
class SampleSpec(Labelled, Protocol):
    """Something that says what one sample is: ``sample_shape`` (e.g. (C, H, W), (D,) or (L,)) and
    ``label_dim`` (K). Networks, datasets and the data module all do: the modules take the shapes from
    the data, ``ddo sample``/``ddo fid`` from the network."""

    @property
    def sample_shape(self) -> tuple[int, ...]: ...


@runtime_checkable
class NoiseLevels(Protocol):
    """A denoiser that supports only a range (or a discrete set) of noise levels: ``sigma_min``/``sigma_max``
    bound the sampler's schedule, ``round_sigma(sigma)`` maps σ to the nearest supported level (identity
    except iDDPM's discrete table). EDM's Heun sampler clamps and rounds its schedule with these."""

    sigma_min: float
    sigma_max: float

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DecodesTokens(Protocol):
    """A token model whose tokens stand for images (VAR's adapter): ``decode(tokens [B, L])`` -> images
    [B, C, H, W] in [-1, 1]. ``ddo sample`` writes PNGs and ``ddo fid`` measures images through it."""

    def decode(self, tokens: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PreparesFakes(Protocol):
    """A model whose samples need post-processing into what DDO trains on as fakes (VAR: the tokens of
    the decoded, 8-bit images). ``DDOModule.sample_reference`` calls it; evaluation samples are never
    post-processed. x: what the sampler returned, [B, *D] -> [B, *D]."""

    def prepare_fakes(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class SamplesTokens(Protocol):
    """A token model with its own sampling loop (VAR's coarse-to-fine scales), used by ``TokenSampler``
    instead of the generic left-to-right loop.

    labels: [B, K]; uniforms: [B, L] in [0, 1), one per token (inverse-CDF draws, so a sample depends only
    on its seed). Returns tokens [B, L] int64. ``num_sampling_steps`` is the number of forward passes
    one sample costs (without CFG's doubling)."""

    @property
    def num_sampling_steps(self) -> int: ...

    def sample_tokens(
        self,
        labels: torch.Tensor,
        uniforms: torch.Tensor,
        cfg: float = 0.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> torch.Tensor: ...


# ---- objectives -----------------------------------------------------------------------------------------
@runtime_checkable
class RoundAware(Protocol):
    """An objective whose settings change per self-play round (DiffusionDDO's ``P_std_schedule``).
    ``SelfPlay`` calls ``start_round(r)`` (r = 0, 1, ...) before each round's first step."""

    def start_round(self, round_index: int) -> None: ...


# ---- training ---------------------------------------------------------------------------------------------
@runtime_checkable
class SamplesReference(Protocol):
    """A training module whose frozen reference makes the fakes (``DDOModule``): ``round_index`` is the
    0-based self-play round in progress and ``sample_reference(seeds [B], labels [B, K])`` -> [B, *D] that
    round's reference's samples (a :class:`SampleFn`). The data module checks it once, when a fit with a
    fake source is set up, and then calls it directly."""

    round_index: int

    def sample_reference(self, seeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


# ---- data -------------------------------------------------------------------------------------------------
@runtime_checkable
class RealDataset(SampleSpec, Protocol):
    """The real data of a run: ``len(ds)`` samples, ``ds[i]`` a :class:`Samples` of one sample (x [*D],
    labels [K]); ``sample_shape`` is D and ``label_dim`` K."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Samples: ...


@runtime_checkable
class TokenVocabulary(Protocol):
    """Token data that says how many token values it can hold: ``vocab_size`` (V; None where the data does
    not say). Checked against the network's vocabulary before training."""

    @property
    def vocab_size(self) -> int | None: ...


@runtime_checkable
class HasImages(Protocol):
    """An image dataset that holds all its images in memory: ``images`` [N, C, H, W] uint8 (what FID's
    reference statistics are computed from)."""

    images: torch.Tensor


@runtime_checkable
class HasRealData(Protocol):
    """A data module: ``real`` is its real dataset (a :class:`RealDataset`)."""

    real: Any


@runtime_checkable
class HasGroundTruth(Protocol):
    """Data drawn from a distribution the code knows exactly (the toy mixture, the Markov token source);
    ``ground_truth`` is that distribution (a :class:`KnownDensity`), or None where the data has none."""

    @property
    def ground_truth(self) -> Any: ...


@runtime_checkable
class KnownDensity(Protocol):
    """An exactly known distribution: ``log_prob(x [B, *D], ...)`` -> [B] natural-log densities (the toy
    mixture takes x alone; the Markov source also takes the classes [B])."""

    def log_prob(self, x: torch.Tensor, *args: Any) -> torch.Tensor: ...


@runtime_checkable
class KnownLowRankMixture(KnownDensity, Protocol):
    """A known mixture of Gaussians N(μ_k, U_k diag(λ_k) U_kᵀ + s0² I) (the image demo's,
    ``data.LowRankGaussianMixture``): ``means`` [K, D], ``bases`` [K, D, r] (orthonormal columns),
    ``variances`` [K, r], ``floor`` s0, ``weights`` [K]; ``component_log_probs(x [B, *D])`` -> [B, K]
    (log w_k + log N_k) and ``sample(n, generator)`` -> (x [n, D], component [n])."""

    means: torch.Tensor
    bases: torch.Tensor
    variances: torch.Tensor
    floor: float
    weights: torch.Tensor

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor: ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class KnownTokenSource(KnownDensity, Protocol):
    """A known token source that also gives a model's exact KL divergences over the whole sequence space:
    ``exact_kl(model)`` -> {"kl_data_model", "kl_model_data", ...} in nats per sequence."""

    def exact_kl(self, model: Any, batch_size: int = 8192) -> dict[str, float]: ...


# ---- evaluation -------------------------------------------------------------------------------------------
@runtime_checkable
class ConnectsToData(Protocol):
    """An evaluator that needs the run's data before its first evaluation (reference statistics, the known
    distribution). ``source`` is the data module; called once at fit start."""

    def connect(self, source: Any) -> None: ...


@runtime_checkable
class FeatureExtractor(Protocol):
    """FID's feature network: ``extractor(images)`` with uint8 images [B, 3, H, W] -> features [B, F],
    ``F = feature_dim`` (Inception-v3 pool3: 2048)."""

    feature_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class MeasuresNetwork(Protocol):
    """An evaluator that also measures the network itself, not only its samples (exact likelihoods):
    ``measure_network(net)`` -> {metric name: value}, merged into the evaluation record."""

    def measure_network(self, net: torch.nn.Module) -> dict[str, float]: ...


@runtime_checkable
class ReportsProvenance(Protocol):
    """An FID-like evaluator (a Fréchet distance of features): ``provenance()`` -> what its numbers depend
    on besides the samples (the reference statistics' and the feature extractor's sha256, ...), a JSON-able
    dict; the module adds the sample count, the seeds and the class balance (``metrics.fid``)."""

    def provenance(self) -> dict[str, Any]: ...


@runtime_checkable
class HasWeightsFile(Protocol):
    """A feature extractor loaded from a weights file: ``weights_file()`` -> its path (FID provenance hashes
    the file; an extractor without one is hashed by its ``state_dict``)."""

    def weights_file(self) -> str | None: ...


@runtime_checkable
class DecodesSamples(Protocol):
    """An evaluator whose samples may be latents: ``images_of(x)`` -> model-space images [B, 3, H, W] in
    [-1, 1] for sample grids (EDM2 512 px: decoded by the Stable Diffusion VAE; x itself when the samples
    are images). A method, not a ``decoder`` attribute: protocol checks of attributes held by an
    ``nn.Module`` (submodules) differ between Python versions."""

    def images_of(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class EvaluationListener(Protocol):
    """A callback that reacts to each evaluation (sample grids, figures): ``on_evaluation(trainer,
    pl_module, record)`` with ``record`` = {"<prefix>/<metric>": value, "<prefix>/kimg": ..., maybe
    "round"}; called by ``training.report.publish_evaluation`` after the loggers got the record."""

    def on_evaluation(self, trainer: Any, pl_module: Any, record: dict[str, float]) -> None: ...


@runtime_checkable
class RoundCheckpoints(Protocol):
    """A callback that writes one checkpoint per self-play round; ``last_round_path`` is the newest (None
    before the first). Resuming looks here as well as at Lightning's ``ModelCheckpoint``."""

    last_round_path: str | None
