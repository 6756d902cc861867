"""`ddo sample` and `ddo fid` against direct computations (sampler, feature statistics, Fréchet formula)."""

import hashlib
import json
import pathlib

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import ddo_lightning.metrics
from ddo_lightning.commands import _instantiate, read_configs, run_command
from ddo_lightning.data import DigitsDataset, ImageFolderDataset
from ddo_lightning.metrics import DigitsFeatures
from ddo_lightning.pixels import model_to_uint8
from ddo_lightning.samplers import HeunSampler, seeded_normal

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs/digits.yaml")


def _fd_eig(mu1, s1, mu2, s2):
    """Independent Fréchet distance: tr((Σ1Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½) via eigendecompositions."""

    def psd_sqrt(a):
        w, v = np.linalg.eigh(a)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r = psd_sqrt(s1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(r @ s2 @ r)))


def _weights(tmp_path, configs, name="w.pt"):
    """The preset's network with random weights (perturbed so outputs are not trivial), saved as a plain state dict."""
    net = _instantiate(read_configs(configs)["model"]["init_args"]["network"], nn.Module, "network")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    torch.save(net.state_dict(), tmp_path / name)
    return net.eval(), str(tmp_path / name)


@pytest.fixture
def conditional(tmp_path):
    path = tmp_path / "cond.yaml"
    path.write_text(
        yaml.safe_dump(
            {"model": {"init_args": {"network": {"init_args": {"model": {"init_args": {"label_dim": 10}}}}}}}
        )
    )
    return [DIGITS, str(path)]


def _sample(config: str, ckpt: str, out, **options) -> dict:
    """``ddo sample --config CONFIG --ckpt CKPT [--OPTION VALUE ...] --out OUT --quiet`` (``batch_size`` is
    ``--batch-size``)."""
    args = ["--config", config, "--ckpt", ckpt]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return run_command("sample", args + ["--out", str(out), "--quiet"])


def _exit_message(capsys, args, name="sample"):
    with pytest.raises(SystemExit) as info:
        run_command(name, args)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_sample_equals_the_sampler_and_does_not_depend_on_batch_size(tmp_path, one_thread):
    net, w = _weights(tmp_path, [DIGITS])
    common = ["--config", DIGITS, "--ckpt", w, "--seeds", "3-9,20", "--steps", "3", "--quiet"]
    run_command("sample", common + ["--out", str(tmp_path / "a.npz")])
    run_command("sample", common + ["--out", str(tmp_path / "b.npz"), "--batch-size", "3"])
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    seeds = [3, 4, 5, 6, 7, 8, 9, 20]
    assert a["images"].shape == (8, 8, 8, 1) and a["images"].dtype == np.uint8 and list(a["seeds"]) == seeds
    assert (np.abs(a["images"].astype(int) - b["images"].astype(int)) <= 1).all()
    assert (a["images"] == b["images"]).mean() > 0.99  # same seed, same image, whatever the batching
    direct = HeunSampler(3)(net, seeded_normal(seeds, (1, 8, 8)), torch.zeros(8, 0))
    expect = model_to_uint8(direct).permute(0, 2, 3, 1).numpy()
    assert (np.abs(a["images"].astype(int) - expect.astype(int)) <= 1).all() and (a["images"] == expect).mean() > 0.99
    assert list(a["labels"]) == [-1] * 8


def test_sample_png_folder_with_balanced_labels_loads_back(tmp_path, conditional, one_thread):
    _, w = _weights(tmp_path, conditional)
    common = [
        "--config",
        conditional[0],
        "--config",
        conditional[1],
        "--ckpt",
        w,
        "--seeds",
        "0-11",
        "--steps",
        "2",
        "--quiet",
    ]
    run_command("sample", common + ["--out", str(tmp_path / "pngs")])
    run_command("sample", common + ["--out", str(tmp_path / "s.npz")])
    z = np.load(tmp_path / "s.npz")
    assert list(z["labels"]) == [i % 10 for i in range(12)]
    back = ImageFolderDataset(str(tmp_path / "pngs"), conditional=True)
    assert back.image_fnames[0] == "000000.png" and len(back) == 12
    assert torch.equal(back.images, torch.from_numpy(z["images"]).permute(0, 3, 1, 2))
    assert back.raw_labels.tolist() == [i % 10 for i in range(12)]
    run_command("sample", common + ["--out", str(tmp_path / "c3.npz"), "--class", "3"])
    assert set(np.load(tmp_path / "c3.npz")["labels"].tolist()) == {3}


