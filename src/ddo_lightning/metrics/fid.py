"""Fréchet distance between feature distributions (Heusel et al. 2017), streamed.

Features of generated images are accumulated as (Σx, Σxxᵀ, n) in float64 — no image is written — and
summed across ranks (torchmetrics ``dist_reduce_fx="sum"``); the mean and covariance follow at the end.
The feature extractor is pluggable: the digits classifier (``digits-FID``), Inception-v3 for the image
protocol (``InceptionFeatures``; resize and quantisation documented there), or a random network in tests.

Reference statistics are EDM's ``.npz`` format: ``mu`` [d] and ``sigma`` [d, d] (float64), as EDM's
``fid.py ref`` writes them and as :func:`save_reference_stats` / ``ddo fid --write-stats`` write them.

Provenance (docs/fid.md, "Provenance"): every FID-like record says what its number depends on besides the
model: the sample count, the seeds, whether classes were balanced, the sha256 of the reference statistics
and of the feature extractor's weights (:meth:`FrechetDistance.provenance`, :func:`sample_provenance`), and
``proxy: true`` when fewer than :data:`FULL_FID_SAMPLES` samples were measured.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric
from tqdm.auto import tqdm

from ..files import atomic_path
from ..pixels import model_to_uint8, uint8_to_model
from ..protocols import FeatureExtractor, HasImages, HasRealData, HasWeightsFile, ReportsProvenance

FULL_FID_SAMPLES = 50_000  # the protocol's sample count: an FID of fewer samples is a proxy (biased upward)


def is_proxy(num_samples: int) -> bool:
    """Whether an FID-like value of ``num_samples`` samples is a proxy (fewer than the protocol's 50,000)."""
    return int(num_samples) < FULL_FID_SAMPLES


def sha256_file(path: str) -> str:
    """The sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_state_dict(module: nn.Module) -> str:
    """The sha256 (hex) of a module's weights, in a defined byte order: for each entry of ``state_dict()``
    in its own order (registration order), the UTF-8 name, a NUL byte, the dtype (e.g. ``torch.float32``),
    a NUL, the shape as comma-separated integers, a NUL, then the tensor's elements as contiguous CPU bytes
    (little-endian). The same weights give the same hash on any device; renaming or reshaping changes it."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{','.join(str(d) for d in t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sha256_arrays(mu: np.ndarray, sigma: np.ndarray) -> str:
    """The sha256 (hex) of statistics that exist only in memory (computed from the real data): ``mu`` then
    ``sigma`` as float64, C order, little-endian bytes."""
    h = hashlib.sha256()
    for a in (mu, sigma):
        h.update(np.ascontiguousarray(np.asarray(a, dtype="<f8")).tobytes())
    return h.hexdigest()


def extractor_hash(extractor: nn.Module) -> tuple[str, str]:
    """(sha256, what was hashed) of a feature extractor's weights: the weights file it was loaded from
    (``weights_file()``, e.g. Inception's torch-fidelity file) when it has one, else its ``state_dict``
    (:func:`sha256_state_dict`; the digits classifier, random extractors in tests)."""
    path = extractor.weights_file() if isinstance(extractor, HasWeightsFile) else None
    if isinstance(path, str) and os.path.isfile(path):
        return sha256_file(path), "file"
    return sha256_state_dict(extractor), "state_dict"


def class_balanced(labels: Sequence[int] | torch.Tensor | None, label_dim: int) -> bool | None:
    """Whether integer class labels hold exactly the same count of every one of ``label_dim`` classes;
    None for unconditional samples (``label_dim`` 0: no classes to balance)."""
    if not label_dim:
        return None
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64).reshape(-1), minlength=label_dim)
    return bool(len(counts) == label_dim and (counts == counts[0]).all())


