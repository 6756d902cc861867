"""EDM image networks (networks/edm_unets.py, precond.py, edm_factory.py).

Reference data under tests/data/ are made by scripts/make_edm_fixtures.py, which runs NVlabs/edm's own
``training/networks.py`` (commit 008a4e5316c8e3bfe61a62f874bddba254295afb, imported from a checkout outside
this repository) with the configurations, weights and inputs below (``edm_reference.json``'s ``"source"``):
``python scripts/make_edm_fixtures.py --upstream /path/to/edm``. They hold facts only: state_dict names
and shapes, parameter counts, per-tensor statistics of the seeded initialisation, and outputs/gradients
for deterministic weights and inputs.
"""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch
from torch import nn

from ddo_lightning.networks import (
    DhariwalUNet,
    EDMPrecond,
    SongUNet,
    VEPrecond,
    VPPrecond,
    build_edm_network,
    iDDPMPrecond,
)
from ddo_lightning.networks.edm_unets import Conv2d
from ddo_lightning.training.base import disable_dropout

DATA = pathlib.Path(__file__).parent / "data"

# The two SongUNet variants of EDM's train.py (--arch=ddpmpp, --arch=ncsnpp), without their widths.
DDPMPP_BLOCKS = dict(
    model_type="SongUNet",
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    channel_mult_noise=1,
    resample_filter=[1, 1],
)
NCSNPP_BLOCKS = dict(
    DDPMPP_BLOCKS, embedding_type="fourier", encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]
)
DDPMPP = dict(DDPMPP_BLOCKS, model_channels=128, channel_mult=[2, 2, 2])
NCSNPP = dict(NCSNPP_BLOCKS, model_channels=128, channel_mult=[2, 2, 2])
CIFAR = dict(img_resolution=32, img_channels=3, augment_dim=9, dropout=0.13, use_fp16=False)
SMALL = dict(img_resolution=16, img_channels=3)  # the small test networks' images
ADM = dict(model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2])

# Configurations whose state_dict names/shapes (and parameter counts) were dumped from EDM's code.
KEY_CONFIGS: dict[str, tuple[str, dict]] = {
    "ddpmpp_cifar_uncond": ("EDMPrecond", dict(CIFAR, label_dim=0, **DDPMPP)),
    "ddpmpp_cifar_cond": ("EDMPrecond", dict(CIFAR, label_dim=10, **DDPMPP)),
    "ncsnpp_cifar_cond": ("EDMPrecond", dict(CIFAR, label_dim=10, **NCSNPP)),
    "ncsnpp_skip_small": (
        "VEPrecond",
        dict(
            SMALL,
            label_dim=0,
            **dict(NCSNPP_BLOCKS, encoder_type="skip", decoder_type="skip"),
            model_channels=32,
            channel_mult=[1, 2, 2],
            num_blocks=2,
            attn_resolutions=[8],
        ),
    ),
    "adm_imagenet64_cond": (
        "EDMPrecond",
        dict(
            img_resolution=64,
            img_channels=3,
            label_dim=1000,
            **dict(ADM, model_channels=192, channel_mult=[1, 2, 3, 4]),
            dropout=0.1,
            use_fp16=True,
        ),
    ),
    "adm_small_iddpm": (
        "iDDPMPrecond",
        dict(img_resolution=32, img_channels=3, label_dim=0, **ADM, num_blocks=2, attn_resolutions=[16], augment_dim=9),
    ),
    "ddpmpp_small_vp": (
        "VPPrecond",
        dict(SMALL, label_dim=4, model_type="SongUNet", model_channels=32, channel_mult=[1, 2], num_blocks=1),
    ),
}

