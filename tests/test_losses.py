"""DDO loss (losses.py) against exact maths: the tabular optimum of Thm 3.1/3.3, the value and gradient
in closed form, hand-computed diagnostics and argument validation."""

from __future__ import annotations

import math

import pytest
import torch

from ddo_lightning.losses import ddo_loss
from ddo_lightning.objectives import DiffusionDDO

# A fixed 6-outcome problem: p_data and p_ref strictly positive and clearly different.
P_DATA = torch.tensor([0.30, 0.05, 0.20, 0.10, 0.25, 0.10], dtype=torch.float64)
P_REF = torch.tensor([0.15, 0.15, 0.15, 0.20, 0.15, 0.20], dtype=torch.float64)


def _expected_loss(logits: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Exact L(θ) = Σ_x p_data(x)·real_term(r(x)) + α·Σ_x p_ref(x)·fake_term(r(x))."""
    r = torch.log_softmax(logits, dim=0) - P_REF.log()
    out = ddo_loss(delta_real=r, delta_fake=r, alpha=alpha, beta=beta)
    return (P_DATA * out.real_term).sum() + alpha * (P_REF * out.fake_term).sum()


def _minimise(alpha: float, beta: float) -> torch.Tensor:
    logits = P_REF.log().clone().requires_grad_(True)  # θ initialised at θ_ref
    opt = torch.optim.LBFGS(
        [logits],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = _expected_loss(logits, alpha, beta)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return torch.softmax(logits.detach(), dim=0)


def test_tabular_optimum_alpha_beta_one_is_p_data():
    p_opt = _minimise(alpha=1.0, beta=1.0)
    assert (p_opt - P_DATA).abs().max() < 1e-3
    # and the start (p_ref) was far from it, so the optimiser really moved
    assert (P_REF - P_DATA).abs().max() > 0.1


@pytest.mark.parametrize("beta", [0.5, 0.25])
def test_tabular_optimum_sharpened(beta):
    unnorm = P_REF ** (1 - 1 / beta) * P_DATA ** (1 / beta)
    Z = float(unnorm.sum())
    alpha = Z**beta
    target = unnorm / Z
    p_opt = _minimise(alpha=alpha, beta=beta)
    assert (p_opt - target).abs().max() < 1e-3
    # the sharpened optimum differs from p_data (overshoot past the data), so the test is discriminating
    assert (target - P_DATA).abs().max() > 0.02


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 4.0, 50.0])
@pytest.mark.parametrize("beta", [0.05, 1.0])
def test_loss_at_zero_ratio_is_one_plus_alpha_ln2(alpha, beta):
    z = torch.zeros(7, dtype=torch.float64)
    out = ddo_loss(z, z.clone(), alpha, beta)
    expected = (1 + alpha) * math.log(2)
    assert torch.allclose(out.loss, torch.full_like(out.loss, expected), rtol=0, atol=1e-12)
    assert torch.allclose(out.real_term, torch.full_like(z, math.log(2)), rtol=0, atol=1e-15)
    assert torch.allclose(out.fake_term, torch.full_like(z, math.log(2)), rtol=0, atol=1e-15)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (4.0, 0.05), (0.5, 0.3)])
def test_value_and_gradient_match_closed_form(alpha, beta):
    g = torch.Generator().manual_seed(0)
    dr = (3 * torch.randn(32, generator=g, dtype=torch.float64)).requires_grad_(True)
    df = (3 * torch.randn(32, generator=g, dtype=torch.float64)).requires_grad_(True)
    out = ddo_loss(dr, df, alpha, beta)
    out.loss.sum().backward()

    def sig(v):
        return 1 / (1 + math.exp(-v))

    for i in range(32):
        a, b = float(dr[i].detach()), float(df[i].detach())
        # value: −log σ(βa) − α log σ(−βb), computed with python floats
        val = -math.log(sig(beta * a)) - alpha * math.log(sig(-beta * b))
        assert math.isclose(float(out.loss[i].detach()), val, rel_tol=1e-12, abs_tol=1e-12)
        # gradient: −β(1−σ(βr)) on real, +αβσ(βr) on fake
        assert math.isclose(float(dr.grad[i]), -beta * (1 - sig(beta * a)), rel_tol=1e-10, abs_tol=1e-14)
        assert math.isclose(float(df.grad[i]), alpha * beta * sig(beta * b), rel_tol=1e-10, abs_tol=1e-14)


def test_per_sample_alpha_and_zero_alpha_removes_fake():
    dr = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    df = torch.tensor([1.5, 0.2, -0.7], dtype=torch.float64)
    alpha = torch.tensor([0.0, 2.0, 5.0], dtype=torch.float64)
    out = ddo_loss(dr, df, alpha, 0.5)
    for i in range(3):
        real = math.log1p(math.exp(-0.5 * float(dr[i])))
        fake = math.log1p(math.exp(0.5 * float(df[i])))
        assert math.isclose(float(out.loss[i]), real + float(alpha[i]) * fake, rel_tol=1e-12)
    assert math.isclose(float(out.loss[0]), float(out.real_term[0]), rel_tol=0, abs_tol=0)


def test_large_ratios_are_stable():
    d = torch.tensor([-1e4, 1e4], dtype=torch.float64)
    out = ddo_loss(d, -d, 1.0, 1.0)  # real: −1e4 (wrong side), +1e4 (right); fake: +1e4 (wrong), −1e4 (right)
    assert torch.isfinite(out.loss).all()
    # −log σ(−1e4) = 1e4 (+ e^-1e4), −log σ(1e4) = 0
    assert torch.allclose(out.real_term, torch.tensor([1e4, 0.0], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert torch.allclose(out.fake_term, torch.tensor([1e4, 0.0], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert torch.allclose(out.loss, torch.tensor([2e4, 0.0], dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_stats_hand_computed():
    dr = torch.tensor([1.0, -1.0, 2.0, 0.5])  # 3 of 4 right (>0)
    df = torch.tensor([-1.0, -2.0, 3.0, 0.0])  # 2 of 4 right (<0; 0 is not < 0)
    s = ddo_loss(dr, df, 2.0, 1.0).stats()
    assert float(s["disc_acc_real"]) == pytest.approx(0.75, abs=1e-7)
    assert float(s["disc_acc_fake"]) == pytest.approx(0.5, abs=1e-7)
    assert float(s["disc_acc"]) == pytest.approx(0.625, abs=1e-7)
    assert float(s["delta_real_mean"]) == pytest.approx(0.625, abs=1e-6)
    # population std of [1, -1, 2, 0.5]: mean 0.625, squared deviations sum 4.6875 → var 1.171875
    assert float(s["delta_real_std"]) == pytest.approx(math.sqrt(1.171875), abs=1e-6)
    assert float(s["delta_fake_mean"]) == pytest.approx(0.0, abs=1e-7)
    assert float(s["delta_fake_std"]) == pytest.approx(math.sqrt(14 / 4), abs=1e-6)
    loss_real = sum(math.log1p(math.exp(-v)) for v in [1.0, -1.0, 2.0, 0.5]) / 4
    loss_fake = sum(math.log1p(math.exp(v)) for v in [-1.0, -2.0, 3.0, 0.0]) / 4
    assert float(s["loss_real"]) == pytest.approx(loss_real, abs=1e-6)
    assert float(s["loss_fake"]) == pytest.approx(loss_fake, abs=1e-6)
    assert float(s["loss"]) == pytest.approx(loss_real + 2.0 * loss_fake, abs=1e-5)
    for v in s.values():
        assert not v.requires_grad


@pytest.mark.parametrize(
    "alpha,beta,exc,name",
    [
        (-0.1, 1.0, ValueError, "alpha"),
        (float("nan"), 1.0, ValueError, "alpha"),
        (float("inf"), 1.0, ValueError, "alpha"),
        (True, 1.0, TypeError, "alpha"),
        ("1", 1.0, TypeError, "alpha"),
        (1.0, 0.0, ValueError, "beta"),
        (1.0, -0.5, ValueError, "beta"),
        (1.0, float("nan"), ValueError, "beta"),
        (1.0, float("inf"), ValueError, "beta"),
        (1.0, False, TypeError, "beta"),
    ],
)
def test_invalid_alpha_beta(alpha, beta, exc, name):
    z = torch.zeros(3)
    with pytest.raises(exc, match=name):
        ddo_loss(z, z, alpha, beta)
    with pytest.raises(exc, match=name):
        DiffusionDDO(alpha=alpha, beta=beta)


def test_invalid_per_sample_alpha():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="alpha"):
        ddo_loss(z, z, torch.tensor([1.0, -1.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="alpha"):
        ddo_loss(z, z, torch.tensor([1.0, float("nan"), 1.0]), 1.0)
    with pytest.raises(ValueError, match="beta"):
        ddo_loss(z, z, torch.ones(3), 0.0)


def test_diffusion_ddo_rejects_negative_alpha():
    with pytest.raises(ValueError, match="alpha"):
        DiffusionDDO(alpha=-1)
    DiffusionDDO(alpha=0, beta=1)  # the boundary α = 0 is allowed (α ≥ 0)


@pytest.mark.parametrize("shape_r,shape_f", [((4,), (5,)), ((4,), (4, 1)), ((2, 3), (3, 2))])
def test_mismatched_shapes(shape_r, shape_f):
    with pytest.raises(ValueError, match="pair"):
        ddo_loss(torch.zeros(shape_r), torch.zeros(shape_f), 1.0, 1.0)
