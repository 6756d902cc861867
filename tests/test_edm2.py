"""EDM2 (issue 7): network, snapshot import, power-function EMA, latent pipeline (the presets: test_presets.py).

Oracles:
* ``tests/data/edm2_state_dict_shapes.json``: state_dict keys/shapes (img64-S, img512-XS) and parameter
  counts of every preset, dumped by running NVlabs/edm2's own ``training/networks_edm2.py`` (commit
  4bf8162f601bcc09472ce8a32dd0cbe8889dc8fc, imported from a checkout outside this repository) on
  ``torch.device('meta')``;
* ``tests/data/edm2_tiny_reference.pt``: a tiny Precond of the original code (weights, inputs, eval and
  train-mode outputs, logvar, and per-tensor sums of the weights after one train-mode forward, which
  renormalises them in place); both made by ``python scripts/make_edm2_fixtures.py --upstream /path/to/edm2``;
* the published parameter counts (EDM2 paper Table 2; docs/edm2.md), closed forms (σ_rel(γ), the power-EMA
  weights), a gradient computed without any in-place step, and formulas written out here.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pathlib
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from ddo_lightning.checkpoints import NvidiaPickleError, denoiser_state_dict, load_network_from_nvidia_pickle
from ddo_lightning.checkpoints.nvidia_pickle import load_edm2_training_state
from ddo_lightning.networks import EDM2Precond, build_edm_network, edm2_preset_kwargs
from ddo_lightning.networks.edm2 import MPConv, normalize
from ddo_lightning.objectives import DiffusionDDO
from ddo_lightning.protocols import Denoiser, PairedBatch, Samples
from ddo_lightning.training.ema import PowerEMA, gamma_to_sigma_rel, make_ema, sigma_rel_to_gamma

# tiny networks: intra-op threads only cost time (a 2-thread forward of the tiny U-Net is ~100x slower
# than a 1-thread one on a loaded 2-core machine)
pytestmark = pytest.mark.usefixtures("one_thread")

DATA = pathlib.Path(__file__).parent / "data"
TINY = dict(
    img_resolution=8,
    img_channels=3,
    label_dim=4,
    model_channels=8,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[4],
    channels_per_head=8,
    logvar_channels=8,
)


def tiny_edm2(seed: int = 0, **kw) -> EDM2Precond:
    torch.manual_seed(seed)
    net = EDM2Precond(**{**TINY, "use_fp16": False, **kw})
    with torch.no_grad():  # non-zero gains, so that every branch contributes and gets a gradient
        for p in net.parameters():
            if p.ndim == 0:
                p.uniform_(0.2, 1.2)
    return net


# ------------------------------------------------------------------------------------------------
# 1. Network: names, shapes, counts, numerics of the original


@pytest.fixture(scope="module")
def original():
    return json.loads((DATA / "edm2_state_dict_shapes.json").read_text())


@pytest.mark.parametrize("preset", ["img64-s", "img512-xs"])
def test_state_dict_keys_and_shapes_are_edm2s(original, preset):
    dataset, size = preset.split("-")
    with torch.device("meta"):
        net = EDM2Precond(**edm2_preset_kwargs(dataset, size))
    got = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert got == original["presets"][preset]  # same names, shapes and order


# EDM2 paper Table 2 (docs/edm2.md): millions of parameters, the same for img64 and img512
PUBLISHED_M = {"xs": 124.7, "s": 280.2, "m": 497.8, "l": 777.5, "xl": 1119.3, "xxl": 1523.2}


@pytest.mark.parametrize("dataset", ["img64", "img512"])
def test_parameter_counts_match_published_and_the_original(original, dataset):
    for size, millions in PUBLISHED_M.items():
        with torch.device("meta"):
            net = EDM2Precond(**edm2_preset_kwargs(dataset, size))
        n = sum(p.numel() for p in net.parameters())
        assert round(n / 1e6, 1) == millions, size
        assert n == original["counts"][f"{dataset}-{size}"], size


def test_outputs_and_inplace_normalisation_match_the_original():
    ref = torch.load(DATA / "edm2_tiny_reference.pt", weights_only=True)
    net = EDM2Precond(**ref["init_kwargs"])
    net.load_state_dict(ref["state"])
    net.eval()
    with torch.no_grad():
        d, logvar = net(ref["x"], ref["sigma"], ref["labels"], return_logvar=True)
    torch.testing.assert_close(d, ref["d_eval"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar, ref["logvar"], rtol=1e-5, atol=1e-5)
    assert torch.equal(net.state_dict()["unet.enc.8x8_conv.weight"], ref["state"]["unet.enc.8x8_conv.weight"])
    net.train()
    with torch.no_grad():
        d = net(ref["x"], ref["sigma"], ref["labels"])
    torch.testing.assert_close(d, ref["d_train"], rtol=1e-5, atol=1e-5)
    changed = 0
    for k, v in net.state_dict().items():  # the weights after the original's in-place renormalisation
        s, q = ref["after_sums"][k]
        assert v.double().sum().item() == pytest.approx(s, rel=1e-5, abs=1e-5), k
        assert v.double().square().sum().item() == pytest.approx(q, rel=1e-5, abs=1e-5), k
        changed += not torch.equal(v, ref["state"][k])
    assert changed > 10


def test_train_mode_gradient_matches_the_original():
    """Backward through the in-place renormalisation: per-parameter gradient sums and sums of squares of
    (D · proj).sum() against the original's (every parameter but the unused logvar head)."""
    ref = torch.load(DATA / "edm2_tiny_reference.pt", weights_only=True)
    net = EDM2Precond(**ref["init_kwargs"])
    net.load_state_dict(ref["state"])
    (net.train()(ref["x"], ref["sigma"], ref["labels"]) * ref["proj"]).sum().backward()
    got = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert set(got) == set(ref["grad_sums"]) and "logvar_linear.weight" not in got
    for k, (s, q) in ref["grad_sums"].items():
        assert got[k].double().sum().item() == pytest.approx(s, rel=1e-4, abs=1e-5), k
        assert got[k].double().square().sum().item() == pytest.approx(q, rel=1e-4, abs=1e-8), k