def test_sample_bad_input_is_named_and_nothing_is_lost(tmp_path, capsys, conditional):
    _, w = _weights(tmp_path, [DIGITS])
    out = tmp_path / "keep.npz"
    out.write_bytes(b"precious")
    err = _exit_message(capsys, ["--config", DIGITS, "--ckpt", w, "--out", str(out)])
    assert "exists" in err and "--overwrite" in err and out.read_bytes() == b"precious"
    assert "--seeds" in _exit_message(
        capsys, ["--config", DIGITS, "--ckpt", w, "--seeds", "5-1", "--out", str(tmp_path / "x.npz")]
    )
    assert "checkpoint not found" in _exit_message(
        capsys, ["--config", DIGITS, "--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.npz")]
    )
    # weights of the conditional network into the unconditional one: every differing parameter is named
    _, wc = _weights(tmp_path, conditional, "cond.pt")
    err = _exit_message(capsys, ["--config", DIGITS, "--ckpt", wc, "--out", str(tmp_path / "x.npz")])
    assert "does not match" in err and "map_label" in err
    assert "10 classes" in _exit_message(
        capsys,
        [
            "--config",
            conditional[0],
            "--config",
            conditional[1],
            "--ckpt",
            wc,
            "--class",
            "12",
            "--out",
            str(tmp_path / "x.npz"),
        ],
    )
    assert not (tmp_path / "x.npz").exists()


