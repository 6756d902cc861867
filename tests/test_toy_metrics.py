"""Toy 2-D metrics and the mixture density against closed forms and independent numpy/scipy
computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from ddo_lightning.data import GaussianMixture, mixture_preset
from ddo_lightning.metrics import MixtureMetrics, energy_distance, mixture_metrics, mmd_rbf

MEANS = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.75, 1.3], [-1.0, 1.0]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
STD = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return GaussianMixture(MEANS, STD, WEIGHTS)


def _np_energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Székely's energy distance with unbiased within-set means, by numpy broadcasting."""
    dxy = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    dxx = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    dyy = np.sqrt(((y[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    n, m = len(x), len(y)
    return 2 * dxy.mean() - dxx.sum() / (n * (n - 1)) - dyy.sum() / (m * (m - 1))


def test_metrics_on_true_samples(mixture):
    x, _ = mixture.sample(5000, torch.Generator().manual_seed(0))
    fresh, _ = mixture.sample(5000, torch.Generator().manual_seed(1))
    m = mixture_metrics(mixture, x, fresh)
    # P(‖n‖ ≤ 3s) for a 2-D isotropic Gaussian: 1 − exp(−9/2)
    assert m["precision"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert m["recall"] > 0.97
    assert m["modes_covered"] == 1.0
    assert abs(m["energy_distance"]) < 2e-3
    assert abs(m["mmd"]) < 2e-3
    assert m["num_samples"] == 5000.0
    # mean log density of true samples ≈ −H(p): for well-separated modes
    # H = H(w) + log(2π e s²) (2-D entropy of one mode plus the mixing entropy)
    H = float(-(WEIGHTS * WEIGHTS.log()).sum()) + math.log(2 * math.pi * math.e * STD**2)
    assert m["mean_log_density"] == pytest.approx(-H, abs=0.05)


def test_metrics_on_ring8_preset():
    gm = mixture_preset("ring8")
    x, _ = gm.sample(5000, torch.Generator().manual_seed(2))
    fresh, _ = gm.sample(5000, torch.Generator().manual_seed(3))
    m = mixture_metrics(gm, x, fresh)
    assert m["precision"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert m["recall"] > 0.97
    assert abs(m["energy_distance"]) < 2e-3


def test_energy_distance_vs_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    y = rng.normal(loc=0.3, scale=1.2, size=(60, 2))
    ours = energy_distance(torch.from_numpy(x), torch.from_numpy(y))
    assert ours == pytest.approx(_np_energy_distance(x, y), rel=0, abs=1e-9)
    # a double loop on a tiny set, as a second oracle
    xs, ys = x[:5], y[:4]
    d = lambda a, b: math.sqrt(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))  # noqa: E731
    exy = sum(d(a, b) for a in xs for b in ys) / 20
    exx = sum(d(a, b) for i, a in enumerate(xs) for j, b in enumerate(xs) if i != j) / 20
    eyy = sum(d(a, b) for i, a in enumerate(ys) for j, b in enumerate(ys) if i != j) / 12
    assert energy_distance(torch.from_numpy(xs), torch.from_numpy(ys)) == pytest.approx(2 * exy - exx - eyy, abs=1e-12)
    # symmetric, and clearly positive for shifted distributions
    assert energy_distance(torch.from_numpy(y), torch.from_numpy(x)) == pytest.approx(ours, abs=1e-12)
    far = energy_distance(torch.from_numpy(x), torch.from_numpy(x + 3.0))
    assert far > 1.0


def test_mmd_vs_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 2)) * 0.5
    y = rng.normal(size=(60, 2)) * 0.6 + 0.2
    hs = (0.2, 0.8)

    def k(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-sq / (2 * h * h)) for h in hs)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    ref = (kxx.sum() - np.trace(kxx)) / (50 * 49) + (kyy.sum() - np.trace(kyy)) / (60 * 59) - 2 * kxy.mean()
    assert mmd_rbf(torch.from_numpy(x), torch.from_numpy(y), hs) == pytest.approx(ref, abs=1e-9)
    assert ref > 0.01  # the two sets differ, so the check is not 0 == 0


def test_energy_distance_chunked_large():
    # more rows than one chunk (4096): the chunked sum must equal the unchunked numpy value
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4500, 2))
    y = rng.normal(size=(30, 2)) + 0.5
    ours = energy_distance(torch.from_numpy(x), torch.from_numpy(y))
    dxy = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1)).mean()
    dyy = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1)).sum() / (30 * 29)
    dxx = 0.0
    for i in range(0, 4500, 500):
        dxx += np.sqrt(((x[i : i + 500, None] - x[None]) ** 2).sum(-1)).sum()
    dxx /= 4500 * 4499
    assert ours == pytest.approx(2 * dxy - dxx - dyy, abs=1e-7)