def test_denoiser_protocol_fp32_on_cpu_even_with_use_fp16():
    net = tiny_edm2(use_fp16=True).eval()
    assert isinstance(net, Denoiser) and net.sigma_data == 0.5
    x = torch.randn(2, 3, 8, 8)
    labels = torch.eye(4)[:2]
    with torch.no_grad():
        d = net(x, torch.tensor([0.5, 2.0]), labels)
        d_scalar = net(x, torch.tensor(0.5), labels)
        d_row = net(x[:1], torch.tensor([0.5]), labels[:1])
    assert d.dtype == torch.float32 and d.shape == x.shape
    torch.testing.assert_close(d_scalar[0], d_row[0])
    # c_skip·x + c_out·F with F = 0 when out_gain = 0: D = σ_d²/(σ²+σ_d²)·x exactly
    net.unet.out_gain.data.zero_()
    with torch.no_grad():
        d0 = net(x, torch.tensor([0.5, 2.0]), labels)
    c_skip = torch.tensor([0.25 / (0.25 + 0.25), 0.25 / (4 + 0.25)]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(d0, c_skip * x)
    uncond = tiny_edm2(label_dim=0).eval()
    with torch.no_grad():
        assert uncond(x, torch.tensor([1.0, 1.0]), torch.zeros(2, 0)).shape == x.shape


def _paired_batch(seed=1, n=3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.eye(4)[torch.tensor([0, 1, 3])[:n]]
    return PairedBatch(
        Samples(torch.randn(n, 3, 8, 8, generator=g).clamp(-1, 1), labels),
        Samples(torch.randn(n, 3, 8, 8, generator=g).clamp(-1, 1), labels.flip(0)),
    )


def _ddo_grads(target, reference, objective, batch, seed=5, forwards=1):
    target.zero_grad(set_to_none=True)
    loss = 0
    for _ in range(forwards):
        loss = loss + objective(target, reference, batch, generator=torch.Generator().manual_seed(seed)).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in target.named_parameters() if p.requires_grad}


def test_ddo_step_gradient_matches_a_gradient_without_the_inplace_step():
    """Target in train mode (forced weight normalisation rewrites its weights inside the forward) versus
    an eval-mode copy whose weights were normalised beforehand: the same function, no in-place step."""
    objective = DiffusionDDO(alpha=2.0, beta=0.05, P_mean=-0.8, P_std=1.6)
    target = tiny_edm2(seed=0).train()
    reference = tiny_edm2(seed=1).eval().requires_grad_(False)
    functional = copy.deepcopy(target).eval()
    with torch.no_grad():
        for m in functional.modules():
            if isinstance(m, MPConv):
                m.weight.copy_(normalize(m.weight))
    batch = _paired_batch()
    ref_before = {k: v.clone() for k, v in reference.state_dict().items()}
    loss, grads = _ddo_grads(target, reference, objective, batch)
    loss_f, grads_f = _ddo_grads(functional, reference, objective, batch)
    torch.testing.assert_close(loss, loss_f, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_f.keys() and "logvar_linear.weight" not in grads
    for k in grads:
        torch.testing.assert_close(grads[k], grads_f[k], rtol=1e-5, atol=1e-7, msg=k)
        assert grads[k].abs().sum() > 0, k  # DDP needs every trainable parameter to get a gradient
    # the train-mode forward did normalise the stored weights (unit RMS per output channel) ...
    w = target.unet.enc["8x8_conv"].weight
    torch.testing.assert_close(w.pow(2).mean(dim=(1, 2, 3)), torch.ones(w.shape[0]), rtol=1e-3, atol=1e-3)
    assert all(torch.equal(v, ref_before[k]) for k, v in reference.state_dict().items())  # ... never the reference's
    # a second train-mode forward in the same step is autograd-correct too (nothing rewritten in place)
    loss2, grads2 = _ddo_grads(target, reference, objective, batch, forwards=2)
    torch.testing.assert_close(loss2, 2 * loss_f, rtol=1e-6, atol=1e-6)
    for k in grads:
        torch.testing.assert_close(grads2[k], 2 * grads_f[k], rtol=1e-5, atol=1e-7, msg=k)


def test_logvar_head_frozen_through_ddo_and_mle_modules():
    from ddo_lightning.training import DDOModule, MLEModule

    ddo = DDOModule(tiny_edm2(dropout=0.1), ema_sigma_rel=0.05)
    for net in (ddo.target, ddo.reference, ddo.ema.model):
        assert not net.logvar_linear.weight.requires_grad
    assert ddo.target.unet.enc["8x8_block0"].drop.p == 0  # DDO switches dropout off (EDM2-M+ used 0.1)
    trainable = [n for n, p in ddo.target.named_parameters() if p.requires_grad]
    assert "logvar_linear.weight" not in trainable and len(trainable) == sum(1 for _ in ddo.target.parameters()) - 1
    mle = MLEModule(tiny_edm2())
    assert not mle.net.logvar_linear.weight.requires_grad
    assert EDM2Precond(**TINY, train_logvar=True).logvar_linear.weight.requires_grad


# ------------------------------------------------------------------------------------------------
# 2. Import: EDM2 snapshot pickles (NVIDIA's persistent-class format) and training states

import standins  # noqa: E402  (the stand-in NVIDIA pickles of the preset tests)
from test_nvidia_pickle import FakeEasyDict, evil_source, nvidia_names, nvidia_names_absent  # noqa: E402

EDM2_KWARGS = dict(TINY, dropout=0.0, use_fp16=True)


@pytest.fixture
def edm2_pickle(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "edm2-img64-s-0000000-0.075.pkl"
    want = standins.write_edm2_pickle(path, tiny_edm2(seed=3), EDM2_KWARGS, latent=False, source=evil_source(marker))
    return path, want, marker


def test_edm2_snapshot_imports_without_running_stored_code(edm2_pickle):
    from ddo_lightning.training import DDOModule

    path, want, marker = edm2_pickle
    assert all(v.dtype == torch.float16 for v in want.values())  # buffers too, like EDM2's files
    net = load_network_from_nvidia_pickle(path)  # default build: our factory maps 'Precond' to EDM2's
    assert type(net) is EDM2Precond and not net.training
    assert net.use_fp16 is False and net.recorded_use_fp16 is True  # DDO runs in fp32
    got = net.state_dict()
    assert list(got) == list(want)
    for k, v in got.items():  # upcast, exact: the fp32 values ARE the file's fp16 values
        assert v.dtype == torch.float32 and torch.equal(v, want[k].float()) and torch.equal(v.half(), want[k]), k
    assert not net.logvar_linear.weight.requires_grad
    as_stored = load_network_from_nvidia_pickle(path, dtype=None)
    assert all(torch.equal(v, want[k]) and v.dtype == torch.float16 for k, v in as_stored.state_dict().items())

    module = DDOModule(EDM2Precond(**{**EDM2_KWARGS, "use_fp16": False}), init_from=str(path))
    for k, v in module.reference.state_dict().items():
        assert torch.equal(v.half(), want[k]) and v.dtype == torch.float32, k
    assert not module.reference.logvar_linear.weight.requires_grad
    assert not marker.exists() and nvidia_names_absent()
    assert build_edm_network("training.networks_edm2.Precond", EDM2_KWARGS).unet.enc["8x8_block0"].num_heads == 0


def test_edm2_training_state_tensors_only(tmp_path):
    net = tiny_edm2(seed=4)
    ema = {k: v + 1 for k, v in net.state_dict().items()}
    path = tmp_path / "training-state-0001024.pt"
    with nvidia_names():  # EDM2 writes `state` as an EasyDict
        torch.save(
            dict(
                state=FakeEasyDict(cur_nimg=1024, total_elapsed_time=3.5),
                net=net.state_dict(),
                loss_fn=dict(P_mean=-0.8, P_std=1.6, sigma_data=0.5),
                optimizer=torch.optim.Adam(net.parameters()).state_dict(),
                ema=dict(stds=[0.05, 0.1], emas=[ema, net.state_dict()]),
            ),
            path,
        )
    got = load_edm2_training_state(path, "ema")
    assert all(torch.equal(got[k], ema[k]) for k in ema)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in load_edm2_training_state(path, "net").items())
    assert all(torch.equal(v, ema[k]) for k, v in denoiser_state_dict(str(path)).items())

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    bad = tmp_path / "training-state-0002048.pt"
    torch.save(dict(net=net.state_dict(), state=Payload()), bad)
    with pytest.raises(NvidiaPickleError, match=r"(posix|nt|os)\.system"):
        load_edm2_training_state(bad, "net")
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------------------
# 3. Power-function EMA


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.075, 0.1, 0.2, 0.28])
def test_gamma_sigma_rel_round_trip_against_the_closed_form(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    closed = math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))
    assert closed == pytest.approx(sigma_rel, rel=1e-10)
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-10)
    assert sigma_rel_to_gamma(gamma_to_sigma_rel(gamma)) == pytest.approx(gamma, rel=1e-9)
    published = {0.05: 16.97, 0.1: 6.94}  # EDM2 paper §3.1: the two profiles tracked during training
    if sigma_rel in published:
        assert gamma == pytest.approx(published[sigma_rel], abs=0.005)
    with pytest.raises(ValueError):
        sigma_rel_to_gamma(0.3)


