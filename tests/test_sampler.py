"""EDM Heun sampler on an analytic Gaussian-mixture denoiser, seeded noise and NFE accounting."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from ddo_lightning.data import GaussianMixture
from ddo_lightning.samplers import HeunSampler, heun_sampler, mix_seed, seeded_normal
from ddo_lightning.schedules import karras_sigmas

# 3 modes on a triangle with side 1.5, unequal weights, std 0.15
MEANS = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.75, 1.5 * math.sqrt(3) / 2]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
STD = 0.15
N = 20_000


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return GaussianMixture(MEANS, STD, WEIGHTS)


def _mode_stats(x: torch.Tensor):
    x = x.double()
    k = torch.cdist(x, MEANS).argmin(dim=1)
    weights = torch.stack([(k == j).double().mean() for j in range(3)])
    means = torch.stack([x[k == j].mean(dim=0) for j in range(3)])
    stds = torch.stack([x[k == j].std(dim=0) for j in range(3)])  # per coordinate
    return weights, means, stds


def _check_mixture_samples(x: torch.Tensor):
    assert x.shape == (N, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    w, m, s = _mode_stats(x)
    assert (w - WEIGHTS).abs().max() < 0.02, w
    assert (m - MEANS).abs().max() < 0.02, m
    assert ((s - STD).abs() / STD).max() < 0.10, s


# ---------------------------------------------------------------- the exact denoiser itself


def test_single_component_denoiser_closed_form():
    mu = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    s = 0.4
    gm = GaussianMixture(mu, s)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 2, generator=g, dtype=torch.float64) * 2
    sigma = torch.exp(torch.randn(50, generator=g, dtype=torch.float64))
    out = gm(x, sigma, None)
    expected = mu + (s**2 / (s**2 + sigma**2))[:, None] * (x - mu)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)
    # scalar σ broadcasts to the batch
    out_scalar = gm(x, torch.tensor(0.7), None)
    torch.testing.assert_close(out_scalar.double(), mu + s**2 / (s**2 + 0.49) * (x - mu), rtol=1e-6, atol=1e-6)


def test_two_component_denoiser_vs_quadrature():
    means = torch.tensor([[-1.0], [0.8]], dtype=torch.float64)
    w = torch.tensor([0.7, 0.3], dtype=torch.float64)
    s = 0.3
    gm = GaussianMixture(means, s, w)
    # dense grid over x0 for the posterior mean E[x0 | x0 + σn = x]
    grid = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    prior = w[0] * torch.exp(-0.5 * ((grid + 1.0) / s) ** 2) + w[1] * torch.exp(-0.5 * ((grid - 0.8) / s) ** 2)
    xs = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.2, 0.5, 1.5, 3.0], dtype=torch.float64)
    for sigma in (0.05, 0.4, 1.0, 3.0):
        sig = torch.full((len(xs),), sigma, dtype=torch.float64)
        out = gm(xs[:, None], sig, None)[:, 0].double()
        for i, x in enumerate(xs.tolist()):
            lik = torch.exp(-0.5 * ((x - grid) / sigma) ** 2)
            post = prior * lik
            ref = float((grid * post).sum() / post.sum())
            assert float(out[i]) == pytest.approx(ref, abs=2e-5), (x, sigma)


def test_mixture_exposes_sigma_data(mixture):
    # E over modes of the per-coordinate variance + s²: independent computation
    mean = (WEIGHTS[:, None] * MEANS).sum(0)
    var = float((WEIGHTS * ((MEANS - mean) ** 2).mean(1)).sum()) + STD**2
    assert mixture.sigma_data == pytest.approx(math.sqrt(var), rel=1e-12)


# ---------------------------------------------------------------- the sampler


def _reference_heun(noise: torch.Tensor, num_steps: int, sigma_min=0.002, sigma_max=80.0, rho=7.0) -> torch.Tensor:
    """EDM Algorithm 1 (deterministic Heun) written out independently, float64 throughout, with an
    independent float64 mixture denoiser."""
    t = [
        (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        for i in range(num_steps)
    ] + [0.0]

    def den(x, s):
        var = STD**2 + s**2
        d2 = ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)
        resp = torch.softmax(WEIGHTS.log()[None] - 0.5 * d2 / var, dim=1)
        per_comp = MEANS[None] + (STD**2 / var) * (x[:, None, :] - MEANS[None])
        return (resp[..., None] * per_comp).sum(1)

    x = noise.double() * t[0]
    for i in range(num_steps):
        d = (x - den(x, t[i])) / t[i]
        x_next = x + (t[i + 1] - t[i]) * d
        if t[i + 1] > 0:
            d2 = (x_next - den(x_next, t[i + 1])) / t[i + 1]
            x_next = x + (t[i + 1] - t[i]) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def test_heun_18_steps_matches_independent_heun(mixture):
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    x = HeunSampler(num_steps=18)(mixture, noise, torch.zeros(N, 0))
    assert x.shape == (N, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # the pure function with the same grid gives the same samples
    assert torch.equal(x, heun_sampler(mixture, noise, torch.zeros(N, 0), karras_sigmas(18)))
    # an independent float64 Heun (Algorithm 1) on an independent denoiser: same trajectories up to the
    # float32 casts of the network input/output
    ref = _reference_heun(noise, 18)
    assert (x.double() - ref).abs().max() < 1e-3
    # 18 steps already get the mode weights and widths right; the per-mode means carry a ~0.02
    # discretisation bias at 18 steps on modes this sharp (the reference Heun has it too), so the
    # tight mean check is done at 32 steps below
    w, m, s = _mode_stats(x)
    assert (w - WEIGHTS).abs().max() < 0.02, w
    assert (m - MEANS).abs().max() < 0.04, m
    assert ((s - STD).abs() / STD).max() < 0.10, s


def test_heun_deterministic_matches_mixture(mixture):
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(1))
    x = HeunSampler(num_steps=32)(mixture, noise, torch.zeros(N, 0))
    _check_mixture_samples(x)


def test_heun_with_churn_reproducible_and_correct(mixture):
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(2))
    sampler = HeunSampler(num_steps=32, S_churn=10.0, S_min=0.01, S_max=10.0)
    x1 = sampler(mixture, noise, torch.zeros(N, 0), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1234)  # the global RNG must not matter
    x2 = sampler(mixture, noise, torch.zeros(N, 0), generator=torch.Generator().manual_seed(5))
    assert torch.equal(x1, x2)
    small = noise[:500]
    x3 = sampler(mixture, small, torch.zeros(500, 0), generator=torch.Generator().manual_seed(6))
    x4 = sampler(mixture, small, torch.zeros(500, 0), generator=torch.Generator().manual_seed(7))
    assert not torch.equal(x3, x4)  # churn noise really enters
    _check_mixture_samples(x1)


def test_same_noise_same_samples_regardless_of_global_rng(mixture):
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(2))
    sampler = HeunSampler(num_steps=10)
    torch.manual_seed(0)
    a = sampler(mixture, noise, torch.zeros(500, 0))
    torch.manual_seed(99)
    torch.randn(10)
    b = sampler(mixture, noise, torch.zeros(500, 0))
    assert torch.equal(a, b)
    c = sampler(mixture, noise + 0.1, torch.zeros(500, 0))
    assert not torch.equal(a, c)


def test_nfe_counts_denoiser_calls(mixture):
    calls = []

    class Counting:
        sigma_data = mixture.sigma_data

        def __call__(self, x, sigma, labels):
            calls.append(float(sigma[0]))
            return mixture(x, sigma, labels)

    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    sampler = HeunSampler(num_steps=18)
    sampler(Counting(), noise, torch.zeros(4, 0))
    assert len(calls) == 35 == sampler.nfe
    calls.clear()
    heun_sampler(Counting(), noise, torch.zeros(4, 0), karras_sigmas(5))
    assert len(calls) == 9
    # the network never sees σ = 0 and sees σ_max first
    assert min(calls) > 0
    assert calls[0] == pytest.approx(80.0, rel=1e-6)


def test_heun_single_step_is_euler_to_denoised():
    # with one step σ_max → 0 the Euler update lands exactly on D(x; σ_max)
    gm = GaussianMixture(torch.tensor([[1.0, -2.0]]), 0.3)
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    sig = torch.tensor([2.0, 0.0], dtype=torch.float64)
    out = heun_sampler(gm, noise, torch.zeros(16, 0), sig)
    x = noise * 2.0
    expected = torch.tensor([1.0, -2.0]) + 0.09 / (0.09 + 4.0) * (x - torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- seeded noise


def test_seeded_normal_rows_depend_on_own_seed_only():
    s1, s2 = 17, 123456789
    both = seeded_normal([s1, s2], (3, 2))
    alone = seeded_normal([s2], (3, 2))
    assert both.shape == (2, 3, 2)
    assert torch.equal(both[1], alone[0])
    assert torch.equal(seeded_normal(torch.tensor([s2, s1]), (3, 2))[0], both[1])
    # independently: a CPU generator seeded with s gives the row
    assert torch.equal(both[0], torch.randn((3, 2), generator=torch.Generator().manual_seed(s1)))
    assert not torch.equal(both[0], both[1])
    assert seeded_normal([], (3, 2)).shape == (0, 3, 2)


def test_mix_seed_stable():
    a = mix_seed(0, 1, 2)
    assert a == mix_seed(0, 1, 2)
    assert 0 <= a < 2**63
    values = {
        mix_seed(0, 1, 2),
        mix_seed(0, 2, 1),
        mix_seed(1, 1, 2),
        mix_seed(0, 1, 3),
        mix_seed(1, 23),
        mix_seed(12, 3),
    }
    assert len(values) == 6
    # stable across processes with different hash randomisation
    code = "from ddo_lightning.samplers.noise import mix_seed; print(mix_seed(0, 1, 2), mix_seed(7, 3))"
    outs = set()
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.add(res.stdout.strip())
    assert outs == {f"{a} {mix_seed(7, 3)}"}


def test_compile_option_compiles_each_network_once_and_keeps_the_samples(mixture, monkeypatch):
    """HeunSampler(compile=True) goes through torch.compile once per network object and samples the
    same as eager mode (here the 'compiler' is an instrumented pass-through: a real CPU compilation
    takes ~30 s; its speed is measured by `make bench`, benchmarks/compile.py)."""
    calls = []

    def fake_compile(model, *args, **kwargs):
        calls.append(model)
        return lambda *a, **k: model(*a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)
    noise = seeded_normal(torch.arange(64), (2,))
    labels = torch.zeros(64, 0)
    eager = HeunSampler(num_steps=6)(mixture, noise, labels)
    sampler = HeunSampler(num_steps=6, compile=True)
    first = sampler(mixture, noise, labels)
    second = sampler(mixture, noise, labels)
    assert calls == [mixture]  # compiled once, reused
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert sampler.with_steps(4).compile


# ---- imported VP/VE/iDDPM networks: the grid of EDM's generator ----------------------------------------
class _ZeroRaw(torch.nn.Module):
    """A raw network F = 0 with ``mult``·C output channels (iDDPM: 2, it keeps the first C)."""

    def __init__(self, mult: int = 1):
        super().__init__()
        self.mult = mult

    def forward(self, x, noise_labels, class_labels):
        return torch.zeros(x.shape[0], self.mult * x.shape[1], *x.shape[2:])


def edm_generator_grid(num_steps, sigma_min, sigma_max, rho, net_min, net_max, levels=None):
    """EDM's ``edm_sampler`` time steps, written out independently in numpy float64: clamp the range to
    the network's, the Karras ρ-grid, each point moved to the nearest supported level (iDDPM: the table u;
    others: unchanged), then a final 0."""
    import numpy as np

    lo, hi = max(sigma_min, net_min), min(sigma_max, net_max)
    i = np.arange(num_steps, dtype=np.float64)
    t = (hi ** (1 / rho) + i / (num_steps - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    if levels is not None:
        u = np.asarray(levels, dtype=np.float64)
        t = u[np.abs(t[:, None] - u[None, :]).argmin(axis=1)]
    return np.concatenate([t, [0.0]])


def visited_sigmas(net, sampler, steps) -> list[float]:
    seen: list[float] = []
    hook = net.register_forward_pre_hook(lambda m, args: seen.append(float(args[1][0])))
    try:
        sampler(net, torch.randn(2, 3, 4, 4), torch.zeros(2, 0))
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("kind", ["iddpm", "vp", "ve", "vp-wide"])
def test_heun_follows_the_networks_range_and_rounding_like_edms_generator(kind):
    """HeunSampler on an imported VP/VE/iDDPM network visits EDM's generator's σ: the Karras grid between
    max(sigma_min, net.sigma_min) and min(sigma_max, net.sigma_max), through net.round_sigma."""
    import numpy as np

    from ddo_lightning.networks import VEPrecond, VPPrecond, iDDPMPrecond

    steps = 18
    net = {
        "iddpm": lambda: iDDPMPrecond(_ZeroRaw(2)),
        "ve": lambda: VEPrecond(_ZeroRaw()),
        "vp": lambda: VPPrecond(_ZeroRaw()),
        "vp-wide": lambda: VPPrecond(_ZeroRaw()),
    }[kind]()
    # vp-wide: a sampler range wider than VP's own [σ(1e-5), σ(1)] ≈ [0.001, 152] on both ends
    lo, hi = (1e-4, 500.0) if kind == "vp-wide" else (0.002, 80.0)
    sampler = HeunSampler(num_steps=steps, sigma_min=lo, sigma_max=hi)
    if kind.startswith("vp"):  # VP's range in closed form: σ(t) = √(exp(½β_d t² + β_min t) − 1)
        net_min, net_max = (
            math.sqrt(math.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5)),
            math.sqrt(math.expm1(0.5 * 19.9 + 0.1)),
        )
    elif kind == "ve":
        net_min, net_max = 0.02, 100.0
    else:
        net_min, net_max = float(net.u[-2]), float(net.u[0])
    levels = net.u.numpy() if kind == "iddpm" else None
    want = edm_generator_grid(steps, lo, hi, 7.0, net_min, net_max, levels)
    got = visited_sigmas(net, sampler, steps)
    # Heun visits t_0, t_1, t_1, t_2, ..., t_{N-1} (each later point twice: correction, then next Euler)
    assert len(got) == 2 * steps - 1
    assert np.allclose(got[0::2], want[:steps], rtol=1e-6, atol=0) and np.allclose(
        got[1::2], want[1:steps], rtol=1e-6, atol=0
    )
    plain = karras_sigmas(steps, lo, hi, 7.0).numpy()
    if kind == "vp":  # VP's own range contains EDM's default one: the grid is EDM's unchanged
        assert np.array_equal(sampler.sigmas_for(net).numpy(), plain)
    else:  # the clamp or the rounding moved the grid, and the sampler followed
        assert not np.allclose(want, plain, rtol=1e-3)
    if kind == "iddpm":  # every visited σ is one of the network's levels (float32 values, exactly)
        assert set(got) <= {float(v) for v in net.u} and len(set(got)) > steps // 2


def test_edm_networks_keep_the_configured_grid():
    """EDMPrecond (range 0..∞, identity rounding) and networks without the attributes: the grid as configured."""
    from ddo_lightning.networks import EDMPrecond, ToyMLP

    sampler = HeunSampler(num_steps=7)
    assert torch.equal(sampler.sigmas_for(EDMPrecond(ToyMLP())), sampler.sigmas)
    assert torch.equal(sampler.sigmas_for(torch.nn.Identity()), sampler.sigmas)


def test_churn_step_is_rounded_like_edms_generator():
    """With churn, EDM's generator rounds the raised level t̂ = t(1+γ) too: an iDDPM network sees only its levels."""
    from ddo_lightning.networks import iDDPMPrecond

    net = iDDPMPrecond(_ZeroRaw(2))
    seen = visited_sigmas(net, HeunSampler(num_steps=10, S_churn=40.0), 10)
    levels = {float(v) for v in net.u}
    assert len(seen) == 19 and set(seen) <= levels


