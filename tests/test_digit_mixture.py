"""The image demo: the digits-fitted low-rank Gaussian mixture (exact density, sampling, exact denoiser),
its metric, its dataset, and both presets as shipped at a tiny size.

Oracles: torch.distributions' dense multivariate normals (Cholesky) for the density, Tweedie's formula
through autograd of that density for the denoiser, the isotropic 2-D mixture's own denoiser for rank 0,
standard errors of a large draw for the sampler, binomial and multinomial tolerances for the metric.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from ddo_lightning.data import DigitMixtureDataset, GaussianMixture, LowRankGaussianMixture, digit_mixture
from ddo_lightning.metrics import ImageMixtureMetrics
from ddo_lightning.protocols import HasGroundTruth, KnownDensity, KnownLowRankMixture, RealDataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixture() -> LowRankGaussianMixture:
    return digit_mixture()


def dense(m: LowRankGaussianMixture, noise_var: float | torch.Tensor = 0.0):
    """The same mixture from full covariances: torch.distributions (Cholesky), independent of the Woodbury code."""
    cov = torch.stack([m.covariance(k) for k in range(m.num_modes)]) + noise_var * torch.eye(m.dim, dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(m.means, covariance_matrix=cov)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=m.weights), comp)


def test_the_mixture_is_built_from_the_digits(mixture):
    assert (mixture.num_modes, mixture.dim, mixture.rank, mixture.floor) == (10, 64, 4, 0.1)
    assert mixture.image_shape == (1, 8, 8) and torch.allclose(
        mixture.weights, torch.full((10,), 0.1, dtype=torch.float64)
    )
    assert torch.allclose(
        mixture.bases.transpose(1, 2) @ mixture.bases, torch.eye(4, dtype=torch.float64).expand(10, 4, 4)
    )
    assert (mixture.variances[:, :-1] >= mixture.variances[:, 1:]).all()  # principal variances, largest first
    from ddo_lightning.data import DigitsDataset

    d = DigitsDataset()
    x = d.images.to(torch.float64).reshape(len(d), -1) / 127.5 - 1
    for k in (0, 7):
        xk = x[d.raw_labels == k]
        assert torch.allclose(mixture.means[k], xk.mean(0))
        # each direction is an eigenvector of the class's covariance with its eigenvalue
        cov = torch.cov(xk.T)
        assert torch.allclose(cov @ mixture.bases[k], mixture.bases[k] * mixture.variances[k], atol=1e-9)
        assert torch.allclose(mixture.variances[k], torch.linalg.eigvalsh(cov).flip(0)[:4])
    assert abs(mixture.sigma_data - 0.5) < 0.05  # EDM's σ_data fits the data


def test_log_prob_matches_dense_gaussians(mixture):
    g = torch.Generator().manual_seed(0)
    x, comp = mixture.sample(64, g)
    points = torch.cat(
        [
            x.double(),
            x.double() + 0.2 * torch.randn(64, 64, generator=g, dtype=torch.float64),
            torch.rand(32, 64, generator=g, dtype=torch.float64) * 2 - 1,
        ]
    )
    want = dense(mixture).log_prob(points)
    got = mixture.log_prob(points.reshape(-1, 1, 8, 8))  # image-shaped input reads the same
    assert got.dtype == torch.float64 and torch.allclose(got, want, rtol=1e-10, atol=1e-8)
    # the class-conditional density, from one-hot labels or indices
    onehot = torch.nn.functional.one_hot(comp, 10).float()
    single = torch.distributions.MultivariateNormal(
        mixture.means[comp], covariance_matrix=torch.stack([mixture.covariance(int(k)) for k in comp])
    )
    assert torch.allclose(mixture.log_prob(x, onehot), single.log_prob(x.double()), rtol=1e-10, atol=1e-8)
    assert torch.allclose(mixture.log_prob(x, comp), single.log_prob(x.double()), rtol=1e-10, atol=1e-8)
    resp = mixture.responsibilities(x)
    assert torch.allclose(resp.sum(1), torch.ones(64, dtype=torch.float64)) and (resp.argmax(1) == comp).all()
    assert isinstance(mixture, KnownDensity) and isinstance(mixture, KnownLowRankMixture)


def test_samples_have_the_components_means_and_covariances(mixture):
    n = 100_000
    x, comp = mixture.sample(n, torch.Generator().manual_seed(1))
    assert x.shape == (n, 64) and x.dtype == torch.float32
    counts = torch.bincount(comp, minlength=10).double()
    assert ((counts - n / 10).abs() < 5 * math.sqrt(n * 0.1 * 0.9)).all()  # multinomial, 5 std
    for k in range(10):
        xk = x[comp == k].double()
        m = len(xk)
        cov = mixture.covariance(k)
        var = cov.diagonal()
        se_mean = (var / m).sqrt()
        assert ((xk.mean(0) - mixture.means[k]).abs() < 5.5 * se_mean).all(), k
        # the standard error of a Gaussian sample covariance entry: sqrt((Σ_ii Σ_jj + Σ_ij²) / m)
        se_cov = ((var[:, None] * var[None, :] + cov.square()) / m).sqrt()
        assert ((torch.cov(xk.T) - cov).abs() < 5.5 * se_cov).all(), k


def test_denoiser_is_tweedies_posterior_mean(mixture):
    """E[x0 | x] = x + σ² ∇ log p_σ(x), with p_σ the dense mixture convolved with N(0, σ²I) (autograd)."""
    g = torch.Generator().manual_seed(2)
    x0, _ = mixture.sample(6, g)
    for sigma in (0.05, 0.3, 2.0):
        x = (x0.double() + sigma * torch.randn(6, 64, generator=g, dtype=torch.float64)).requires_grad_(True)
        (score,) = torch.autograd.grad(dense(mixture, sigma**2).log_prob(x).sum(), x)
        want = (x + sigma**2 * score).detach()
        got = mixture(x.detach().float().reshape(6, 1, 8, 8), torch.full((6,), sigma))
        assert got.shape == (6, 1, 8, 8) and got.dtype == torch.float32
        assert torch.allclose(got.reshape(6, 64).double(), want, atol=2e-5 * max(1.0, float(want.abs().max()))), sigma


def test_rank_zero_denoiser_is_the_isotropic_mixture(mixture):
    means = torch.tensor([[0.0, 0.0], [1.0, 0.5], [-0.7, 0.3]], dtype=torch.float64)
    low = LowRankGaussianMixture(means, torch.zeros(3, 2, 0), torch.zeros(3, 0), 0.2, torch.tensor([1.0, 2.0, 3.0]))
    iso = GaussianMixture(means, 0.2, torch.tensor([1.0, 2.0, 3.0]))
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    sigma = torch.rand(50, generator=torch.Generator().manual_seed(4)) + 0.01
    assert torch.allclose(low.log_prob(x), iso.log_prob(x), atol=1e-10)
    assert torch.allclose(low(x, sigma), iso(x, sigma), atol=1e-6)


def test_bad_mixtures_are_named():
    means = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="orthonormal"):
        LowRankGaussianMixture(means, torch.ones(2, 3, 1), torch.ones(2, 1), 0.1)
    with pytest.raises(ValueError, match="floor"):
        LowRankGaussianMixture(means, torch.zeros(2, 3, 0), torch.zeros(2, 0), 0.0)
    with pytest.raises(ValueError, match="bases"):
        LowRankGaussianMixture(means, torch.zeros(3, 3, 0), torch.zeros(3, 0), 0.1)
    with pytest.raises(ValueError, match="rank"):
        digit_mixture(rank=65)


def test_dataset_shapes_labels_and_seed():
    a = DigitMixtureDataset(num_samples=500, seed=3)
    assert len(a) == 500 and a.sample_shape == (1, 8, 8) and a.label_dim == 0 and isinstance(a, RealDataset)
    assert isinstance(a, HasGroundTruth) and isinstance(a.ground_truth, LowRankGaussianMixture)
    item = a[7]
    assert item.x.shape == (1, 8, 8) and item.x.dtype == torch.float32 and item.labels.shape == (0,)
    b = DigitMixtureDataset(num_samples=500, seed=3, conditional=True)
    assert torch.equal(a.x, b.x) and b.label_dim == 10 and torch.equal(b.labels.argmax(1), b.components)
    assert torch.equal(b.ground_truth.responsibilities(b.x).argmax(1), b.components)  # classes are separated
    assert not torch.equal(a.x, DigitMixtureDataset(num_samples=500, seed=4).x)
    with pytest.raises(ValueError, match="num_samples"):
        DigitMixtureDataset(num_samples=0)


# ---- the metric ---------------------------------------------------------------------------------------------
N = 5000


@pytest.fixture(scope="module")
def connected() -> ImageMixtureMetrics:
    metric = ImageMixtureMetrics(reference_samples=50_000)
    metric.connect(DigitMixtureDataset(num_samples=10))
    return metric


def evaluate(metric: ImageMixtureMetrics, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    metric.reset()
    for i in range(0, len(x), 1000):  # in batches, as an evaluation feeds it
        metric.update(x[i : i + 1000].reshape(-1, 1, 8, 8), None if labels is None else labels[i : i + 1000])
    return metric.compute()


def test_metric_on_true_samples(connected):
    mixture = connected.mixture
    x, comp = mixture.sample(N, torch.Generator().manual_seed(5))
    r = evaluate(connected, x, torch.nn.functional.one_hot(comp, 10).float())
    # τ is the 1% quantile of 50,000 true log-densities: precision 0.99 within the binomial error of the
    # 5,000 samples and of the quantile (4 std)
    tol = 4 * math.sqrt(0.99 * 0.01 / N + 0.99 * 0.01 / 50_000)
    assert abs(r["precision"] - 0.99) < tol
    # recall = 1 − TV(class histogram, weights); E[TV] ≈ ½ Σ sqrt(2/π · w(1−w)/n) ≈ 0.017 at n ≈ 4,950
    assert r["recall"] > 0.96 and r["modes_covered"] == 1.0 and r["label_accuracy"] == 1.0
    assert abs(r["principal_var_ratio"] - 1) < 0.03 and abs(r["floor_var_ratio"] - 1) < 0.015
    assert abs(r["mmd"]) < 3e-4 and r["logp_w1"] < 0.4 and r["num_samples"] == N
    assert r["mean_log_density"] == pytest.approx(float(mixture.log_prob(x).mean()))


def test_metric_sees_degraded_samples(connected):
    mixture = connected.mixture
    x, comp = mixture.sample(2000, torch.Generator().manual_seed(6))
    x = x.double()
    true = evaluate(connected, x)
    noisy = evaluate(
        connected, x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    )
    assert (
        noisy["precision"] < 0.9
        and noisy["floor_var_ratio"] > 1.2
        and noisy["mean_log_density"] < true["mean_log_density"] - 5
    )
    shrunk = evaluate(connected, mixture.means[comp] + 0.8 * (x - mixture.means[comp]))
    assert shrunk["mmd"] > 10 * max(abs(true["mmd"]), 1e-4) and shrunk["principal_var_ratio"] < 0.7
    # the selection distance grows both ways: below the true log-densities (noise), above them (shrunk)
    assert true["logp_w1"] < 0.5 and noisy["logp_w1"] > 5 and shrunk["logp_w1"] > 5
    only_five = evaluate(connected, x[comp < 5])
    assert 0.45 < only_five["recall"] < 0.55 and only_five["modes_covered"] == 0.5
    broken = evaluate(connected, torch.cat([x[:100], torch.full((100, 64), float("nan"))]))
    assert broken["precision"] < 0.51 and broken["num_samples"] == 200


def test_logp_w1_is_the_wasserstein_distance():
    from scipy.stats import wasserstein_distance

    from ddo_lightning.metrics.image_mixture import logp_w1

    g = torch.Generator().manual_seed(8)
    reference = torch.randn(100_000, generator=g, dtype=torch.float64).sort().values * 5 + 40
    for shift, scale in ((0.0, 1.0), (3.0, 1.0), (-1.0, 0.5)):
        x = torch.randn(3000, generator=g, dtype=torch.float64) * 5 * scale + 40 + shift
        want = wasserstein_distance(x.numpy(), reference.numpy())
        # quantile-matched at the samples' plotting positions: equal up to the reference's quantile resolution
        assert logp_w1(x, reference) == pytest.approx(want, abs=0.02), (shift, scale)


def test_metric_needs_the_mixture():
    from ddo_lightning.data import Toy2DDataset

    metric = ImageMixtureMetrics()
    with pytest.raises(RuntimeError, match="connect"):
        metric.update(torch.zeros(2, 1, 8, 8))
        metric.compute()
    with pytest.raises(ValueError, match="low-rank Gaussian mixture"):
        metric.connect(Toy2DDataset(num_samples=10))  # a known density, but not a low-rank mixture
    assert not isinstance(Toy2DDataset(num_samples=10).ground_truth, KnownLowRankMixture)
    with pytest.raises(ValueError, match="reference_samples"):
        ImageMixtureMetrics(reference_samples=10)


# ---- both presets as shipped, at a tiny size ------------------------------------------------------------------
# What the overlays below may change (keys of test_presets.flatten): sizes, lengths and cadences only.
SIZES = {
    "trainer.max_steps",
    "trainer.val_check_interval",
    "trainer.enable_progress_bar",
    "trainer.callbacks[SelfPlay].rounds",
    "trainer.callbacks[SelfPlay].kimg_per_round",
    "trainer.callbacks[SelfPlay].eval_every_kimg",
    "trainer.callbacks[ModelCheckpoint].every_n_train_steps",
    "trainer.callbacks[SampleGrids].num_samples",
    "trainer.callbacks[SampleGrids].columns",
    "trainer.callbacks[ImageGridFigure].num_samples",
    "trainer.callbacks[ImageGridFigure].columns",
    "model.network.model.model_channels",
    "model.num_eval_samples",
    "model.eval_batch_size",
    "model.evaluator.reference_samples",
    "data.batch_size",
    "data.real.num_samples",
    "data.fake.size",
    "data.fake.generation_batch_size",
}
TINY_MODEL = {
    "network": {"init_args": {"model": {"init_args": {"model_channels": 8}}}},
    "evaluator": {"class_path": "ddo_lightning.metrics.ImageMixtureMetrics", "init_args": {"reference_samples": 2000}},
    "num_eval_samples": 16,
    "eval_batch_size": 16,
}
TINY_DATA = {
    "batch_size": 8,
    "real": {"class_path": "ddo_lightning.data.DigitMixtureDataset", "init_args": {"num_samples": 256}},
}
TINY_PRE = {
    "trainer": {
        "max_steps": 2,
        "val_check_interval": 2,
        "enable_progress_bar": False,
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"every_n_train_steps": 2}},
            {"class_path": "ddo_lightning.training.SampleGrids", "init_args": {"num_samples": 4, "columns": 2}},
        ],
    },
    "model": {"init_args": TINY_MODEL},
    "data": {"init_args": TINY_DATA},
}
TINY_DDO = {
    "trainer": {
        "enable_progress_bar": False,
        "callbacks": [
            {
                "class_path": "ddo_lightning.training.SelfPlay",
                "init_args": {"rounds": 1, "kimg_per_round": 0.016, "eval_every_kimg": 0.016},
            },
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"every_n_train_steps": 2}},
            {"class_path": "ddo_lightning.training.SampleGrids", "init_args": {"num_samples": 4, "columns": 2}},
            {"class_path": "ddo_lightning.training.ImageGridFigure", "init_args": {"num_samples": 8, "columns": 4}},
        ],
    },
    # the tiny pretraining run's weights stand in for the shipped reference (a path, not a setting)
    "model": {"init_args": TINY_MODEL | {"init_from": "outputs/digitmix_pretrain/checkpoints/last.ckpt"}},
    "data": {
        "init_args": TINY_DATA
        | {
            "fake": {
                "class_path": "ddo_lightning.training.PoolFakeSource",
                "init_args": {"size": 16, "generation_batch_size": 16},
            }
        }
    },
}


def test_digitmix_presets_run_tiny_steps(tmp_path, monkeypatch):
    """`make demo-digitmix` at a tiny size: the overlays change sizes only (checked on the resolved configs),
    2 MLE steps, then one DDO round (each of its 3 candidates 2 steps) with its control and report seeds; the
    summary holds the monitored logp_w1 and the exact metrics of the reference, the round and the control."""
    from test_presets import flatten, resolved

    from ddo_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["ddo"])
    for stage, tiny in (("digitmix_pretrain", TINY_PRE), ("digitmix", TINY_DDO)):
        overlay = tmp_path / f"{stage}_tiny.yaml"
        overlay.write_text(yaml.safe_dump(tiny))
        shipped = flatten(resolved(["--config", str(ROOT / "configs" / f"{stage}.yaml")]))
        tinied = flatten(resolved(["--config", str(ROOT / "configs" / f"{stage}.yaml"), "--config", str(overlay)]))
        changed = {k for k in shipped.keys() | tinied.keys() if shipped.get(k, "<absent>") != tinied.get(k, "<absent>")}
        assert changed and changed <= SIZES | {"model.init_from"}, sorted(changed - SIZES)
        assert tinied["model.num_eval_samples"] == 16 and tinied["data.real.num_samples"] == 256
        main(["fit", "--config", str(ROOT / "configs" / f"{stage}.yaml"), "--config", str(overlay)])
    assert (tmp_path / "outputs/digitmix_pretrain/checkpoints/last.ckpt").is_file()
    summary = json.loads((tmp_path / "outputs/digitmix/summary.json").read_text())
    assert summary["monitor"] == "logp_w1" and len(summary["rounds"][0]["candidates"]) == 3
    assert summary["control"]["finished"] and len(summary["report"]) > 0
    for row in (summary["reference"], summary["rounds"][0]["metrics"], summary["control"]["metrics"]):
        assert {"logp_w1", "mmd", "precision", "recall", "mean_log_density"} <= set(row) and math.isfinite(
            row["logp_w1"]
        )
    assert (tmp_path / "outputs/digitmix/samples.png").stat().st_size > 500