def test_power_ema_is_the_power_weighted_average():
    """After K updates of b images, θ̂ = Σ_k (k^{γ+1} − (k−1)^{γ+1}) θ_k / K^{γ+1} (β_t = (1 − b/t)^{γ+1})."""
    torch.manual_seed(0)
    src = nn.Linear(3, 2)
    ema = PowerEMA(src, sigma_rel=0.1)
    g = ema.gamma
    history = []
    for _ in range(12):
        with torch.no_grad():
            for p in src.parameters():
                p.add_(torch.randn_like(p))
        history.append([p.detach().double().clone() for p in src.parameters()])
        ema.update(src, batch_images=32)
    K = len(history)
    w = np.array([(k ** (g + 1) - (k - 1) ** (g + 1)) / K ** (g + 1) for k in range(1, K + 1)])
    assert w.sum() == pytest.approx(1.0)
    for i, p in enumerate(ema.model.parameters()):
        expected = sum(wk * h[i] for wk, h in zip(w, history))
        torch.testing.assert_close(p.double(), expected, rtol=1e-5, atol=1e-6)
    assert int(ema.images) == 12 * 32 and not ema.model.training


def test_power_ema_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(1)
    src = nn.Linear(4, 4)
    a = make_ema(src, halflife_kimg=1.0, sigma_rel=0.05)
    assert isinstance(a, PowerEMA)
    for _ in range(3):
        src.weight.data.add_(1.0)
        a.update(src, 8)
    b = PowerEMA(nn.Linear(4, 4), sigma_rel=0.05)
    b.load_state_dict(a.state_dict())
    assert int(b.images) == 24
    for _ in range(2):
        src.weight.data.mul_(0.5)
        a.update(src, 8)
        b.update(src, 8)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    a.reset(src)
    assert int(a.images) == 0 and torch.equal(a.model.weight, src.weight)


