"""Fréchet distance, streamed feature statistics and the digits-FID classifier."""

import numpy as np
import pytest
import torch
from torch import nn

from ddo_lightning.data import DigitsDataset
from ddo_lightning.metrics import DigitsFeatures, FrechetDistance, frechet_distance
from ddo_lightning.metrics.fid import stats_from_sums


def _psd_sqrt(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _fd_eig(mu1, s1, mu2, s2):
    """Independent formula: tr((Σ1Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½) for symmetric PSD matrices."""
    r = _psd_sqrt(s1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(_psd_sqrt(r @ s2 @ r)))


def test_frechet_distance_against_independent_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(*args) == pytest.approx(_fd_eig(*args), rel=1e-8)
    assert abs(frechet_distance(args[0], args[1], args[0], args[1])) < 1e-8
    # closed form for diagonal Gaussians: Σ (μ1-μ2)² + (√s1 − √s2)²
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert frechet_distance(np.zeros(2), s1, np.ones(2), s2) == pytest.approx(2 + (1 - 3) ** 2 + (2 - 1) ** 2)


class Flat(nn.Module):
    feature_dim = 3 * 4 * 4

    def forward(self, x):
        return x.flatten(1).float()


def test_streamed_statistics_equal_direct_and_merge_like_ranks():
    x = torch.rand(90, 3, 4, 4) * 2 - 1
    whole = FrechetDistance(Flat())
    for chunk in x.split(25):
        whole.update(chunk)
    feats = ((x + 1) * 127.5).round().clamp(0, 255).flatten(1).double().numpy()
    mu, sigma = stats_from_sums(whole.total, whole.outer, int(whole.count))
    assert np.allclose(mu, feats.mean(0)) and np.allclose(sigma, np.cov(feats, rowvar=False))
    # two "ranks" whose summed states are what an all-reduce gives: identical statistics
    a, b = FrechetDistance(Flat()), FrechetDistance(Flat())
    a.update(x[:40])
    b.update(x[40:])
    merged = [a.total + b.total, a.outer + b.outer, int(a.count + b.count)]
    assert all(torch.allclose(m, w) for m, w in zip(merged[:2], (whole.total, whole.outer))) and merged[2] == 90


def test_digits_classifier_and_digits_fid():
    data = DigitsDataset()
    net = DigitsFeatures()
    perm = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(0))
    held = perm[1500:]  # the split scripts/train_digits_classifier.py held out
    acc = (net.logits(data.images[held]).argmax(1) == data.raw_labels[held]).float().mean()
    assert acc >= 0.95
    fid = FrechetDistance(DigitsFeatures(), name="digits_fid")
    fid.connect(data)
    real = data.images.float() / 127.5 - 1
    fid.update(real)
    assert abs(fid.compute()["digits_fid"]) < 1e-6  # the data against itself
    fid.reset()
    fid.update(torch.rand_like(real) * 2 - 1)
    noise = fid.compute()["digits_fid"]
    fid.reset()
    fid.update(real.flip(-1))
    flipped = fid.compute()["digits_fid"]
    assert noise > flipped > 0.1  # mirrored digits are off, noise is far off