# Small configurations whose outputs for deterministic weights/inputs were dumped from EDM's code.
PARITY_CONFIGS: dict[str, tuple[str, dict]] = {
    "ddpmpp": (
        "EDMPrecond",
        dict(
            SMALL,
            label_dim=4,
            augment_dim=9,
            **DDPMPP_BLOCKS,
            model_channels=16,
            channel_mult=[1, 2],
            num_blocks=1,
            attn_resolutions=[8],
        ),
    ),
    "ncsnpp": (
        "VEPrecond",
        dict(
            SMALL,
            label_dim=0,
            **NCSNPP_BLOCKS,
            model_channels=16,
            channel_mult=[1, 2, 2],
            num_blocks=1,
            attn_resolutions=[8],
        ),
    ),
    "skip": (
        "VPPrecond",
        dict(
            SMALL,
            label_dim=4,
            **dict(DDPMPP_BLOCKS, encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1]),
            model_channels=16,
            channel_mult=[1, 2, 2],
            num_blocks=1,
            attn_resolutions=[4],
        ),
    ),
    "adm": ("EDMPrecond", dict(SMALL, label_dim=4, augment_dim=9, **ADM, num_blocks=1, attn_resolutions=[16, 8])),
    "adm_iddpm": ("iDDPMPrecond", dict(SMALL, label_dim=0, **ADM, num_blocks=1, attn_resolutions=[8])),
}

# Single Conv2d layers (resampling paths, including the fused up path EDM's U-Nets never use).
F4, F2 = [1, 3, 3, 1], [1, 1]
CONV_CONFIGS: dict[str, dict] = {
    "up_fused_k3_f4": dict(in_channels=4, out_channels=6, kernel=3, up=True, fused_resample=True, resample_filter=F4),
    "down_fused_k3_f4": dict(
        in_channels=4, out_channels=6, kernel=3, down=True, fused_resample=True, resample_filter=F4
    ),
    "up_k3_f2": dict(in_channels=4, out_channels=6, kernel=3, up=True, resample_filter=F2),
    "down_k1_f4": dict(in_channels=4, out_channels=6, kernel=1, down=True, resample_filter=F4),
    "up_k0_f4": dict(in_channels=4, out_channels=4, kernel=0, up=True, resample_filter=F4),
    "down_k0_f2": dict(in_channels=4, out_channels=4, kernel=0, down=True, resample_filter=F2),
    "up_fused_k1_f2": dict(in_channels=4, out_channels=6, kernel=1, up=True, fused_resample=True, resample_filter=F2),
}


# ---------------------------------------------------------------------------------------------------
# Deterministic weights and inputs (no RNG: the same numbers on every machine and torch version)


def pattern(n: int, salt: int) -> torch.Tensor:
    """n numbers, roughly uniform in [−0.5, 0.5), from integer hashing."""
    idx = torch.arange(n, dtype=torch.int64)
    return ((idx * 2654435761 + 40503 * (salt + 1)) % 65521).to(torch.float64).div(65521).sub(0.5).float()


@torch.no_grad()
def deterministic_fill(net: nn.Module) -> None:
    """Overwrite every parameter (and FourierEmbedding.freqs) with fan-in-scaled deterministic values;
    resampling filters and iDDPM's ``u`` keep their values."""
    for i, (key, t) in enumerate(net.state_dict().items()):
        if key.endswith("resample_filter") or key == "u":
            continue
        v = pattern(t.numel(), i).reshape(t.shape)
        if key.endswith("freqs"):
            t.copy_(v * math.sqrt(12) * 4)
        elif t.ndim >= 2:
            t.copy_(v * math.sqrt(12) / math.sqrt(t.numel() // t.shape[0]))
        elif key.endswith("weight"):
            t.copy_(1 + 0.2 * v)
        else:
            t.copy_(0.2 * v)


def parity_inputs(label_dim: int, augment: bool, res: int = 16):
    """(x [2,3,R,R], sigma [2], labels [2,K], augment_labels [2,9] or None, cotangent [2,3,R,R])."""
    n = 2 * 3 * res * res
    x = (1.5 * torch.sin(0.7 * torch.arange(n, dtype=torch.float64) + 0.3)).float().reshape(2, 3, res, res)
    sigma = torch.tensor([0.3, 4.0])
    labels = torch.zeros(2, label_dim)
    if label_dim:
        labels[0, 0] = 1
        labels[1, label_dim - 2] = 1
    aug = (0.5 * torch.cos(1.3 * torch.arange(18, dtype=torch.float64))).float().reshape(2, 9) if augment else None
    cot = torch.cos(0.37 * torch.arange(n, dtype=torch.float64)).float().reshape(2, 3, res, res)
    return x, sigma, labels, aug, cot


def conv_input() -> torch.Tensor:
    return (torch.sin(0.9 * torch.arange(4 * 8 * 8, dtype=torch.float64)) * 2).float().reshape(1, 4, 8, 8)


def init_stats(net: nn.Module) -> torch.Tensor:
    """[n_tensors, 2] float64: (sum, sum of squares) of every state_dict tensor."""
    return torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in net.state_dict().values()])


