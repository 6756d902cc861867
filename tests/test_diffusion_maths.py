"""EDM preconditioning, schedules, the diffusion log-ratio estimator and the DiffusionDDO objective,
checked against closed forms and independent hand computations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ddo_lightning.likelihood import diffusion_log_ratio
from ddo_lightning.losses import ddo_loss
from ddo_lightning.networks import EDMPrecond, ToyMLP, edm_coefficients
from ddo_lightning.objectives import DiffusionDDO
from ddo_lightning.protocols import PairedBatch, Samples
from ddo_lightning.schedules import edm_weight, karras_sigmas, sample_log_normal_sigma

SD = 0.5


def _net(seed: int = 0, hidden: int = 32) -> EDMPrecond:
    torch.manual_seed(seed)
    return EDMPrecond(ToyMLP(data_dim=2, hidden=hidden, depth=2), sigma_data=SD).eval()


def _hand_error(net: EDMPrecond, x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """λ(σ)·Σ_d (D(x0+σε; σ) − x0)², λ = (σ²+σ_d²)/(σσ_d)², written out independently in float64."""
    noisy = x0 + sigma[:, None] * eps
    den = net(noisy, sigma, torch.zeros(len(x0), 0)).double()
    s = sigma.double()
    lam = (s**2 + SD**2) / (s * SD) ** 2
    return lam * ((den - x0.double()) ** 2).sum(dim=1)


# ---------------------------------------------------------------- preconditioning and schedules


def test_preconditioning_identity():
    net = _net(1)
    g = torch.Generator().manual_seed(3)
    B = 64
    x0 = torch.randn(B, 2, generator=g) * 0.6
    sigma = torch.exp(torch.randn(B, generator=g) * 1.5 - 0.5)
    n = torch.randn(B, 2, generator=g)
    labels = torch.zeros(B, 0)
    x_noisy = x0 + sigma[:, None] * n
    c_skip, c_out, _, _ = edm_coefficients(sigma, SD)
    lam = edm_weight(sigma, SD)
    with torch.no_grad():
        D = net(x_noisy, sigma, labels)
        F = net.raw(x_noisy, sigma, labels)
    lhs = lam * ((D - x0) ** 2).sum(dim=1)
    F_hat = (x0 - c_skip[:, None] * x_noisy) / c_out[:, None]
    rhs = ((F - F_hat) ** 2).sum(dim=1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=0)
    # D is not the identity nor x0 (the net matters)
    assert (D - x0).abs().max() > 1e-3


@pytest.mark.parametrize(
    "sigma,c_skip,c_out,c_in",
    [
        # σ = 0.5: σ²+σ_d² = 0.5
        (0.5, 0.5, 0.25 / math.sqrt(0.5), 1 / math.sqrt(0.5)),
        # σ = 1.2: σ²+σ_d² = 1.69 = 1.3²
        (1.2, 0.25 / 1.69, 0.6 / 1.3, 1 / 1.3),
        # σ = 0.002: σ²+σ_d² = 0.250004
        (0.002, 0.25 / 0.250004, 0.001 / math.sqrt(0.250004), 1 / math.sqrt(0.250004)),
        # σ = 80: σ²+σ_d² = 6400.25
        (80.0, 0.25 / 6400.25, 40.0 / math.sqrt(6400.25), 1 / math.sqrt(6400.25)),
    ],
)
def test_edm_coefficients_closed_form(sigma, c_skip, c_out, c_in):
    s = torch.tensor([sigma], dtype=torch.float64)
    cs, co, ci, cn = (float(v) for v in edm_coefficients(s, SD))
    assert cs == pytest.approx(c_skip, rel=1e-12)
    assert co == pytest.approx(c_out, rel=1e-12)
    assert ci == pytest.approx(c_in, rel=1e-12)
    assert cn == pytest.approx(math.log(sigma) / 4, rel=1e-12)
    w = float(edm_weight(s, SD))
    assert w == pytest.approx(1 / c_out**2, rel=1e-12)
    assert w == pytest.approx((sigma**2 + 0.25) / (sigma * 0.5) ** 2, rel=1e-12)
    # c_skip + c_out²/σ_d² = 1 (EDM's variance bookkeeping)
    assert cs + co**2 / SD**2 == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("n,smin,smax,rho", [(18, 0.002, 80.0, 7.0), (5, 0.01, 10.0, 3.0), (2, 0.1, 1.0, 7.0)])
def test_karras_sigmas(n, smin, smax, rho):
    sig = karras_sigmas(n, smin, smax, rho)
    assert sig.dtype == torch.float64
    assert sig.shape == (n + 1,)
    assert float(sig[-1]) == 0.0
    assert float(sig[0]) == pytest.approx(smax, rel=1e-12)
    assert float(sig[-2]) == pytest.approx(smin, rel=1e-12)
    assert (sig[1:] < sig[:-1]).all()
    for i in range(n):
        expected = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        assert float(sig[i]) == pytest.approx(expected, rel=1e-12)
    no_zero = karras_sigmas(n, smin, smax, rho, append_zero=False)
    assert no_zero.shape == (n,)
    torch.testing.assert_close(no_zero, sig[:-1], rtol=0, atol=0)


def test_karras_sigmas_known_values():
    # EDM default grid, hand values: σ_1 = (80^(1/7) − (80^(1/7) − 0.002^(1/7))/17)^7
    sig = karras_sigmas(18)
    a, b = 80 ** (1 / 7), 0.002 ** (1 / 7)
    assert float(sig[1]) == pytest.approx((a - (a - b) / 17) ** 7, rel=1e-12)
    assert float(sig[1]) == pytest.approx(57.5848, rel=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_steps=1),
        dict(num_steps=0),
        dict(sigma_min=0.0),
        dict(sigma_min=-1.0),
        dict(sigma_min=5.0, sigma_max=1.0),
        dict(sigma_min=1.0, sigma_max=1.0),
    ],
)
def test_karras_sigmas_bad_args(kwargs):
    with pytest.raises(ValueError):
        karras_sigmas(**kwargs)


@pytest.mark.parametrize("P_mean,P_std", [(-1.2, 1.2), (-0.4, 1.0), (0.3, 3.0)])
def test_sample_log_normal_sigma_moments(P_mean, P_std):
    g = torch.Generator().manual_seed(123)
    s = sample_log_normal_sigma(200_000, P_mean, P_std, generator=g, dtype=torch.float64)
    assert s.shape == (200_000,)
    assert (s > 0).all()
    ls = s.log()
    assert abs(float(ls.mean()) - P_mean) < 0.01 * max(1.0, P_std)
    assert abs(float(ls.std()) - P_std) < 0.01 * max(1.0, P_std)
    # reproducible from the generator
    s2 = sample_log_normal_sigma(
        200_000, P_mean, P_std, generator=torch.Generator().manual_seed(123), dtype=torch.float64
    )
    assert torch.equal(s, s2)


# ---------------------------------------------------------------- the log-ratio estimator


def _draw(B: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 2, generator=g) * 0.5
    sigma = torch.exp(torch.randn(B, generator=g) * 1.2 - 1.2)
    eps = torch.randn(B, 2, generator=g)
    return x, sigma, eps


def test_log_ratio_zero_when_target_is_reference():
    net = _net(2)
    x, sigma, eps = _draw(32)
    labels = torch.zeros(32, 0)
    same = diffusion_log_ratio(net, net, x, labels, sigma, eps)
    assert torch.equal(same.delta, torch.zeros_like(same.delta))
    copied = diffusion_log_ratio(net, copy.deepcopy(net), x, labels, sigma, eps)
    assert torch.equal(copied.delta, torch.zeros_like(copied.delta))
    assert (copied.err_target > 0).all()


def test_log_ratio_matches_hand_computation():
    reference = _net(3)
    target = copy.deepcopy(reference)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, sigma, eps = _draw(48, seed=1)
    labels = torch.zeros(48, 0)
    est = diffusion_log_ratio(target, reference, x, labels, sigma, eps)
    with torch.no_grad():
        err_t = _hand_error(target, x, sigma, eps)
        err_r = _hand_error(reference, x, sigma, eps)
    torch.testing.assert_close(est.err_target.double(), err_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(est.err_reference.double(), err_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(est.delta.double(), -(err_t - err_r), rtol=1e-4, atol=1e-4)
    assert (est.delta != 0).any()
    # gradient only through the target
    assert est.err_target.requires_grad
    assert est.delta.requires_grad
    assert not est.err_reference.requires_grad
    est.delta.sum().backward()
    assert all(p.grad is None for p in reference.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in target.parameters())


def test_log_ratio_rejects_sigma_data_mismatch():
    a = _net(0)
    b = EDMPrecond(copy.deepcopy(a.model), sigma_data=1.0)
    x, sigma, eps = _draw(4)
    with pytest.raises(ValueError, match="sigma_data"):
        diffusion_log_ratio(a, b, x, torch.zeros(4, 0), sigma, eps)


# ---------------------------------------------------------------- the DiffusionDDO objective


class Recorder(nn.Module):
    """A denoiser that forwards to ``inner`` and stores what it receives."""

    def __init__(self, inner: EDMPrecond):
        super().__init__()
        self.inner = inner
        self.sigma_data = inner.sigma_data
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x, sigma, labels):
        self.calls.append((x.detach().clone(), sigma.detach().clone(), labels.detach().clone()))
        return self.inner(x, sigma, labels)


def _paired(B: int, seed: int = 0) -> PairedBatch:
    g = torch.Generator().manual_seed(seed)
    real = Samples(0.5 + 0.1 * torch.randn(B, 2, generator=g), torch.zeros(B, 0))
    fake = Samples(-0.5 + 0.1 * torch.randn(B, 2, generator=g), torch.zeros(B, 0))
    return PairedBatch(real, fake)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0])
def test_objective_at_reference_is_one_plus_alpha_ln2(alpha):
    target = _net(4)
    reference = copy.deepcopy(target).requires_grad_(False)
    batch = _paired(16)
    out = DiffusionDDO(alpha=alpha, beta=0.05)(target, reference, batch, generator=torch.Generator().manual_seed(0))
    assert float(out.loss.detach()) == pytest.approx((1 + alpha) * math.log(2), abs=1e-6)
    torch.testing.assert_close(out.per_sample, torch.full((16,), (1 + alpha) * math.log(2)), rtol=0, atol=1e-6)
    for k in ("delta_real_mean", "delta_real_std", "delta_fake_mean", "delta_fake_std"):
        assert float(out.stats[k]) == 0.0, k
    assert out.loss.requires_grad


def test_objective_shares_sigma_and_noise():
    B = 8
    target = Recorder(_net(5))
    reference = Recorder(copy.deepcopy(target.inner).requires_grad_(False))
    batch = _paired(B, seed=2)
    P_mean, P_std = -0.4, 1.0
    gen_seed = 11
    DiffusionDDO(alpha=1.0, beta=0.1, P_mean=P_mean, P_std=P_std)(
        target, reference, batch, generator=torch.Generator().manual_seed(gen_seed)
    )
    assert len(target.calls) == 1 and len(reference.calls) == 1  # one 2B forward each
    (xt, st, lt), (xr, sr, lr) = target.calls[0], reference.calls[0]
    assert torch.equal(xt, xr) and torch.equal(st, sr) and torch.equal(lt, lr)
    assert xt.shape == (2 * B, 2) and st.shape == (2 * B,)
    assert torch.equal(st[:B], st[B:])
    assert len(set(st[:B].tolist())) == B  # one σ per pair, not one for the batch
    clean = torch.cat([batch.real.x, batch.fake.x])
    eps = (xt - clean) / st[:, None]
    torch.testing.assert_close(eps[:B], eps[B:], rtol=0, atol=1e-4)
    # the halves had different clean data, so equal ε is not trivially true
    assert (batch.real.x - batch.fake.x).abs().min() > 0.3
    # ε is standard-normal-ish and not zero
    assert eps.abs().max() > 0.1
    # ln σ ~ N(P_mean, P_std²): σ comes from the generator's first B normals, then ε (same generator)
    g = torch.Generator().manual_seed(gen_seed)
    n = torch.randn(B, generator=g)
    torch.testing.assert_close(st[:B], (n * P_std + P_mean).exp(), rtol=1e-6, atol=0)
    torch.testing.assert_close(eps[:B], torch.randn(B, 2, generator=g), rtol=0, atol=1e-4)


def test_objective_rejects_unequal_batches():
    target = _net(0)
    reference = copy.deepcopy(target)
    real = Samples(torch.zeros(5, 2), torch.zeros(5, 0))
    fake = Samples(torch.zeros(3, 2), torch.zeros(3, 0))
    with pytest.raises(ValueError) as info:
        DiffusionDDO()(target, reference, PairedBatch(real, fake))
    assert "5" in str(info.value) and "3" in str(info.value)


def test_one_sgd_step_moves_target_towards_real_and_away_from_fake():
    B = 256
    torch.manual_seed(0)
    target = EDMPrecond(ToyMLP(data_dim=2, hidden=64, depth=2), sigma_data=SD)
    reference = copy.deepcopy(target).requires_grad_(False)
    batch = _paired(B, seed=7)
    labels = torch.zeros(2 * B, 0)
    g = torch.Generator().manual_seed(99)
    sigma = torch.exp(torch.randn(B, generator=g) * 1.0 - 0.4)
    eps = torch.randn(B, 2, generator=g)

    def errors():
        with torch.no_grad():
            return (
                float(_hand_error(target, batch.real.x, sigma, eps).sum()),
                float(_hand_error(target, batch.fake.x, sigma, eps).sum()),
            )

    real_before, fake_before = errors()
    alpha, beta = 1.0, 1.0
    est = diffusion_log_ratio(
        target, reference, torch.cat([batch.real.x, batch.fake.x]), labels, sigma.repeat(2), eps.repeat(2, 1)
    )
    loss = ddo_loss(est.delta[:B], est.delta[B:], alpha, beta).loss.mean()
    assert float(loss.detach()) == pytest.approx(2 * math.log(2), abs=1e-6)  # θ = θ_ref
    opt = torch.optim.SGD(target.parameters(), lr=1e-3)
    opt.zero_grad()
    loss.backward()
    opt.step()
    real_after, fake_after = errors()
    assert real_after < real_before
    assert fake_after > fake_before
    # the reference did not move
    with torch.no_grad():
        assert float(_hand_error(reference, batch.real.x, sigma, eps).sum()) == pytest.approx(real_before, rel=1e-6)