def test_fid_reference_stats_and_scores_against_direct_computation(tmp_path, capsys, one_thread):
    net, w = _weights(tmp_path, [DIGITS])
    ref = tmp_path / "digits-ref.npz"
    run_command("fid", ["--write-stats", str(ref), "--config", DIGITS, "--features", "digits", "--quiet"])
    feats = DigitsFeatures()
    real = feats(DigitsDataset().images).double().numpy()
    with np.load(ref) as z:
        assert np.allclose(z["mu"], real.mean(0), atol=1e-9) and np.allclose(
            z["sigma"], np.cov(real, rowvar=False), atol=1e-9
        )
        assert int(z["count"]) == 1797
    _sample(DIGITS, w, tmp_path / "s.npz", seeds="0-39", steps=3)
    capsys.readouterr()
    got = run_command(
        "fid",
        [
            "--ref",
            str(ref),
            "--images",
            str(tmp_path / "s.npz"),
            "--features",
            "digits",
            "--json",
            str(tmp_path / "fid.json"),
            "--quiet",
        ],
    )
    imgs = torch.from_numpy(np.load(tmp_path / "s.npz")["images"]).permute(0, 3, 1, 2)
    f = feats(imgs).double().numpy()
    expected = _fd_eig(f.mean(0), np.cov(f, rowvar=False), real.mean(0), np.cov(real, rowvar=False))
    assert got["fid"] == pytest.approx(expected, rel=1e-6) and got["num_images"] == 40
    # provenance: samples, seeds (unknown for given images), proxy, the hashes of the statistics and weights
    assert got["num_samples"] == 40 and got["proxy"] is True and got["class_balanced"] is None
    assert got["seeds"]["first"] is None
    assert got["reference_stats_sha256"] == hashlib.sha256(ref.read_bytes()).hexdigest()
    digits_asset = pathlib.Path(ddo_lightning.metrics.__file__).parent / "assets" / "digits_classifier.pt"
    weights = torch.load(digits_asset, weights_only=True)
    h = hashlib.sha256()
    for name, t in weights.items():  # the documented byte order: name NUL dtype NUL shape NUL bytes
        h.update(f"{name}\0{t.dtype}\0{','.join(map(str, t.shape))}\0".encode() + t.contiguous().numpy().tobytes())
    assert got["feature_weights_sha256"] == h.hexdigest()
    assert json.loads((tmp_path / "fid.json").read_text())["fid"] == got["fid"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fid"] == got["fid"]
    # straight from the checkpoint (samples streamed to features, nothing written): the same seeds, the same FID
    streamed = run_command(
        "fid",
        [
            "--ref",
            str(ref),
            "--config",
            DIGITS,
            "--ckpt",
            w,
            "--num",
            "40",
            "--steps",
            "3",
            "--features",
            "digits",
            "--quiet",
        ],
    )
    assert streamed["fid"] == pytest.approx(got["fid"], rel=1e-3) and streamed["nfe"] == 5
    assert streamed["seeds"] == {"first": 0, "last": 39, "contiguous": True} and streamed["num_samples"] == 40
    assert streamed["class_balanced"] is None and streamed["proxy"] is True  # the digits preset is unconditional


def test_fid_bad_input_is_named(tmp_path, capsys):
    both = _exit_message(capsys, ["--ref", "a.npz", "--write-stats", "b.npz", "--images", "x"], "fid")
    assert "exactly one of --ref" in both
    assert "nothing to measure" in _exit_message(
        capsys, ["--write-stats", str(tmp_path / "b.npz"), "--features", "digits"], "fid"
    )
    assert "reference statistics not found" in _exit_message(
        capsys, ["--ref", str(tmp_path / "none.npz"), "--images", "x", "--features", "digits"], "fid"
    )
    assert "Inception weights not found" in _exit_message(
        capsys,
        ["--ref", str(tmp_path / "r.npz"), "--images", "x", "--inception-weights", str(tmp_path / "w.pth")],
        "fid",
    )


TOY = str(ROOT / "configs/toy2d.yaml")
TOKENS = str(ROOT / "configs/tokens.yaml")


def test_sample_toy_preset_writes_points_npz(tmp_path, capsys, one_thread):
    """The 2-D demo exports its points: the Heun integration of the preset's denoiser from each seed's
    normal noise (EDM's grid for 3 steps), unconditional labels."""
    from ddo_lightning.samplers import heun_sampler
    from ddo_lightning.schedules import karras_sigmas

    net, w = _weights(tmp_path, [TOY])
    got = _sample(TOY, w, tmp_path / "p.npz", seeds="0-4,9", steps=3, batch_size=4)
    z = np.load(tmp_path / "p.npz")
    assert sorted(z.files) == ["labels", "points", "seeds"] and got["kind"] == "points" and got["num_samples"] == 6
    seeds = [0, 1, 2, 3, 4, 9]
    expect = heun_sampler(net, seeded_normal(seeds, (2,)), torch.zeros(6, 0), karras_sigmas(3, 0.002, 80.0, 7.0))
    assert z["points"].dtype == np.float32 and z["points"].shape == (6, 2)
    # batching changes only float rounding: the sampler starts from x = 80·n, whose float32 ulp is ~8e-6, and
    # a different batch split reorders the matmuls' sums, so the points agree to a few ulps of that state
    np.testing.assert_allclose(z["points"], expect.numpy(), rtol=1e-5, atol=80.0 * 2.0**-21)
    assert list(z["seeds"]) == seeds and list(z["labels"]) == [-1] * 6
    assert ".npz" in _exit_message(capsys, ["--config", TOY, "--ckpt", w, "--out", str(tmp_path / "folder")])
    assert not (tmp_path / "folder").exists()


def test_sample_token_preset_writes_tokens_npz(tmp_path, capsys, one_thread):
    """configs/tokens.yaml declares TokenSampler: `ddo sample` draws with it — token t the inverse CDF of
    the TokenGPT's conditional at the seed's uniform u_t — with class-balanced labels (i mod 4)."""
    from ddo_lightning.samplers import sample_tokens, seeded_uniform

    net, w = _weights(tmp_path, [TOKENS])
    got = _sample(TOKENS, w, tmp_path / "t.npz", seeds="10-16", batch_size=3)
    z = np.load(tmp_path / "t.npz")
    assert sorted(z.files) == ["labels", "seeds", "tokens"] and got["kind"] == "tokens" and got["num_samples"] == 7
    labels = [i % 4 for i in range(7)]
    expect = sample_tokens(net, torch.eye(4)[labels], seeded_uniform(list(range(10, 17)), 5))
    assert z["tokens"].dtype == np.int64 and np.array_equal(z["tokens"], expect.numpy())
    assert list(z["labels"]) == labels and got["nfe"] == 5  # one forward per position
    assert "no step count" in _exit_message(
        capsys, ["--config", TOKENS, "--ckpt", w, "--steps", "3", "--out", str(tmp_path / "x.npz")]
    )
    assert not (tmp_path / "x.npz").exists()


def test_sample_refuses_repeated_seeds_and_steps_below_one(tmp_path, capsys):
    """--seeds 3,1,1 is refused (a seed names one sample: a repeat would be written twice or overwrite its
    own PNG); --steps 0 / -2 are argument errors (exit status 2, argparse's message, no traceback)."""
    _, w = _weights(tmp_path, [TOY])
    out = str(tmp_path / "x.npz")
    err = _exit_message(capsys, ["--config", TOY, "--ckpt", w, "--seeds", "3,1,1", "--out", out])
    assert "--seeds" in err and "seed(s) 1 more than once" in err
    assert "more than once" in _exit_message(capsys, ["--config", TOY, "--ckpt", w, "--seeds", "0-5,4-9", "--out", out])
    for steps in ("0", "-2"):
        err = _exit_message(capsys, ["--config", TOY, "--ckpt", w, "--steps", steps, "--out", out])
        assert "argument --steps: must be >= 1" in err and "Traceback" not in err
    assert "argument --batch-size: must be >= 1" in _exit_message(
        capsys, ["--config", TOY, "--ckpt", w, "--batch-size", "0", "--out", out]
    )
    assert "argument --steps" in _exit_message(capsys, ["--ref", "r.npz", "--config", TOY, "--steps", "0"], "fid")
    assert not (tmp_path / "x.npz").exists()


def test_fid_names_why_points_and_undecodable_tokens_have_no_fid(tmp_path, capsys):
    from ddo_lightning.metrics.fid import save_reference_stats

    d = DigitsFeatures().feature_dim
    ref = str(tmp_path / "ref.npz")
    save_reference_stats(ref, np.zeros(d), np.eye(d))
    for config, why in ((TOY, "makes no images"), (TOKENS, "has no decode()")):
        _, w = _weights(tmp_path, [config])
        err = _exit_message(
            capsys, ["--ref", ref, "--config", config, "--ckpt", w, "--num", "4", "--features", "digits"], "fid"
        )
        assert "ddo fid measures images" in err and why in err and "declares no decoder" in err


def _tiny_var_preset(tmp_path, with_decoder=False):
    """A preset of a tiny VAR (5 classes, scales 1 and 2, 32 codes, 32 px) with its tokenizer's weights in
    a file (they are not in the network's state dict), the TokenSampler and, if asked, an FID evaluator
    whose decoder is that tokenizer (as configs/var_d16.yaml has)."""
    from ddo_lightning.networks.var import build_vae

    vae_path = str(tmp_path / "vae.pth")
    vae_kwargs = {"V": 32, "Cvae": 8, "ch": 32, "patch_nums": [1, 2]}
    torch.manual_seed(0)
    torch.save(build_vae(**{**vae_kwargs, "patch_nums": (1, 2)}).state_dict(), vae_path)
    network = {
        "class_path": "ddo_lightning.networks.VARNetwork",
        "init_args": {
            "depth": 2,
            "embed_dim": 64,
            "num_heads": 2,
            "patch_nums": [1, 2],
            "vocab_size": 32,
            "z_channels": 8,
            "vae_ch": 32,
            "num_classes": 5,
            "vae_checkpoint": vae_path,
        },
    }
    init = {"network": network, "sampler": "ddo_lightning.samplers.TokenSampler"}
    if with_decoder:
        decoder = {
            "class_path": "ddo_lightning.networks.var.VARImageDecoder",
            "init_args": {"vae_checkpoint": vae_path, "vae_kwargs": vae_kwargs},
        }
        init["evaluator"] = {"class_path": "ddo_lightning.metrics.FrechetDistance", "init_args": {"decoder": decoder}}
    config = tmp_path / "var.yaml"
    config.write_text(yaml.safe_dump({"model": {"init_args": init}}))
    return str(config)


def test_sample_var_tokens_come_with_their_decoded_images(tmp_path, one_thread):
    """A token network with a decoder (VAR): the .npz holds the scale-wise sampler's tokens and the
    tokenizer's decoding of them, as VARTokenModel.sample(return_images=True) gives them."""
    from ddo_lightning.samplers import seeded_uniform

    config = _tiny_var_preset(tmp_path)
    net, w = _weights(tmp_path, [config])
    got = _sample(config, w, tmp_path / "v.npz", seeds="0-5", batch_size=4)
    z = np.load(tmp_path / "v.npz")
    assert sorted(z.files) == ["images", "labels", "seeds", "tokens"] and got["num_images"] == 6
    labels = [i % 5 for i in range(6)]
    expect = net.sample(torch.eye(5)[labels], seeded_uniform(list(range(6)), 5), return_images=True)
    assert np.array_equal(z["tokens"], expect.tokens.numpy()) and list(z["labels"]) == labels
    want = model_to_uint8(expect.images).permute(0, 2, 3, 1).numpy()
    assert z["images"].shape == (6, 32, 32, 3) and (np.abs(z["images"].astype(int) - want.astype(int)) <= 1).all()
    assert got["nfe"] == 2  # one forward per scale


class _ChannelMoments(nn.Module):
    """A stand-in feature extractor: per-channel mean and mean square of uint8 images scaled to [0, 1]."""

    feature_dim = 6

    def forward(self, images):
        x = images.double() / 255
        return torch.cat([x.mean((2, 3)), (x**2).mean((2, 3))], 1).float()


def test_fid_of_var_tokens_goes_through_the_presets_decoder(tmp_path, monkeypatch, one_thread):
    """`ddo fid --config` of a token preset: the sampler's tokens, decoded by the decoder the preset's
    evaluator declares (VARImageDecoder), then features; the Fréchet distance against the reference equals
    the eigendecomposition formula on those features."""
    from ddo_lightning import commands
    from ddo_lightning.metrics.fid import save_reference_stats
    from ddo_lightning.networks.var import VARImageDecoder
    from ddo_lightning.samplers import seeded_uniform

    monkeypatch.setattr(commands, "build_extractor", lambda name, weights: _ChannelMoments())
    config = _tiny_var_preset(tmp_path, with_decoder=True)
    net, w = _weights(tmp_path, [config])
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    mu_ref, sigma_ref = rng.uniform(0, 0.5, 6), a @ a.T / 6 + 1e-3 * np.eye(6)
    save_reference_stats(str(tmp_path / "ref.npz"), mu_ref, sigma_ref)
    got = run_command(
        "fid",
        [
            "--ref",
            str(tmp_path / "ref.npz"),
            "--config",
            config,
            "--ckpt",
            w,
            "--num",
            "10",
            "--batch-size",
            "4",
            "--quiet",
        ],
    )
    labels = [i % 5 for i in range(10)]
    tokens = net.sample_tokens(torch.eye(5)[labels], seeded_uniform(list(range(10)), 5))
    decoder = VARImageDecoder(str(tmp_path / "vae.pth"), {"V": 32, "Cvae": 8, "ch": 32, "patch_nums": (1, 2)})
    f = _ChannelMoments()(decoder(tokens)).double().numpy()
    expected = _fd_eig(f.mean(0), np.cov(f, rowvar=False), mu_ref, sigma_ref)
    assert got["num_images"] == 10 and got["nfe"] == 2 and got["fid"] == pytest.approx(expected, rel=1e-4)
