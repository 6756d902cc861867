"""Fréchet distance, streamed feature statistics and the digits-FID classifier."""

import numpy as np
import pytest
import torch
from torch import nn

from ddo_lightning.data import DigitsDataset
from ddo_lightning.metrics import DigitsFeatures, FrechetDistance, frechet_distance
from ddo_lightning.metrics.fid import stats_from_sums, trace_sqrt_product


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


def test_trace_sqrt_product_against_sqrtm_and_commuting_closed_form():
    """tr((Σ1Σ2)^½) against scipy's general matrix square root on well-conditioned random SPD pairs, and
    against Σ √(a_i b_i) for covariances sharing an eigenbasis Q (Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ, so
    Σ1Σ2 = Q diag(ab) Qᵀ), singular ones included (zeros in a: fewer samples than features)."""
    import scipy.linalg

    rng = np.random.default_rng(1)
    for d in (3, 40, 200):
        a, b = rng.normal(size=(d, 2 * d)), rng.normal(size=(d, 3 * d))
        s1, s2 = a @ a.T / (2 * d) + 0.1 * np.eye(d), b @ b.T / (3 * d) + 0.1 * np.eye(d)
        exact = np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2)))
        assert trace_sqrt_product(s1, s2) == pytest.approx(exact, rel=1e-10)
    d = 64
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 5, d), rng.uniform(0.1, 5, d)
    a[: d // 4] = 0  # rank-deficient Σ1
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    # A zero eigenvalue of Σ1 comes out of rounding as |λ| <~ d·eps·‖Σ1‖ and √ turns that into up to
    # √(d·eps·‖Σ1‖·‖Σ2‖) per zero (the square root's own conditioning at 0, whatever the method).
    bound = (d // 4) * np.sqrt(d * np.finfo(float).eps * a.max() * b.max())
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.sqrt(a * b).sum(), rel=1e-10, abs=bound)
    assert trace_sqrt_product(np.diag(a), np.diag(b)) == pytest.approx(np.sqrt(a * b).sum(), rel=1e-12)


class Flat(nn.Module):
    feature_dim = 3 * 4 * 4

    def forward(self, x):
        return x.flatten(1).float()


def test_streamed_statistics_equal_direct_and_merge_like_ranks():
    x = torch.rand(90, 3, 4, 4) * 2 - 1
    whole = FrechetDistance(Flat())
    for chunk in x.split(25):
        whole.update(chunk)
    feats = (
        np.clip(x.numpy() * np.float32(127.5) + np.float32(128), 0, 255)
        .astype(np.uint8)
        .reshape(90, -1)
        .astype(np.float64)
    )
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


# ---- pixels: EDM's quantisation ------------------------------------------------------------------------
def test_model_to_uint8_is_edms_rule_and_inverts_uint8_to_model():
    from ddo_lightning.pixels import model_to_uint8, uint8_to_model

    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(model_to_uint8(uint8_to_model(levels)), levels)
    x = torch.cat([torch.linspace(-1.3, 1.3, 100_001), (torch.arange(255) + 0.5) / 127.5 - 1])  # halves included
    edm = np.clip(x.numpy().astype(np.float32) * np.float32(127.5) + np.float32(128), 0, 255).astype(np.uint8)
    assert np.array_equal(model_to_uint8(x).numpy(), edm)
    half_up = np.floor((x.double().numpy() + 1) * 127.5 + 0.5).clip(0, 255)  # round half up, independent of float32
    differ = model_to_uint8(x).numpy() != half_up
    frac = ((x.double().numpy() + 1) * 127.5) % 1
    assert np.all(np.abs(frac[differ] - 0.5) < 1e-4)  # only float32 rounding at exact halves differs


# ---- reference statistics in EDM's format -------------------------------------------------------------
def test_reference_statistics_roundtrip_and_clear_errors(tmp_path):
    from ddo_lightning.metrics.fid import load_reference_stats, save_reference_stats

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 16))
    save_reference_stats(str(tmp_path / "ref.npz"), feats.mean(0), np.cov(feats, rowvar=False), count=np.int64(50))
    mu, sigma = load_reference_stats(str(tmp_path / "ref.npz"), 16)
    assert np.array_equal(mu, feats.mean(0)) and np.array_equal(sigma, np.cov(feats, rowvar=False))
    with pytest.raises(ValueError, match="16-d statistics but the feature extractor gives 2048-d"):
        load_reference_stats(str(tmp_path / "ref.npz"), 2048)
    np.savez(tmp_path / "bad.npz", mean=feats.mean(0))
    with pytest.raises(ValueError, match="has no mu or sigma"):
        load_reference_stats(str(tmp_path / "bad.npz"))
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "ref.npz").read_bytes()[:100])
    with pytest.raises(ValueError, match="trunc.npz"):
        load_reference_stats(str(tmp_path / "trunc.npz"))
    with pytest.raises(FileNotFoundError, match="--write-stats"):
        FrechetDistance(Flat(), reference_stats=str(tmp_path / "missing.npz"))