def test_samples_on_one_mode(mixture):
    g = torch.Generator().manual_seed(4)
    k = 2
    x = MEANS[k] + STD * torch.randn(3000, 2, generator=g, dtype=torch.float64)
    x = x[(x - MEANS[k]).norm(dim=1) < 2.5 * STD]  # all surely on mode k
    fresh, _ = mixture.sample(2000, torch.Generator().manual_seed(5))
    m = mixture_metrics(mixture, x, fresh)
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(float(WEIGHTS[k]), abs=1e-12)
    assert m["modes_covered"] == pytest.approx(1 / 4, abs=1e-12)
    assert m["energy_distance"] > 0.1
    assert m["mmd"] > 0.1


def test_samples_far_from_modes(mixture):
    x = torch.tensor([[10.0, 10.0], [-8.0, 3.0], [0.75, 0.45]], dtype=torch.float64)  # last: between modes
    fresh, _ = mixture.sample(500, torch.Generator().manual_seed(6))
    m = mixture_metrics(mixture, x, fresh)
    assert m["precision"] == 0.0
    assert m["recall"] == 0.0
    assert m["modes_covered"] == 0.0
    assert m["mean_log_density"] < -20


def test_non_finite_samples_count_as_misses(mixture):
    x = torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [1.5, 0.0], [float("inf"), 1.0]], dtype=torch.float64)
    fresh, _ = mixture.sample(200, torch.Generator().manual_seed(7))
    m = mixture_metrics(mixture, x, fresh)
    assert m["num_samples"] == 4.0
    assert m["precision"] == 0.5
    assert math.isfinite(m["energy_distance"]) and math.isfinite(m["mean_log_density"])


def test_torchmetrics_wrapper_matches_function(mixture):
    metric = MixtureMetrics(fresh_seed=3)
    with pytest.raises(RuntimeError, match="connect"):
        metric.update(torch.zeros(1, 2))
        metric.compute()
    metric.reset()
    metric.connect(mixture)
    x, _ = mixture.sample(1000, torch.Generator().manual_seed(8))
    metric.update(x[:400])
    metric.update(x[400:])
    got = metric.compute()
    fresh, _ = mixture.sample(1000, torch.Generator().manual_seed(3))
    want = mixture_metrics(mixture, x, fresh)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_log_prob_vs_scipy(mixture):
    rng = np.random.default_rng(0)
    x = rng.normal(scale=1.5, size=(200, 2)) + 0.5
    comps = np.stack(
        [multivariate_normal(mean=MEANS[k].numpy(), cov=STD**2 * np.eye(2)).logpdf(x) for k in range(4)], axis=1
    )
    ref = np.logaddexp.reduce(comps + np.log(WEIGHTS.numpy())[None], axis=1)
    ours = mixture.log_prob(torch.from_numpy(x))
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-8)


def test_log_prob_3d_unnormalised_weights_vs_scipy():
    means = np.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])
    gm = GaussianMixture(torch.from_numpy(means), 0.7, torch.tensor([3.0, 1.0]))  # weights normalised inside
    x = np.random.default_rng(1).normal(size=(50, 3))
    ref = np.log(
        0.75 * multivariate_normal(means[0], 0.49 * np.eye(3)).pdf(x)
        + 0.25 * multivariate_normal(means[1], 0.49 * np.eye(3)).pdf(x)
    )
    np.testing.assert_allclose(gm.log_prob(torch.from_numpy(x)).numpy(), ref, rtol=1e-10, atol=1e-10)


def test_sample_component_frequencies_and_spread(mixture):
    x, comp = mixture.sample(40_000, torch.Generator().manual_seed(9))
    freq = torch.bincount(comp, minlength=4).double() / 40_000
    assert (freq - WEIGHTS).abs().max() < 0.01
    resid = x.double() - MEANS[comp]
    assert float(resid.std()) == pytest.approx(STD, rel=0.02)
    assert resid.mean(0).abs().max() < 0.003