def sample_provenance(
    num_samples: int, seeds: dict[str, Any], balanced: bool | None, evaluator: Any = None
) -> dict[str, Any]:
    """One FID-like record's provenance: ``num_samples``, ``seeds`` (how the per-sample seeds were made and
    their first and last), ``class_balanced`` (None: unconditional), ``proxy`` (fewer than 50,000 samples),
    and the evaluator's own (:meth:`FrechetDistance.provenance`) when it has one."""
    out: dict[str, Any] = {
        "num_samples": int(num_samples),
        "seeds": dict(seeds),
        "class_balanced": balanced,
        "proxy": is_proxy(num_samples),
    }
    if isinstance(evaluator, ReportsProvenance):
        out.update(evaluator.provenance())
    return out


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) in float64, for symmetric PSD covariances [d, d]."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"feature statistics of different sizes: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    return float(
        np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    )


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Σ1Σ2)^½) for symmetric PSD Σ1, Σ2 [d, d].

    Σ1Σ2 is similar to the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (conjugate by Σ1^½), so both have the same
    eigenvalues λ ≥ 0 and the trace is Σ √λ: two symmetric eigendecompositions (LAPACK ``syevd``) in
    place of the general matrix square root of Σ1Σ2 (``scipy.linalg.sqrtm``, a complex Schur form) that
    the reference implementations take — the same quantity, several times faster at d = 2048 and exact
    also for the singular covariances of fewer samples than features, where sqrtm's result carries an
    imaginary part that they drop. Rounding can make the smallest eigenvalues slightly negative: they
    are clipped to 0.
    """
    w, v = np.linalg.eigh(sigma1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Σ1^½
    lam = np.linalg.eigvalsh(root @ sigma2 @ root)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def stats_from_sums(total: torch.Tensor, outer: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance from Σx [d], Σxxᵀ [d, d] and n (float64)."""
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
    mu = (total / n).double()
    sigma = (outer.double() - n * torch.outer(mu, mu)) / (n - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy()


def load_reference_stats(path: str, feature_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``mu``, ``sigma`` (float64) from an ``.npz`` in EDM's format, checked for shape (and against the
    extractor's ``feature_dim`` when given)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"reference statistics not found: {path} (write them with `ddo fid --write-stats {path} ...`)"
        )
    try:
        with np.load(path) as z:
            files = list(z.files)
            arrays = {k: z[k].astype(np.float64) for k in ("mu", "sigma") if k in files}
    except Exception as err:  # truncated zip, not an npz, ...: name the file and the cause
        raise ValueError(f"cannot read reference statistics {path}: {type(err).__name__}: {err}") from err
    missing = [k for k in ("mu", "sigma") if k not in arrays]
    if missing:
        raise ValueError(
            f"{path} has no {' or '.join(missing)} (keys: {files}); expected EDM's format with mu and sigma"
        )
    mu, sigma = arrays["mu"], arrays["sigma"]
    d = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or sigma.shape != (d, d):
        raise ValueError(f"{path}: mu must be [d] and sigma [d, d], got {mu.shape} and {sigma.shape}")
    if feature_dim is not None and d != feature_dim:
        raise ValueError(
            f"{path} holds {d}-d statistics but the feature extractor gives {feature_dim}-d features "
            "(statistics from another extractor?)"
        )
    return mu, sigma


def save_reference_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **extra: Any) -> None:
    """Write ``mu``, ``sigma`` (and ``extra`` arrays, e.g. ``count``) as an ``.npz`` in EDM's format,
    atomically (temporary name, then rename)."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)


class FrechetDistance(Metric):
    """FID-style metric with a pluggable feature extractor.

    ``update(x, labels)`` takes model-space images in [−1, 1] (as samplers return them); they are
    quantised to uint8 first with EDM's rule (``pixels.model_to_uint8``), and the extractor receives
    uint8 [B, C, H, W]. uint8 images (image files, real data) are taken as they are. Reference
    statistics come from ``reference_stats`` (an ``.npz`` with ``mu`` and ``sigma``, EDM's format) or
    from ``connect(datamodule)`` (the real training set, computed once).

    The extractor's weights are not part of the metric's ``state_dict``: checkpoints of a module that
    holds this metric do not carry 95 MB of Inception weights (loading fills them from the extractor).

    Args:
        extractor: module mapping uint8 images [B, C, H, W] to features [B, d]; has ``feature_dim``.
        name: the key ``compute`` returns (e.g. ``digits_fid``, ``fid``).
        reference_stats: optional ``.npz`` with ``mu`` [d] and ``sigma`` [d, d].
        reference_batch_size: images per extractor call when computing reference statistics.
        decoder: optional module mapping model-space samples to uint8 images [B, C, H, W] before the
            extractor, e.g. ``data.StabilityVAE`` for EDM2's latent models (latents -> 512 px pixels);
            ``SampleGrids`` uses it too. Like the extractor, its weights stay out of ``state_dict``.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(
        self,
        extractor: nn.Module,
        name: str = "fid",
        reference_stats: str | None = None,
        reference_batch_size: int = 500,
        decoder: nn.Module | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not isinstance(extractor, FeatureExtractor):
            raise TypeError(f"the feature extractor {type(extractor).__name__} must have a `feature_dim`")
        self.extractor = extractor.eval().requires_grad_(False)
        self.decoder = decoder.eval().requires_grad_(False) if decoder is not None else None
        self.name, self.reference_stats, self.reference_batch_size = name, reference_stats, reference_batch_size
        self.reference: tuple[np.ndarray, np.ndarray] | None = None
        self.reference_sha256: str | None = None  # of the .npz file, or of the computed arrays (provenance)
        self.reference_hashed: str | None = None  # "file" or "arrays"
        self.reference_source: str | None = None  # where computed statistics came from (connect)
        self._extractor_hash: tuple[str, str] | None = None
        dim = int(extractor.feature_dim)
        self.add_state("total", default=torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", default=torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        if reference_stats is not None:
            self.reference = load_reference_stats(reference_stats, dim)
            self.reference_sha256, self.reference_hashed = sha256_file(reference_stats), "file"
        self._register_state_dict_hook(_drop_extractor)
        self.register_load_state_dict_pre_hook(_fill_extractor)

    @torch.no_grad()
    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.extractor(images_uint8.to(self.device)).double()

    def connect(self, source: Any) -> None:
        """Compute the reference statistics from ``source.real`` (a dataset with uint8 ``images``)
        unless they were given as a file."""
        if self.reference is not None:
            return
        real = source.real if isinstance(source, HasRealData) else source
        images = real.images if isinstance(real, HasImages) else None
        if images is None:
            raise ValueError(f"{type(real).__name__} has no uint8 `images`: give FrechetDistance reference_stats")
        self.reference = self.statistics_of(torch.as_tensor(images).split(self.reference_batch_size), total=len(images))
        self.reference_sha256, self.reference_hashed = sha256_arrays(*self.reference), "arrays"
        self.reference_source = f"computed from {type(real).__name__} ({len(images)} images)"

    def provenance(self) -> dict[str, Any]:
        """What this metric's values depend on besides the samples: the reference statistics (file, or
        computed from the training set) and their sha256, the feature extractor and its weights' sha256
        (:func:`extractor_hash`; computed once)."""
        if self._extractor_hash is None:
            self._extractor_hash = extractor_hash(self.extractor)
        return {
            "metric": self.name,
            "reference_stats": self.reference_stats or self.reference_source,
            "reference_stats_sha256": self.reference_sha256,
            "reference_stats_hashed": self.reference_hashed,
            "feature_extractor": type(self.extractor).__name__,
            "feature_weights_sha256": self._extractor_hash[0],
            "feature_weights_hashed": self._extractor_hash[1],
        }

    def statistics_of(
        self, batches: Iterable[torch.Tensor], total: int | None = None, desc: str = "reference statistics"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the features of uint8 image batches, without touching the metric's state.
        Shows a progress bar for more than 2,000 images."""
        sx, sxx, n = 0, 0, 0
        with tqdm(total=total, desc=desc, unit="img", disable=total is None or total <= 2000) as bar:
            for batch in batches:
                f = self.features(batch)
                sx, sxx, n = sx + f.sum(0), sxx + f.T @ f, n + len(f)
                bar.update(len(f))
        return stats_from_sums(sx, sxx, n)

    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:  # noqa: ARG002
        """Accumulate the features of ``x``: model-space images in [−1, 1] (quantised first), or uint8
        images as they are."""
        f = self.features(self.to_uint8(x))
        self.total += f.sum(0)
        self.outer += f.T @ f
        self.count += len(f)

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Samples as uint8 images: uint8 as they are, else through ``decoder`` when there is one (latents),
        else quantised from [−1, 1] (``pixels.model_to_uint8``)."""
        if x.dtype == torch.uint8:
            return x
        if self.decoder is not None:
            return self.decoder(x.to(self.device))
        return model_to_uint8(x)

    def images_of(self, x: torch.Tensor) -> torch.Tensor:
        """Samples as model-space images for sample grids (:class:`~ddo_lightning.protocols.DecodesSamples`):
        latents decoded (then back to [-1, 1]), images as they are."""
        return uint8_to_model(self.decoder(x)) if self.decoder is not None else x

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of what was accumulated on this process (``compute`` sums over ranks first)."""
        return stats_from_sums(self.total, self.outer, int(self.count))

    def compute(self) -> dict[str, float]:
        if self.reference is None:
            raise RuntimeError("FrechetDistance has no reference statistics: connect(datamodule) or reference_stats")
        return {self.name: frechet_distance(*self.statistics(), *self.reference)}


def _drop_extractor(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for k in [k for k in state_dict if k.startswith((prefix + "extractor.", prefix + "decoder."))]:
        del state_dict[k]


def _fill_extractor(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for name, sub in (("extractor", module.extractor), ("decoder", module.decoder)):
        for k, v in (sub.state_dict() if sub is not None else {}).items():
            state_dict.setdefault(f"{prefix}{name}.{k}", v)