# ---------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((DATA / "edm_reference.json").read_text())


@pytest.fixture(scope="module")
def parity() -> dict:
    return torch.load(DATA / "edm_parity.pt", weights_only=True)


def build(name: str, configs=KEY_CONFIGS, device: str = "meta") -> nn.Module:
    class_name, kwargs = configs[name]
    with torch.device(device):
        return build_edm_network(class_name, kwargs)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------------
# Architecture: parameter counts and state_dict names/shapes against EDM's code


def test_ddpmpp_cifar10_parameter_count():
    # Counts measured by instantiating EDM's own EDMPrecond with train.py's --arch=ddpmpp CIFAR-10
    # kwargs (augment_dim=9, dropout=0.13). The 55.74 M of the conditional model is the figure quoted
    # for EDM's CIFAR-10 DDPM++; the unconditional one lacks map_label (10·128 + 128 parameters).
    uncond, cond = n_params(build("ddpmpp_cifar_uncond")), n_params(build("ddpmpp_cifar_cond"))
    assert uncond == 55_733_891
    assert cond == 55_735_299
    assert round(cond / 1e6, 2) == 55.74
    assert round(uncond / 1e6, 2) == 55.73


@pytest.mark.parametrize("name", list(KEY_CONFIGS))
def test_state_dict_matches_edm(reference, name):
    ref = reference["state_dicts"][name]
    class_name, kwargs = KEY_CONFIGS[name]
    assert ref["class_name"] == class_name and ref["init_kwargs"] == json.loads(json.dumps(kwargs))
    net = build(name)
    ours = [[k, list(t.shape)] for k, t in net.state_dict().items()]
    assert ours == ref["tensors"]  # same names, same order, same shapes
    assert n_params(net) == ref["num_params"]
    # Loading a state_dict with EDM's names works strictly.
    if name == "ddpmpp_small_vp":
        real = build(name, device="cpu")
        real.load_state_dict({k: torch.zeros(s) for k, s in ref["tensors"]}, strict=True)


def test_full_width_parameter_counts(reference):
    assert reference["state_dicts"]["ncsnpp_cifar_cond"]["num_params"] == 56_400_643
    assert n_params(build("ncsnpp_cifar_cond")) == 56_400_643
    assert round(n_params(build("adm_imagenet64_cond")) / 1e6, 1) == 295.9


def test_iddpm_buffer_and_output_channels(reference, parity):
    net = build("adm_small_iddpm", device="cpu")
    assert net.model.out_conv.weight.shape[0] == 6  # 2·img_channels, as in EDM
    assert ["u", [1001]] in reference["state_dicts"]["adm_small_iddpm"]["tensors"]
    # The table is a float32 recursion over M = 1000 steps whose sin() differs by an ulp between CPUs'
    # vector units, so it is compared with the exact (float64) recursion within the error that float32
    # can accumulate, not bit for bit: EDM's table (made on another CPU) and ours must both lie within it.
    exact, bound = iddpm_u_exact_and_error_bound(net.M, net.C_1, net.C_2)
    for name, table in [("ours", net.u), ("EDM's", parity["iddpm_u"])]:
        rel = (table.double()[:-1] - exact[:-1]).abs() / exact[:-1]
        assert (rel <= bound).all(), f"{name} u_j off the exact recursion at j={int((rel / bound).argmax())}"
        assert table[-1] == 0
    rel = (net.u.double()[:-1] - parity["iddpm_u"].double()[:-1]).abs() / exact[:-1]
    assert (rel <= 2 * bound).all()
    sigma_min, sigma_max = parity["iddpm_sigma_range"].tolist()
    assert net.sigma_min == pytest.approx(sigma_min, rel=2 * bound[-1].item())
    assert net.sigma_max == pytest.approx(sigma_max, rel=2 * bound[0].item())