def test_sampler_range_outside_the_network_s_is_refused():
    from ddo_lightning.networks import VEPrecond

    with pytest.raises(ValueError, match=r"\[0.001, 0.01\].*VEPrecond \[0.02, 100\] do not overlap"):
        HeunSampler(num_steps=5, sigma_min=0.001, sigma_max=0.01).sigmas_for(VEPrecond(_ZeroRaw()))


# ---- one contract for every sampler --------------------------------------------------------------------
def _recording_script():
    """scripts/record_sampler_outputs.py: the tiny networks and the draws it recorded."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "record_sampler_outputs.py"
    spec = importlib.util.spec_from_file_location("record_sampler_outputs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_samplers_reproduce_the_recorded_outputs(one_thread):
    """tests/data/sampler_outputs.pt was written by the samplers before their contract was unified: the
    same seeds must give the same samples. Uniforms and tokens are compared exactly (integers, and uniforms
    made from the generator's integers); normal noise and diffusion samples to float32 rounding, which may
    differ between CPUs' vectorised math (on the recording machine they are bit-identical)."""
    from pathlib import Path

    recorded = torch.load(Path(__file__).parent / "data" / "sampler_outputs.pt", weights_only=True)
    script = _recording_script()
    assert recorded["seeds"] == script.SEEDS
    now = script.outputs()
    assert set(now) == set(recorded["outputs"])
    for name, want in recorded["outputs"].items():
        got = now[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if name in ("uniform", "gpt", "gpt_filtered", "var", "var_filtered"):
            assert torch.equal(got, want), name
        else:  # |x| ≲ 4; a few float32 ulps through 9 network evaluations
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


def test_every_sampler_is_called_the_same_way():
    """sampler(net, sampler.noise(seeds, shape), labels) is what from_seeds returns, for both samplers; the
    noise rows are the seeded draws (normal for diffusion, float64 uniforms for tokens)."""
    from ddo_lightning.networks import EDMPrecond, TokenGPT, ToyMLP
    from ddo_lightning.samplers import Sampler, TokenSampler, seeded_uniform

    torch.manual_seed(0)
    cases = [
        (HeunSampler(num_steps=3), EDMPrecond(ToyMLP(data_dim=2, hidden=8, depth=1, label_dim=2)), (2,)),
        (TokenSampler(), TokenGPT(vocab_size=5, length=4, label_dim=2, d_model=8, n_layer=1, n_head=1).eval(), (4,)),
    ]
    seeds, labels = [4, 9, 4], torch.eye(2)[[0, 1, 1]]
    for sampler, net, shape in cases:
        assert isinstance(sampler, Sampler)
        noise = sampler.noise(seeds, shape)
        assert noise.shape == (3, *shape)
        assert torch.equal(
            sampler.from_seeds(net, torch.tensor(seeds), labels, shape, "cpu"), sampler(net, noise, labels)
        )
    gen = torch.Generator().manual_seed(9)
    assert torch.equal(TokenSampler().noise([4, 9], (4,))[1], torch.rand(4, generator=gen, dtype=torch.float64))
    gen.manual_seed(9)
    assert torch.equal(HeunSampler().noise([4, 9], (2,))[1], torch.randn(2, generator=gen))
    assert torch.equal(seeded_uniform([9], 4)[0], TokenSampler().noise([4, 9], (4,))[1])
    with pytest.raises(ValueError, match="sequences"):
        TokenSampler().noise([1], (1, 8, 8))
    with pytest.raises(ValueError, match="no step count"):
        TokenSampler().with_steps(3)


def test_inverse_cdf_draws_the_first_index_past_u():
    """Exact: index i is drawn for u·total in [cdf[i−1], cdf[i]); zero-probability indices are never drawn;
    rows need not be normalised."""
    from ddo_lightning.samplers import inverse_cdf

    probs = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    u = torch.tensor([0.0, 0.2, 0.25, 0.49, 0.5, 0.75, 0.999999], dtype=torch.float64)
    assert inverse_cdf(probs.expand(7, 3), u).tolist() == [0, 0, 1, 1, 2, 2, 2]
    gaps = torch.tensor([[0.0, 2.0, 0.0, 2.0]], dtype=torch.float64).expand(3, 4)
    assert inverse_cdf(gaps, torch.tensor([0.0, 0.5, 0.99], dtype=torch.float64)).tolist() == [1, 3, 3]


def test_churn_samples_from_seeds_depend_on_their_seed_only(mixture):
    """With S_churn > 0 the churn noise is per sample too: the same seed gives the same sample whatever the
    batch and torch's global generator; another seed another sample; without churn nothing changes."""
    churn = HeunSampler(num_steps=8, S_churn=20.0, S_min=0.01, S_max=10.0)
    seeds, labels = torch.tensor([3, 8, 5, 11]), torch.zeros(4, 0)
    torch.manual_seed(0)
    whole = churn.from_seeds(mixture, seeds, labels, (2,), "cpu")
    torch.manual_seed(1)
    parts = torch.cat([churn.from_seeds(mixture, seeds[i : i + 2], labels[:2], (2,), "cpu") for i in (0, 2)])
    assert torch.equal(whole, parts)
    plain = HeunSampler(num_steps=8)
    noise = seeded_normal(seeds, (2,))
    assert not torch.allclose(whole, plain(mixture, noise, labels))  # the churn steps did something
    assert torch.equal(plain.from_seeds(mixture, seeds, labels, (2,), "cpu"), plain(mixture, noise, labels))
    gens = [torch.Generator().manual_seed(mix_seed(int(s), 1)) for s in seeds]
    assert torch.equal(whole, churn(mixture, noise, labels, generator=gens))
    with pytest.raises(ValueError, match="churn generators"):
        churn(mixture, noise, labels, generator=gens[:3])