def test_p_std_schedule_applied_per_round():
    from ddo_lightning.training import DDOModule

    obj = DiffusionDDO(P_mean=-0.8, P_std=1.6, P_std_schedule=[1.6, 1.6, 3.0])
    assert obj.P_std == 1.6
    module = type("M", (), {"objective": obj, "round_index": 0})()
    for r, want in [(1, 1.6), (2, 3.0), (4, 3.0), (0, 1.6)]:
        DDOModule.start_round(module, r)  # what SelfPlay calls at each round's start (resumes included)
        assert obj.P_std == want and module.round_index == r
    assert DiffusionDDO(P_std=1.2).P_std == 1.2


# ------------------------------------------------------------------------------------------------
# 4. Latent pipeline (EDM2's encoded format, diffusers' AutoencoderKL from a local directory)

RAW_MEAN = np.array([5.81, 3.25, 0.12, -2.15])
RAW_STD = np.array([4.17, 4.62, 3.71, 3.28])


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
    )
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return str(path)


def write_latents(root, n=6, hw=8, zip_it=False, labels=True, seed=0):
    """EDM2's `dataset_tool.py encode` layout: 00000/img-mean-std-00000000.npy (float32 [8, h, w])."""
    rng = np.random.default_rng(seed)
    files = {}
    for i in range(n):
        mean = rng.normal(RAW_MEAN[:, None, None], RAW_STD[:, None, None], (4, hw, hw))
        std = rng.uniform(0.05, 0.5, (4, hw, hw)) * (i != 5)  # image 5: a point posterior (std 0)
        buf = io.BytesIO()
        np.save(buf, np.concatenate([mean, std]).astype(np.float32))
        files[f"{i // 1000:05d}/img-mean-std-{i:08d}.npy"] = buf.getvalue()
    meta = {"labels": [[name, i % 3] for i, name in enumerate(files)] if labels else None}
    files["dataset.json"] = json.dumps(meta).encode()
    root = pathlib.Path(root)
    if zip_it:
        with zipfile.ZipFile(root, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("zip_it", [False, True])
def test_latent_dataset_draws_and_scales_like_edm2(tmp_path, zip_it):
    from ddo_lightning.data import LatentFolderDataset

    path = write_latents(tmp_path / ("lat.zip" if zip_it else "lat"), zip_it=zip_it)
    ds = LatentFolderDataset(path, conditional=True, latent_seed=7)
    assert len(ds) == 6 and ds.sample_shape == (4, 8, 8) and ds.label_dim == 3
    x, label = ds[4]
    assert torch.equal(label, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(ds[4].x, x)  # latent_seed: one fixed draw per image
    mean, std = ds.mean_std(4)
    # the draw's ε, recovered from the scaled latent, must be standard normal-ish and EDM2's formula exact
    scale, bias = 0.5 / RAW_STD, -RAW_MEAN * 0.5 / RAW_STD
    eps = (
        (x.double().numpy() - bias[:, None, None]) / scale[:, None, None] - mean.double().numpy()
    ) / std.double().numpy()
    assert abs(eps.mean()) < 0.4 and 0.6 < eps.std() < 1.4
    fresh = LatentFolderDataset(path, conditional=True)  # EDM2: a new draw at every use
    a, b = fresh[0].x, fresh[0].x
    assert not torch.equal(a, b)
    m0, s0 = fresh.mean_std(0)
    for v in (a, b):
        raw = (v.double().numpy() - bias[:, None, None]) / scale[:, None, None]
        assert np.all(np.abs(raw - m0.double().numpy()) <= 6 * s0.double().numpy() + 1e-4)
    big = torch.stack([fresh[1].x for _ in range(400)]).double()  # moments of the scaled draws
    m1, s1 = fresh.mean_std(1)
    torch.testing.assert_close(
        big.mean(0),
        torch.from_numpy(scale[:, None, None] * m1.double().numpy() + bias[:, None, None]),
        atol=0.25 * float((torch.from_numpy(scale)[:, None, None] * s1).max()) + 1e-3,
        rtol=0,
    )
    # std = 0: the latent is the mean, scaled with EDM2's constants (computed here in float64)
    m5, _ = fresh.mean_std(5)
    want5 = scale[:, None, None] * m5.double().numpy() + bias[:, None, None]
    np.testing.assert_allclose(fresh[5].x.double().numpy(), want5, rtol=1e-6, atol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .npy"):
        LatentFolderDataset(tmp_path / "empty")


def test_latent_zip_read_by_forked_dataloader_workers(tmp_path):
    """The parent has the zip open (it read the first latent at construction); forked workers must read
    through handles of their own. Through the inherited one they would move the file offset the parent and
    every other worker share, and interleaved reads then fail (BadZipFile) or return wrong bytes: the
    parent's offset must not move while workers read."""
    import multiprocessing

    from torch.utils.data import DataLoader

    from ddo_lightning.data import LatentFolderDataset

    # 128 KiB members: reads go past the file's read buffer, to the shared offset
    ds = LatentFolderDataset(write_latents(tmp_path / "lat.zip", n=6, hw=64, zip_it=True), latent_seed=3)
    want = torch.stack([ds[i].x for i in range(len(ds))])
    ds[0]  # the parent's offset: after the first member (the workers' last read ends after the last one)
    fd = ds._zip.fp.fileno()
    before = os.lseek(fd, 0, os.SEEK_CUR)
    loader = DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context=multiprocessing.get_context("fork"))
    got = torch.cat([batch.x for batch in loader])
    assert os.lseek(fd, 0, os.SEEK_CUR) == before
    assert torch.equal(got, want)


def test_vae_decoder_and_fid_hook(tmp_path, tiny_vae_dir):
    from conftest import RandomFeatures
    from diffusers import AutoencoderKL

    from ddo_lightning.data import StabilityVAE
    from ddo_lightning.metrics import FrechetDistance

    dec = StabilityVAE(vae_path=tiny_vae_dir, batch_size=2)
    latents = torch.randn(3, 4, 8, 8) * 0.5
    images = dec(latents)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 16, 16)
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir, local_files_only=True).eval()
    scale = torch.tensor(0.5 / RAW_STD, dtype=torch.float32).reshape(1, -1, 1, 1)
    bias = torch.tensor(-RAW_MEAN * 0.5 / RAW_STD, dtype=torch.float32).reshape(1, -1, 1, 1)
    with torch.no_grad():
        want = (vae.decode((latents - bias) / scale).sample.clamp(0, 1) * 255).to(torch.uint8)  # EDM2's decode
    assert (images.int() - want.int()).abs().max() <= 1
    enc = dec.encode(want)
    assert enc.shape == (3, 8, 8, 8) and bool((enc[:, 4:] > 0).all())  # mean ⊕ std

    fid = FrechetDistance(RandomFeatures(), name="fid", decoder=dec)
    plain = FrechetDistance(RandomFeatures(), name="fid")
    fid.update(latents)
    plain.update(images)
    torch.testing.assert_close(fid.total, plain.total)
    assert not any(k.startswith(("decoder.", "extractor.")) for k in fid.state_dict())
    fid.load_state_dict(fid.state_dict())
    with pytest.raises(FileNotFoundError):
        StabilityVAE(vae_path=str(tmp_path / "absent"))