def iddpm_u_exact_and_error_bound(M: int, C_1: float, C_2: float) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: N803
    """iDDPM's u_j in float64, and a first-order bound on the relative error of a float32 evaluation.

    u_{j-1}^2 + 1 = (u_j^2 + 1) / r_j with r_j = max(abar(j-1)/abar(j), C_1), abar(j) = sin(x_j)^2 and
    x_j = 0.5·pi·j / M / (C_2 + 1). In units of eps = 2^-24: x_j carries 5 roundings (pi/2 and C_2 + 1
    cast to float32, three operations), which sin passes on at most once (x cot x <= 1 on [0, pi/2]);
    sin itself is off by at most 1 ulp <= 2 eps relative (PyTorch's vectorised float32 sin, SLEEF's
    1.0-ulp variant; this is where CPUs differ); squaring doubles that and rounds once, the ratio adds
    two such errors and rounds once, and the step rounds once more: c = 2(2(5 + 2) + 1) + 2 = 32 per
    step, so after the M - j steps down to u_j, |d(u_j^2 + 1)| / (u_j^2 + 1) <= c eps (M - j); and since
    d(u^2) = d(u^2 + 1), |du_j| / u_j <= (1 + u_j^-2) / 2 * c eps (M - j). (With c = 4, a float32 table
    whose sines are each moved by one ulp at random already leaves the bound at j = M - 1.)
    """
    j = torch.arange(M + 1, dtype=torch.float64)
    abar = (0.5 * math.pi * j / M / (C_2 + 1)).sin() ** 2
    u = torch.zeros(M + 1, dtype=torch.float64)
    for i in range(M, 0, -1):
        u[i - 1] = ((u[i] ** 2 + 1) / (abar[i - 1] / abar[i]).clip(min=C_1) - 1).sqrt()
    steps = M - torch.arange(M, dtype=torch.float64)
    bound = 0.5 * (1 + u[:-1] ** -2) * 32 * 2.0**-24 * steps
    return u, bound