def test_identical_statistics_give_zero_and_extractor_weights_stay_out_of_checkpoints(tmp_path):
    from ddo_lightning.metrics.fid import save_reference_stats

    x = torch.rand(64, 1, 8, 8) * 2 - 1
    probe = FrechetDistance(DigitsFeatures())
    probe.update(x)
    save_reference_stats(str(tmp_path / "ref.npz"), *probe.statistics())
    fid = FrechetDistance(DigitsFeatures(), reference_stats=str(tmp_path / "ref.npz"))
    for chunk in x.split(10):
        fid.update(chunk)
    assert abs(fid.compute()["fid"]) < 1e-6
    holder = nn.Module()
    holder.evaluator, holder.lin = fid, nn.Linear(2, 2)
    assert sorted(holder.state_dict()) == ["lin.bias", "lin.weight"]
    holder.load_state_dict(holder.state_dict(), strict=True)  # loading fills the extractor from itself


# ---- two processes (gloo) accumulate exactly what one process does -------------------------------------
class Pixels(nn.Module):
    """uint8 8x8 digits -> their 64 pixel values as features (integers: sums are exact in float64)."""

    feature_dim = 64

    def forward(self, x):
        return x.flatten(1).double()


def _two_rank_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x = torch.load(f"{out_dir}/x.pt")
        fid = FrechetDistance(Pixels(), reference_stats=f"{out_dir}/ref.npz")
        for chunk in x[rank::world].split(7):  # each rank sees a different half, in different chunks
            fid.update(chunk)
        value = fid.compute()["fid"]  # torchmetrics all-reduces the sums (dist_reduce_fx="sum")
        with fid.sync_context():
            summed = {"count": fid.count.clone(), "total": fid.total.clone(), "outer": fid.outer.clone()}
        if rank == 0:
            torch.save({"fid": value, **summed}, f"{out_dir}/rank0.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_accumulation_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    from ddo_lightning.metrics.fid import save_reference_stats

    gen = torch.Generator().manual_seed(3)
    x = torch.rand(90, 1, 8, 8, generator=gen) * 2 - 1
    torch.save(x, tmp_path / "x.pt")
    ref = FrechetDistance(Pixels())
    ref.update(DigitsDataset().images[:300])
    save_reference_stats(str(tmp_path / "ref.npz"), *ref.statistics())
    one = FrechetDistance(Pixels(), reference_stats=str(tmp_path / "ref.npz"))
    one.update(x)
    expected = one.compute()["fid"]
    mp.start_processes(
        _two_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    got = torch.load(tmp_path / "rank0.pt")
    assert int(got["count"]) == 90
    # integer-valued features: every float64 sum is exact in any order, so the all-reduced sums must be equal
    assert torch.equal(got["total"], one.total) and torch.equal(got["outer"], one.outer)
    assert got["fid"] == pytest.approx(expected, rel=1e-12)


# ---- Inception (torch-fidelity) -------------------------------------------------------------------------
def test_missing_inception_weights_fail_at_once_naming_the_file(tmp_path, monkeypatch):
    from ddo_lightning.metrics import InceptionFeatures
    from ddo_lightning.metrics.inception import WEIGHTS_FILE

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE) as err:
        InceptionFeatures()
    assert str(tmp_path / "torch_home") in str(err.value) and "Nothing is downloaded" in str(err.value)
    with pytest.raises(FileNotFoundError, match="elsewhere.pth"):
        InceptionFeatures(str(tmp_path / "elsewhere.pth"))


def _tf1_resize_bilinear(img: np.ndarray, out: int) -> np.ndarray:
    """Independent oracle: TensorFlow 1 ``resize_bilinear`` (align_corners=False, half_pixel_centers=False):
    source coordinate = dst * in/out, no antialiasing. img [C, H, W] float64."""
    c, h, w = img.shape

    def axis(n_in):
        src = np.arange(out) * (n_in / out)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    (y0, y1, fy), (x0, x1, fx) = axis(h), axis(w)
    top = img[:, y0][:, :, x0] * (1 - fx) + img[:, y0][:, :, x1] * fx
    bottom = img[:, y1][:, :, x0] * (1 - fx) + img[:, y1][:, :, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def _need_fidelity():
    try:
        from ddo_lightning.metrics.inception import fidelity_inception_module

        fidelity_inception_module()
    except ImportError as err:
        pytest.skip(f"torch-fidelity unavailable here ({str(err)[:120]}...); `make test-slow` runs this in .venv-fid")


@pytest.mark.fid
def test_inception_resize_is_tf1_bilinear_not_antialiased():
    _need_fidelity()
    from ddo_lightning.metrics.inception import resize_for_inception

    img = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = resize_for_inception(img).double().numpy()
    oracle = np.stack([_tf1_resize_bilinear(i.double().numpy(), 299) for i in img])
    assert np.abs(ours - oracle).max() < 1e-3  # float32 arithmetic against float64
    # torchmetrics 1.9's FID default (antialias=True) and torch's half-pixel bilinear are different resizes
    aa = torch.nn.functional.interpolate(img.float(), size=(299, 299), mode="bilinear", antialias=True).numpy()
    assert np.abs(aa - oracle).max() > 5


def write_random_inception_weights(path, seed: int = 0) -> str:
    """A weights file with torch-fidelity's Inception parameter names and shapes, randomly initialised
    (the real weights cannot be downloaded here)."""
    from ddo_lightning.metrics.inception import fidelity_inception_module

    cls = fidelity_inception_module().FeatureExtractorInceptionV3

    class Skeleton(cls):
        def load_state_dict(self, *args, **kwargs):  # the constructor loads weights; keep the random init
            return None

    empty = str(path) + ".empty"
    torch.save({}, empty)
    torch.manual_seed(seed)
    net = Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.mark.fid
def test_inception_path_end_to_end_with_random_weights(tmp_path, capsys):
    _need_fidelity()
    from ddo_lightning.commands import run_command
    from ddo_lightning.metrics import InceptionFeatures
    from ddo_lightning.metrics.fid import load_reference_stats

    weights = write_random_inception_weights(tmp_path / "inception-random.pth")
    feats = InceptionFeatures(weights)
    # FID provenance hashes the weights file Inception was loaded from (not its state_dict)
    import hashlib

    from ddo_lightning.metrics.fid import extractor_hash

    assert extractor_hash(feats) == (hashlib.sha256(open(weights, "rb").read()).hexdigest(), "file")
    gen = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=gen)
    f = feats(real)
    assert f.shape == (12, 2048) and torch.isfinite(f).all() and f.std(0).max() > 0
    grey = feats(real[:, :1])  # grey images are repeated to three channels
    assert torch.allclose(grey, feats(real[:, :1].repeat(1, 3, 1, 1)))
    # reference statistics of a folder, then FID of a shifted set through the CLI, against a direct computation
    np.savez(tmp_path / "real.npz", images=real.permute(0, 2, 3, 1).numpy())
    fake = (real.int() // 2 + 60).to(torch.uint8)
    np.savez(tmp_path / "fake.npz", images=fake.permute(0, 2, 3, 1).numpy())
    run_command(
        "fid",
        [
            "--write-stats",
            str(tmp_path / "ref.npz"),
            "--images",
            str(tmp_path / "real.npz"),
            "--inception-weights",
            weights,
            "--quiet",
        ],
    )
    mu, sigma = load_reference_stats(str(tmp_path / "ref.npz"), 2048)
    fr = f.double().numpy()
    assert np.allclose(mu, fr.mean(0), atol=1e-6) and np.allclose(sigma, np.cov(fr, rowvar=False), atol=1e-6)
    capsys.readouterr()
    out = run_command(
        "fid",
        [
            "--ref",
            str(tmp_path / "ref.npz"),
            "--images",
            str(tmp_path / "fake.npz"),
            "--inception-weights",
            weights,
            "--quiet",
        ],
    )
    ff = feats(fake).double().numpy()
    expected = _fd_eig(ff.mean(0), np.cov(ff, rowvar=False), mu, sigma)
    assert out["fid"] == pytest.approx(expected, rel=1e-4) and out["fid"] > 0
    assert out["num_images"] == 12


# ---- provenance: what an FID-like number depends on besides the model ------------------------------------
def _state_dict_sha256(module):
    """The documented byte order, written out independently: name NUL dtype NUL shape NUL raw bytes."""
    import hashlib

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + b"\0" + ",".join(map(str, t.shape)).encode() + b"\0")
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_provenance_hashes_the_reference_file_and_the_extractor_weights(tmp_path):
    import hashlib

    from ddo_lightning.metrics.fid import is_proxy, sample_provenance, save_reference_stats

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 64))
    path = tmp_path / "ref.npz"
    save_reference_stats(str(path), feats.mean(0), np.cov(feats, rowvar=False))
    fid = FrechetDistance(DigitsFeatures(), name="digits_fid", reference_stats=str(path))
    p = fid.provenance()
    assert p["reference_stats_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert p["reference_stats_hashed"] == "file" and p["reference_stats"] == str(path)
    assert (
        p["feature_weights_sha256"] == _state_dict_sha256(DigitsFeatures())
        and p["feature_weights_hashed"] == "state_dict"
    )
    other = DigitsFeatures(pretrained=False)  # other weights, another hash
    assert (
        FrechetDistance(other, reference_stats=str(path)).provenance()["feature_weights_sha256"]
        != p["feature_weights_sha256"]
    )
    # statistics computed from the training set: the hash of their float64 bytes, mu then sigma
    computed = FrechetDistance(DigitsFeatures())
    computed.connect(DigitsDataset())
    mu, sigma = computed.reference
    want = hashlib.sha256(mu.astype("<f8").tobytes() + sigma.astype("<f8").tobytes()).hexdigest()
    assert computed.provenance()["reference_stats_sha256"] == want
    assert computed.provenance()["reference_stats"] == "computed from DigitsDataset (1797 images)"
    assert is_proxy(49_999) and not is_proxy(50_000)
    rec = sample_provenance(1000, {"first": 0, "last": 999}, True, fid)
    assert rec["proxy"] is True and rec["num_samples"] == 1000 and rec["class_balanced"] is True
    assert rec["feature_weights_sha256"] == p["feature_weights_sha256"]


def test_class_balance_is_counted():
    from ddo_lightning.metrics.fid import class_balanced

    assert class_balanced(torch.arange(30) % 10, 10) is True
    assert class_balanced(torch.arange(31) % 10, 10) is False  # class 0 has 4, the others 3
    assert class_balanced([0, 1, 1, 0], 3) is False  # class 2 never drawn
    assert class_balanced(None, 0) is None  # unconditional: nothing to balance