# ---------------------------------------------------------------------------------------------------
# Numerical parity with EDM's code


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_seeded_initialisation_matches_edm(parity, name):
    """Same init schemes, drawn in the same order from the global generator."""
    torch.manual_seed(0)
    net = build(name, PARITY_CONFIGS, device="cpu")
    ref = parity[name]["init_stats"]
    ours = init_stats(net)
    keys = list(net.state_dict())
    for i, key in enumerate(keys):
        torch.testing.assert_close(ours[i], ref[i], rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_outputs_and_gradients_match_edm(parity, name):
    class_name, kwargs = PARITY_CONFIGS[name]
    net = build(name, PARITY_CONFIGS, device="cpu").eval()
    deterministic_fill(net)
    x, sigma, labels, aug, cot = parity_inputs(kwargs["label_dim"], bool(kwargs.get("augment_dim")))
    x.requires_grad_(True)
    extra = {} if aug is None else {"augment_labels": aug}
    out = net(x, sigma, labels, **extra)
    ref = parity[name]
    scale = ref["out"].abs().max().item()
    torch.testing.assert_close(out.detach(), ref["out"], rtol=1e-4, atol=1e-5 * scale)
    (out * cot).sum().backward()
    gscale = ref["x_grad"].abs().max().item()
    torch.testing.assert_close(x.grad, ref["x_grad"], rtol=1e-4, atol=5e-5 * gscale)
    params = dict(net.named_parameters())
    got, want, names = [], [], []
    for k, ref_stats in zip(ref["param_names"], ref["param_grad_stats"]):
        p = params[k]
        if not p.requires_grad:  # our frozen map_augment
            assert k.endswith("map_augment.weight") and p.grad is None
            continue
        g = p.grad.double()
        got.append(torch.stack([g.square().sum(), (g * pattern(p.numel(), 7).double().reshape(p.shape)).sum()]))
        want.append(ref_stats)
        names.append(k)
    got, want = torch.stack(got), torch.stack(want)
    close = torch.isclose(got, want, rtol=1e-3, atol=1e-6).all(dim=1) | (got - want).abs().le(
        1e-6 * (1 + want.abs().max())
    ).all(dim=1)
    assert close.all(), [n for n, ok in zip(names, close) if not ok]


@pytest.mark.parametrize("name", list(CONV_CONFIGS))
def test_conv2d_resampling_matches_edm(parity, name):
    layer = Conv2d(**CONV_CONFIGS[name])
    deterministic_fill(layer)
    out = layer(conv_input())
    ref = parity["conv"][name]
    assert out.shape == ref.shape
    torch.testing.assert_close(out.detach(), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Behaviour


def small_unet(cls, **kw) -> nn.Module:
    base = dict(
        img_resolution=16,
        in_channels=3,
        out_channels=3,
        model_channels=16 if cls is SongUNet else 64,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        dropout=0.0,
    )
    return cls(**{**base, **kw})


def small_song(**kw) -> SongUNet:
    return small_unet(SongUNet, **kw)


def small_adm(**kw) -> DhariwalUNet:
    return small_unet(DhariwalUNet, **kw)


@pytest.mark.parametrize("make", [small_song, small_adm])
def test_shape_and_determinism(make):
    torch.manual_seed(0)
    net = EDMPrecond(make(label_dim=5)).eval()
    x, sigma = torch.randn(3, 3, 16, 16), torch.tensor([0.1, 1.0, 20.0])
    labels = torch.eye(5)[[0, 2, 4]]
    a, b = net(x, sigma, labels), net(x, sigma, labels)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize("make", [small_song, small_adm])
def test_gradients_reach_every_trainable_parameter(make):
    """A DDO-like step: train mode, dropout off, sum of outputs backward. map_augment exists but is
    frozen, so no trainable parameter is left without a gradient (DDP's unused-parameter check)."""
    torch.manual_seed(0)
    net = EDMPrecond(make(label_dim=4, augment_dim=9, dropout=0.1)).train()
    disable_dropout(net)
    assert "model.map_augment.weight" in net.state_dict()
    assert not net.model.map_augment.weight.requires_grad
    # Make the zero-initialised output layers non-zero so that gradients are non-trivial everywhere.
    deterministic_fill(net)
    x, sigma, labels = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 3.0]), torch.eye(4)[[1, 3]]
    net(x, sigma, labels).sum().backward()
    trainable = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    assert len(trainable) == sum(1 for _ in net.parameters()) - 1
    missing = [k for k, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert net.model.map_augment.weight.grad is None
    # The frozen layer stays frozen through a strict load.
    net.load_state_dict(net.state_dict(), strict=True)
    assert not net.model.map_augment.weight.requires_grad


@pytest.mark.parametrize("make", [small_song, small_adm])
def test_label_dropout_only_in_training(make):
    torch.manual_seed(0)
    net = make(label_dim=4, label_dropout=1.0)  # drop every label while training
    deterministic_fill(net)
    x, noise, labels = torch.randn(2, 3, 16, 16), torch.tensor([0.1, -0.4]), torch.eye(4)[[0, 1]]
    zeros = torch.zeros_like(labels)
    net.train()
    assert torch.allclose(net(x, noise, labels), net(x, noise, zeros))
    net.eval()
    assert not torch.allclose(net(x, noise, labels), net(x, noise, zeros))
    net.label_dropout = 0.0
    net.train()
    assert not torch.allclose(net(x, noise, labels), net(x, noise, zeros))


@pytest.mark.parametrize("make", [small_song, small_adm])
def test_dropout_modules_and_disable_dropout(make):
    net = make(dropout=0.13)
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(m.p == 0.13 for m in drops)
    deterministic_fill(net)
    x, noise = torch.randn(2, 3, 16, 16), torch.tensor([0.1, -0.4])
    net.train()
    assert not torch.equal(net(x, noise, None), net(x, noise, None))  # dropout active
    assert disable_dropout(net) == len(drops)
    assert all(m.p == 0 for m in drops)
    assert torch.equal(net(x, noise, None), net(x, noise, None))
    net.eval()
    assert torch.allclose(net(x, noise, None), net.train()(x, noise, None))


@pytest.mark.parametrize("make", [small_song, small_adm])
def test_class_label_forms(make):
    torch.manual_seed(0)
    uncond = make().eval()
    x, noise = torch.randn(2, 3, 16, 16), torch.tensor([0.1, -0.4])
    assert torch.equal(uncond(x, noise, None), uncond(x, noise, torch.zeros(2, 0)))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, noise, torch.eye(3)[:2])
    cond = make(label_dim=3).eval()
    assert torch.equal(cond(x, noise, None), cond(x, noise, torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="width"):
        cond(x, noise, torch.eye(4)[:2])


def test_runs_in_input_dtype():
    net = small_song().double().eval()
    out = net(torch.randn(1, 3, 16, 16, dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64), None)
    assert out.dtype == torch.float64


# ---------------------------------------------------------------------------------------------------
# Preconditioners (EDM Table 1)


class Probe(nn.Module):
    """Raw network that records its inputs and returns a fixed function of them."""

    def __init__(self, out_mult: int = 1):
        super().__init__()
        self.out_mult = out_mult
        self.seen = None

    def forward(self, x, noise_labels, class_labels):
        self.seen = (x.clone(), noise_labels.clone())
        f = torch.tanh(x) + noise_labels.reshape(-1, 1, 1, 1) * 0.01
        return torch.cat([f, 7 + f], dim=1) if self.out_mult == 2 else f


SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])


def _check(net, c_skip, c_out, c_in, c_noise):
    x = torch.randn(len(SIGMAS), 3, 4, 4)
    D = net(x, SIGMAS, torch.zeros(len(SIGMAS), 0))
    x_in, noise = net.model.seen
    col = lambda v: torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1, 1)  # noqa: E731
    torch.testing.assert_close(x_in, col(c_in) * x, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(noise, torch.as_tensor(c_noise, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    F = torch.tanh(x_in) + noise.reshape(-1, 1, 1, 1) * 0.01
    torch.testing.assert_close(D, col(c_skip) * x + col(c_out) * F, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net.raw(x, SIGMAS, None), F)


def test_edm_precond_table1():
    s, d = SIGMAS.double(), 0.5
    _check(
        EDMPrecond(Probe()), d**2 / (s**2 + d**2), s * d / (s**2 + d**2).sqrt(), 1 / (s**2 + d**2).sqrt(), s.log() / 4
    )
    net = EDMPrecond(Probe())
    assert (net.sigma_min, net.sigma_max, net.sigma_data) == (0.0, math.inf, 0.5)


def test_vp_precond_table1():
    net = VPPrecond(Probe())
    s, bd, bm = SIGMAS.double(), 19.9, 0.1
    t = ((bm**2 + 2 * bd * (1 + s**2).log()).sqrt() - bm) / bd
    _check(net, torch.ones_like(s), -s, 1 / (s**2 + 1).sqrt(), 999 * t)
    sig = lambda t: math.sqrt(math.exp(0.5 * bd * t**2 + bm * t) - 1)  # noqa: E731
    assert net.sigma_min == pytest.approx(sig(1e-5), rel=1e-9)
    assert net.sigma_max == pytest.approx(sig(1.0), rel=1e-9)
    assert float(net.sigma(net.sigma_inv(torch.tensor(3.0, dtype=torch.float64)))) == pytest.approx(3.0, rel=1e-9)
    assert net.sigma_data == 0.5


def test_ve_precond_table1():
    net = VEPrecond(Probe())
    s = SIGMAS.double()
    _check(net, torch.ones_like(s), s, torch.ones_like(s), (s / 2).log())
    assert (net.sigma_min, net.sigma_max, net.sigma_data) == (0.02, 100.0, 0.5)


def test_iddpm_precond_table1():
    net = iDDPMPrecond(Probe(out_mult=2))
    s = SIGMAS.double()
    # The u table from its recursion in float64: u_{j-1}² + 1 = (u_j² + 1) / max(ᾱ(j-1)/ᾱ(j), C_1).
    # (The wrapper, like EDM, runs it in float32: ~5e-4 relative error near u_999.)
    abar = lambda j: math.sin(0.5 * math.pi * j / 1000 / 1.008) ** 2  # noqa: E731
    u = [0.0] * 1001
    for j in range(1000, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(abar(j - 1) / abar(j), 0.001) - 1)
    torch.testing.assert_close(net.u.double(), torch.tensor(u, dtype=torch.float64), rtol=1e-3, atol=0)
    index = (s.reshape(-1, 1) - net.u.double().reshape(1, -1)).abs().argmin(1)
    _check(net, torch.ones_like(s), -s, 1 / (s**2 + 1).sqrt(), 999 - index.double())
    assert net.sigma_min == pytest.approx(u[999], rel=1e-3) and net.sigma_max == pytest.approx(u[0], rel=1e-3)
    assert torch.equal(net.round_sigma(torch.tensor([u[500] * 1.0001])), net.u[500:501])
    assert "u" in net.state_dict()


# ---------------------------------------------------------------------------------------------------
# Factory


def test_factory_maps_classes_and_arguments():
    kw = dict(
        img_resolution=16,
        img_channels=3,
        label_dim=2,
        use_fp16=True,
        model_type="SongUNet",
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        sigma_min=0.1,
        sigma_max=10.0,
    )
    with torch.device("meta"):
        edm = build_edm_network("training.networks.EDMPrecond", dict(kw, sigma_data=0.6))
        ve = build_edm_network("VEPrecond", kw)
        vp = build_edm_network(
            "VPPrecond",
            dict(img_resolution=16, img_channels=3, beta_d=10.0, model_channels=16, channel_mult=[1, 2], num_blocks=1),
        )
        idd = build_edm_network(
            "iDDPMPrecond",
            dict(img_resolution=16, img_channels=1, model_channels=64, channel_mult=[1, 2], num_blocks=1, M=100),
        )
    assert isinstance(edm, EDMPrecond) and isinstance(edm.model, SongUNet)
    assert (edm.sigma_min, edm.sigma_max, edm.sigma_data, edm.label_dim) == (0.1, 10.0, 0.6, 2)
    assert isinstance(ve, VEPrecond) and (ve.sigma_min, ve.sigma_max) == (0.1, 10.0)
    assert isinstance(vp, VPPrecond) and isinstance(vp.model, SongUNet) and vp.beta_d == 10.0
    assert isinstance(idd, iDDPMPrecond) and isinstance(idd.model, DhariwalUNet)
    assert idd.model.out_conv.weight.shape[:2] == (2, 64) and idd.u.shape == (101,)
    assert edm.model.enc["16x16_conv"].weight.shape[1] == 3


def test_factory_rejects_unknown_names():
    with pytest.raises(ValueError, match="EDM2Precond"):
        build_edm_network("EDM2Precond", dict(img_resolution=8, img_channels=3))
    with pytest.raises(ValueError, match="UNet3"):
        build_edm_network("EDMPrecond", dict(img_resolution=8, img_channels=3, model_type="UNet3"))
    with pytest.raises(TypeError):
        build_edm_network("EDMPrecond", dict(img_resolution=8, img_channels=3, not_an_argument=1))
