"""VAR for autoregressive DDO (docs/var.md): checkpoint compatibility with FoundationVision/VAR (state-dict
keys, shapes and parameter counts of the released sizes, and numerical parity with the original code on
a tiny model), the block-causal structure over scales, the seeded scale-by-scale sampler against the
teacher-forced likelihood, the quarantined quirks (label dropout in forward, stochastic depth, init
patches), strict loading, the token dataset and TokenDDO on the adapter.

Fixtures (tests/data, made by scripts/make_var_fixtures.py from FoundationVision/VAR at commit
78b95394fc5896192e3a003e4b295f8ea743c48f): ``var_state_dict_shapes.json`` (the original's state-dict
keys/shapes for the VQ-VAE, VAR-d16 and VAR-d30, parameter counts for d16/d20/d24/d30) and
``var_tiny_parity.pt`` (outputs of the original code on a tiny model whose weights follow ``fill``).
"""

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.functional import one_hot

from ddo_lightning.data import VARTokenDataset, encode_dataset
from ddo_lightning.likelihood import token_log_prob, token_log_ratio
from ddo_lightning.networks.var import (
    VAR,
    VQVAE,
    CheckpointMismatch,
    VARNetwork,
    VARTokenModel,
    build_vae,
    build_vae_var,
    build_var,
    load_vae_checkpoint,
    load_var_checkpoint,
)
from ddo_lightning.objectives import TokenDDO
from ddo_lightning.pixels import model_to_uint8, quantize
from ddo_lightning.protocols import PairedBatch, Samples, TokenModel
from ddo_lightning.samplers import TokenSampler
from ddo_lightning.samplers.tokens import seeded_uniform

DATA = Path(__file__).parent / "data"
PARITY = torch.load(DATA / "var_tiny_parity.pt", weights_only=True)
K = 5  # classes of the tiny model
PN = (1, 2, 3)
L = 14


def _cfg(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _fixture_script():
    """scripts/make_var_fixtures.py, which made the parity fixture: its weight recipe ``fill`` is reused
    here (the script imports only torch and the standard library at module level)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_var_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_var_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fill = _fixture_script().fill  # parameters in sorted-name order, 0.1·N(0, 1), +1 for 1-D '*weight'


_VAE: list[VQVAE] = []


def tiny(**var_overrides) -> tuple[VQVAE, VAR]:
    """The parity fixture's tiny VQ-VAE (built once, frozen, shared) and a fresh VAR on it."""
    if not _VAE:
        _VAE.append(VQVAE(**_cfg(PARITY["config"]["vae"])))
        fill(_VAE[0], PARITY["weight_seeds"]["vae"])
    var = VAR(_VAE[0], **{**_cfg(PARITY["config"]["var"]), **var_overrides})
    fill(var, PARITY["weight_seeds"]["var"])
    return _VAE[0], var.eval()


@pytest.fixture(scope="module")
def model() -> VARTokenModel:
    vae, var = tiny()
    return VARTokenModel(var, vae)


def labels_of(classes: list[int | None]) -> torch.Tensor:
    """One-hot rows; None → an all-zero row (no condition)."""
    out = torch.zeros(len(classes), K)
    for i, c in enumerate(classes):
        if c is not None:
            out[i, c] = 1
    return out


# ---------------------------------------------------------------- checkpoint compatibility


def test_state_dict_keys_shapes_and_counts_match_the_original():
    ref = json.loads((DATA / "var_state_dict_shapes.json").read_text())
    assert ref["commit"] == "78b95394fc5896192e3a003e4b295f8ea743c48f"
    with torch.device("meta"):
        vae = build_vae()
        got = [[k, list(v.shape)] for k, v in vae.state_dict().items()]
        assert got == ref["vae"]["state_dict"]  # same names, same order, same shapes
        assert sum(p.numel() for p in vae.parameters()) == ref["vae"]["num_params"] == 108_948_355
        for depth in (16, 20, 24, 30):
            var = build_var(vae, depth)
            entry = ref["var"][f"d{depth}"]
            if "state_dict" in entry:
                assert [[k, list(v.shape)] for k, v in var.state_dict().items()] == entry["state_dict"]
            assert len(var.state_dict()) == entry["num_tensors"]
            assert sum(p.numel() for p in var.parameters()) == entry["num_params"]
            del var
    counts = {d: ref["var"][f"d{d}"]["num_params"] for d in (16, 30)}
    assert round(counts[16] / 1e6, 1) == 310.3 and round(counts[30] / 1e9, 2) == 2.01  # the VAR paper: 310M, 2.0B


def test_numerical_parity_with_the_original_code(model):
    """Tokenizer, teacher-forcing input, reconstruction, logits and a greedy CFG sample of the original code
    (same weights by the ``fill`` recipe) are reproduced."""
    p = PARITY
    vae = model.vae
    assert torch.equal(model.encode(p["images"]), p["tokens"])
    assert torch.allclose(vae.quantize.idxBl_to_var_input(model.split(p["tokens"])), p["var_input"], atol=1e-5)
    assert torch.allclose(model.decode(p["tokens"]), p["recon"], atol=1e-4)
    labels = labels_of([int(c) if c < K else None for c in p["labels"]])  # class 5 = the null class
    with torch.no_grad():
        assert torch.allclose(model(p["tokens"], labels), p["logits"], atol=1e-4)
        assert torch.allclose(model.var.forward_logits(p["labels"], p["var_input"]), p["logits"], atol=1e-4)
    # greedy (top-1) sampling with VAR's linearly ramped CFG: the uniforms do not matter
    out = model.sample(
        labels_of(p["greedy_labels"].tolist()),
        torch.rand(2, L, dtype=torch.float64),
        cfg=p["greedy_cfg"],
        top_k=1,
        return_images=True,
    )
    assert torch.equal(out.tokens, p["greedy_tokens"])
    assert torch.allclose((out.images + 1) / 2, p["greedy_images01"], atol=1e-4)
    # the greedy tokens are not the unguided ones: the guidance path was exercised
    plain = model.sample(labels_of(p["greedy_labels"].tolist()), torch.rand(2, L, dtype=torch.float64), top_k=1)
    assert not torch.equal(plain.tokens, p["greedy_tokens"])


def test_phi_sharing_follows_the_original_ticks():
    """Four partially shared φ for ten scales: scales 2 and 7 lie exactly halfway between two ticks, and the
    original's floating-point rounding decides; the fixture records its choice."""
    ref = json.loads((DATA / "var_state_dict_shapes.json").read_text())["phi_index_per_scale"]
    with torch.device("meta"):
        q = build_vae().quantize
        chosen = [next(i for i, m in enumerate(q.quant_resi.qresi_ls) if m is q.phi(si)) for si in range(10)]
        assert chosen == ref == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
        q0 = VQVAE(share_quant_resi=0, ch=32).quantize
        assert [
            next(i for i, m in enumerate(nn.ModuleList.__iter__(q0.quant_resi)) if m is q0.phi(si)) for si in range(10)
        ] == list(range(10))
        q1 = VQVAE(share_quant_resi=1, ch=32).quantize
        assert all(q1.phi(si) is q1.quant_resi.qresi for si in range(10))


def test_strict_loading_and_clear_errors(tmp_path, model):
    var_path, vae_path = tmp_path / "var_tiny.pth", tmp_path / "vae_tiny.pth"
    torch.save(model.var.state_dict(), var_path)
    torch.save(model.vae.state_dict(), vae_path)
    kw = dict(num_classes=K, embed_dim=64, num_heads=2, attn_l2_norm=True)
    vae = load_vae_checkpoint(vae_path, VQVAE(**_cfg(PARITY["config"]["vae"])))
    var = load_var_checkpoint(var_path, vae, **kw)  # depth inferred from blocks.*
    assert var.depth == 2 and not vae.training and not any(p.requires_grad for p in vae.parameters())
    tokens, labels = PARITY["tokens"], labels_of([1, None])
    with torch.no_grad():
        assert torch.equal(VARTokenModel(var.eval(), vae)(tokens, labels), model(tokens, labels))

    state = model.var.state_dict()
    bad = {k: v for k, v in state.items() if k != "head.bias"} | {"head.bias_extra": torch.zeros(1)}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatch, match=r"missing keys: head\.bias.*unexpected keys: head\.bias_extra"):
        load_var_checkpoint(tmp_path / "bad.pth", vae, depth=2, **kw)
    with pytest.raises(
        CheckpointMismatch, match=r"shape mismatches: class_emb\.weight: checkpoint \(6, 64\) vs network \(11, 64\)"
    ):
        load_var_checkpoint(var_path, vae, **{**kw, "num_classes": 10})
    with pytest.raises(CheckpointMismatch, match="unexpected keys"):  # a VAR checkpoint is not a VQ-VAE
        load_vae_checkpoint(var_path, VQVAE(**_cfg(PARITY["config"]["vae"])))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_var_checkpoint(tmp_path / "list.pth", vae)
    with pytest.raises(FileNotFoundError):
        load_var_checkpoint(tmp_path / "absent.pth", vae)
    # the codebook-usage buffer of a VQ-VAE trained with other scales is tolerated, as by the original
    vstate = dict(model.vae.state_dict())
    vstate["quantize.ema_vocab_hit_SV"] = torch.zeros(10, 32)
    torch.save(vstate, tmp_path / "vae_other_scales.pth")
    load_vae_checkpoint(tmp_path / "vae_other_scales.pth", VQVAE(**_cfg(PARITY["config"]["vae"])))


def test_config_network_loads_released_style_state_dicts(tmp_path, model):
    """``VARNetwork`` (what configs build) reads the tokenizer from a file and takes a plain VAR state dict
    (a released ``var_d16.pth``) through ``DDOModule``'s generic ``load_network_weights``; inside a parent
    module the state dict nests under the parent's prefix (Lightning's ``target.``/``reference.``)."""
    from ddo_lightning.checkpoints.load import load_network_weights

    torch.save(model.vae.state_dict(), tmp_path / "vae.pth")
    torch.save(model.var.state_dict(), tmp_path / "var.pth")
    arch = dict(
        depth=2, num_classes=K, patch_nums=PN, vocab_size=32, z_channels=8, vae_ch=32, embed_dim=64, num_heads=2
    )
    net = VARNetwork(vae_checkpoint=str(tmp_path / "vae.pth"), init=False, **arch)
    load_network_weights(net, str(tmp_path / "var.pth"))
    tokens, labels = PARITY["tokens"], labels_of([1, None])
    with torch.no_grad():
        assert torch.equal(net.eval()(tokens, labels), model(tokens, labels))
        net2 = VARNetwork(vae_checkpoint=str(tmp_path / "vae.pth"), var_checkpoint=str(tmp_path / "var.pth"), **arch)
        assert torch.equal(net2.eval()(tokens, labels), model(tokens, labels))
    parent = nn.ModuleDict({"target": net})
    state = parent.state_dict()
    assert list(state) == ["target." + k for k in model.var.state_dict()]
    fresh = nn.ModuleDict({"target": VARNetwork(**arch)})
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh["target"].var.head.weight, model.var.head.weight)
    fresh["target"].load_state_dict({"var." + k: v for k, v in model.var.state_dict().items()})  # old-style names too


def test_building_patches_no_torch_nn_class():
    def snapshot():
        return {
            (cls, name): value
            for cls in vars(nn).values()
            if isinstance(cls, type)
            for name, value in vars(cls).items()
        }

    before = snapshot()
    vae, var = build_vae_var(depth=2, patch_nums=PN, V=32, Cvae=8, ch=32, num_classes=K)  # default init + init_weights
    VARTokenModel(var, vae)
    after = snapshot()
    assert before.keys() == after.keys()
    assert [k for k in before if before[k] is not after[k]] == []
    # init_weights ran: zero biases, head scaled down, AdaLN gates tiny
    assert torch.all(var.head.bias == 0) and float(var.head.weight.detach().std()) < 0.02 * 0.2
    assert float(var.blocks[0].ada_lin[1].weight.detach()[: 2 * var.C].abs().max()) < 1e-4


# ---------------------------------------------------------------- structure: block-causal over scales


def test_attention_mask_is_block_causal_over_scales(model):
    scale = [k for k, pn in enumerate(PN) for _ in range(pn * pn)]
    expected = torch.tensor([[0.0 if scale[j] <= scale[i] else -math.inf for j in range(L)] for i in range(L)])
    assert torch.equal(model.var.attn_bias_for_masking[0, 0], expected)
    with torch.device("meta"):
        assert build_var(build_vae(), 16).attn_bias_for_masking.shape == (1, 1, 680, 680)


def test_tokens_influence_exactly_the_later_scales(model):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (3, L), generator=gen)
    labels = labels_of([0, 3, None])
    bounds = model.var.begin_ends
    with torch.no_grad():
        base = model(tokens, labels)
        for k, (b, e) in enumerate(bounds):
            other = tokens.clone()
            other[:, b:e] = (other[:, b:e] + 1 + torch.randint(0, 30, (3, e - b), generator=gen)) % 32
            out = model(other, labels)
            assert torch.equal(out[:, :e], base[:, :e]), f"scale {k} changed logits of scales <= {k}"
            if e < L:
                assert (out[:, e:] - base[:, e:]).abs().amax(-1).min() > 1e-6, (
                    f"scale {k} did not reach every later position"
                )
        # within a scale, positions attend to each other: perturb one input position of the last scale
        x = model.vae.quantize.idxBl_to_var_input(model.split(tokens))
        cls = model.class_index(labels)
        b, e = bounds[-1]
        x2 = x.clone()
        x2[:, b - model.var.first_l] += 1.0  # the input at the first position of the last scale
        d = (model.var.forward_logits(cls, x2) - model.var.forward_logits(cls, x)).abs().amax(-1)
        assert torch.all(d[:, :b] == 0) and torch.all(d[:, b:] > 1e-6)


def test_zero_label_is_the_null_class(model):
    tokens = PARITY["tokens"]
    x = model.vae.quantize.idxBl_to_var_input(model.split(tokens))
    with torch.no_grad():
        null = model.var.forward_logits(torch.full((2,), K), x)
        assert torch.equal(model(tokens, torch.zeros(2, K)), null)
        assert torch.equal(model(tokens, torch.zeros(2, 0)), null)  # unconditional labels
        assert not torch.allclose(model(tokens, labels_of([0, 0])), null)
    assert model.class_index(labels_of([4, None, 0])).tolist() == [4, K, 0]
    with pytest.raises(ValueError, match="3 columns"):
        model(tokens, torch.zeros(2, 3))


def test_likelihood_is_deterministic_in_eval_and_train_mode():
    """VAR's forward drops labels (cond_drop_rate) and its blocks drop paths (stochastic depth); the adapter
    quarantines both, so the likelihood is a function of (tokens, labels) in either mode."""
    vae, var = tiny(cond_drop_rate=0.5, drop_path_rate=0.5)
    tokens, labels = PARITY["tokens"].repeat(8, 1), labels_of([1, 2] * 8)
    x = vae.quantize.idxBl_to_var_input(list(tokens.split([1, 4, 9], 1)))
    cls = labels.argmax(1)
    var.train()
    torch.manual_seed(0)
    assert not torch.equal(var(cls, x), var(cls, x))  # the raw quirks: random in train mode
    model = VARTokenModel(var, vae)
    assert model.var.cond_drop_rate == 0
    for mode in (True, False):
        model.train(mode)
        assert torch.equal(token_log_prob(model, tokens, labels), token_log_prob(model, tokens, labels))
    model.train()
    lp_train = token_log_prob(model, tokens, labels)
    model.eval()
    assert torch.allclose(lp_train, token_log_prob(model, tokens, labels), atol=1e-5)
    vae2, var2 = tiny(drop_path_rate=0.5)
    stochastic = VARTokenModel(var2, vae2, keep_drop_path=True).train()
    torch.manual_seed(0)
    assert not torch.equal(token_log_prob(stochastic, tokens, labels), token_log_prob(stochastic, tokens, labels))


# ---------------------------------------------------------------- the sampler


def test_sampler_conditionals_agree_with_teacher_forcing(model):
    labels = labels_of([0, 2, None, 4])
    u = seeded_uniform([11, 12, 13, 14], L)
    out = model.sample(labels, u)
    assert out.tokens.shape == (4, L) and out.tokens.dtype == torch.long
    with torch.no_grad():
        assert torch.allclose(token_log_prob(model, out.tokens, labels).double(), out.log_prob, atol=1e-4)
        # guided: the sampler's log-probabilities are those of (1 + s_k)·cond − s_k·uncond, s_k = cfg·k/(K−1)
        cfg = 2.0
        g = model.sample(labels, u, cfg=cfg)
        cond = model(g.tokens, labels).double()
        uncond = model(g.tokens, torch.zeros_like(labels)).double()
        s = torch.tensor(
            [cfg * k / (len(PN) - 1) for k, pn in enumerate(PN) for _ in range(pn * pn)], dtype=torch.float64
        )
        guided = ((1 + s[:, None]) * cond - s[:, None] * uncond).log_softmax(-1)
        expected = guided.gather(-1, g.tokens.unsqueeze(-1)).squeeze(-1).sum(1)
        assert torch.allclose(expected, g.log_prob, atol=1e-4)
        const = VARTokenModel(model.var, model.vae, cfg_schedule="constant").sample(labels, u, cfg=cfg)
        assert not torch.allclose(const.log_prob, g.log_prob)


def test_sampler_returns_its_own_tokens_and_images(model):
    labels, u = labels_of([1, None, 3]), seeded_uniform([5, 6, 7], L)
    out = model.sample(labels, u, return_images=True)
    assert out.images.shape == (3, 3, 48, 48) and float(out.images.abs().max()) <= 1
    assert torch.allclose(model.decode(out.tokens), out.images, atol=1e-5)
    assert torch.equal(model.sample_tokens(labels, u), out.tokens)
    assert model.num_sampling_steps == 3 and model.sample_shape == (L,)
    # inverse CDF: u → 0 picks the first token with positive probability, u → 1 the last
    lo = model.sample(labels, torch.zeros(3, L, dtype=torch.float64), top_k=1)
    assert torch.equal(lo.tokens, model.sample(labels, torch.full((3, L), 0.999, dtype=torch.float64), top_k=1).tokens)


def test_samples_depend_on_their_seed_only(model):
    seeds, labels = [3, 1, 4, 1], labels_of([0, 1, 2, 1])
    whole = model.sample_tokens(labels, seeded_uniform(seeds, L), cfg=1.0, top_p=0.9)
    parts = [
        model.sample_tokens(labels[i : i + 1], seeded_uniform(seeds[i : i + 1], L), cfg=1.0, top_p=0.9)
        for i in range(4)
    ]
    assert torch.equal(whole, torch.cat(parts))
    assert torch.equal(whole[1], whole[3])  # same seed and label: same sample
    assert not torch.equal(whole[0], whole[2])


def test_token_sampler_uses_the_scale_wise_sampler(model):
    from ddo_lightning.samplers import TokenSampler

    seeds, labels = torch.tensor([7, 8]), labels_of([2, None])
    sampler = TokenSampler(cfg=0.5, top_k=20)
    tokens = sampler.from_seeds(model, seeds, labels, (L,), "cpu")
    assert torch.equal(tokens, model.sample_tokens(labels, seeded_uniform(seeds, L), cfg=0.5, top_k=20))
    assert sampler.num_steps == 3 and sampler.nfe == 6  # one forward per scale, doubled by CFG


def test_reencode_returns_the_tokens_of_the_decoded_images(model):
    labels, u = labels_of([0, 2, None]), seeded_uniform([21, 22, 23], L)
    tokens = model.sample_tokens(labels, u)
    reencoding = VARTokenModel(model.var, model.vae, fake_tokens="reencode")
    assert torch.equal(reencoding.sample_tokens(labels, u), tokens)  # sampling (evaluation) is never re-encoded
    assert torch.equal(model.prepare_fakes(tokens), tokens)
    re8 = reencoding.prepare_fakes(tokens)
    assert torch.equal(re8, model.encode(quantize(model.decode(tokens))))
    re = VARTokenModel(model.var, model.vae, fake_tokens="reencode", reencode_uint8=False).prepare_fakes(tokens)
    assert torch.equal(re, model.encode(model.decode(tokens)))
    assert not torch.equal(re, tokens)  # the random tiny tokenizer is not idempotent: the round trip is real
    with pytest.raises(ValueError, match="fake_tokens"):
        VARTokenModel(model.var, model.vae, fake_tokens="pixels")


def test_ddo_module_reencodes_its_fakes_but_never_its_evaluation_samples(model):
    from ddo_lightning.training import DDOModule

    module = DDOModule(
        VARTokenModel(model.var, model.vae, fake_tokens="reencode"), objective=TokenDDO(), sampler=TokenSampler()
    )
    module.sample_shape, module.label_dim = (L,), K
    seeds, labels = torch.tensor([3, 4]), labels_of([1, 2])
    sampled = module.sample(module.reference, seeds, labels)  # what evaluation sees
    assert torch.equal(sampled, model.sample_tokens(labels, seeded_uniform(seeds, L)))
    assert torch.equal(module.sample_reference(seeds, labels), model.encode(quantize(model.decode(sampled))))


# ---------------------------------------------------------------- DDO on the adapter


def test_adapter_holds_a_shared_frozen_vae(model):
    assert isinstance(model, TokenModel)
    assert list(model.state_dict()) == list(model.var.state_dict())  # VAR's own names: var_d16.pth fits as is
    assert all(p is not q for p in model.parameters() for q in model.vae.parameters())
    ref = copy.deepcopy(model)
    assert ref.vae is model.vae and ref.var is not model.var
    assert ref.var.vae_proxy[0] is model.vae  # the copied VAR points at the same tokenizer: not copied
    model.train()
    assert not model.vae.training
    model.eval()


def test_token_ddo_runs_on_the_adapter_with_zero_log_ratio_at_the_reference():
    vae, var = tiny(cond_drop_rate=0.1, drop_path_rate=0.2)
    target = VARTokenModel(var, vae).train()
    reference = copy.deepcopy(target).eval().requires_grad_(False)
    labels = labels_of([0, 1, 2, 3, 4, None])
    real = Samples(target.encode(PARITY["images"].repeat(3, 1, 1, 1)), labels)
    fake = Samples(reference.sample_tokens(labels, seeded_uniform(range(6), L)), labels)
    est = token_log_ratio(target, reference, torch.cat([real.x, fake.x]), torch.cat([labels, labels]))
    assert torch.equal(est.delta, torch.zeros(12))
    obj = TokenDDO(alpha=10.0, beta=0.02, label_drop=0.1)
    out = obj(target, reference, PairedBatch(real, fake), generator=torch.Generator().manual_seed(0))
    kept = 1 - obj.drop_mask(6, torch.Generator().manual_seed(0), torch.device("cpu"))[1].float()
    assert torch.allclose(out.per_sample, (1 + 10.0 * kept) * math.log(2))
    out.loss.backward()
    grads = [p.grad for p in target.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in reference.parameters()) and all(p.grad is None for p in vae.parameters())


# ---------------------------------------------------------------- the token dataset


class _Images(torch.utils.data.Dataset):
    label_dim = K

    def __init__(self, images: torch.Tensor, classes: list[int]):
        self.images, self.labels = images, one_hot(torch.tensor(classes), K).float()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return Samples(self.images[i], self.labels[i])


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_token_dataset_round_trip(tmp_path, model, suffix):
    images = quantize(torch.rand(5, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    classes = [4, 0, 2, 2, 1]
    path = encode_dataset(_Images(images, classes), model, tmp_path / f"tokens{suffix}", batch_size=2, progress=False)
    assert os.listdir(tmp_path) == [path.name]  # written atomically: no temporary left
    ds = VARTokenDataset(path)
    assert len(ds) == 5 and ds.sample_shape == (L,) and ds.label_dim == K and ds.vocab_size == 32
    x, lab = ds[3]
    assert x.dtype == torch.int64 and lab.dtype == torch.float32
    assert torch.equal(torch.stack([ds[i].x for i in range(5)]), model.encode(images))
    assert torch.equal(torch.stack([ds[i].labels for i in range(5)]), one_hot(torch.tensor(classes), K).float())
    if suffix == ".npz":
        with np.load(path) as f:
            assert f["tokens"].dtype == np.int16
        bad = tmp_path / "bad.npz"
        np.savez(bad, tokens=np.zeros((2, L), np.int16), labels=np.array([0, 7]), num_classes=np.int64(K))
        with pytest.raises(ValueError, match="labels outside"):
            VARTokenDataset(bad)
        np.savez(bad, tokens=np.zeros((2, L), np.int16), labels=np.array([0, 1]))
        with pytest.raises(ValueError, match="num_classes"):
            VARTokenDataset(bad)
        assert VARTokenDataset(bad, num_classes=K).label_dim == K


def test_full_length_ten_scale_path():
    """The released geometry (10 scales, 680 tokens, 256 px, the φ ties at scales 2 and 7) with a narrow
    model: sampler = teacher forcing, decode = the sampler's images, encode gives 680 tokens."""
    vae = build_vae(V=64, Cvae=8, ch=32)
    model = VARTokenModel(build_var(vae, depth=1, num_classes=10, embed_dim=64, num_heads=2), vae)
    labels = torch.eye(10)[[3, 7]]
    out = model.sample(labels, seeded_uniform([1, 2], 680), return_images=True)
    assert out.tokens.shape == (2, 680) and out.images.shape == (2, 3, 256, 256)
    assert torch.allclose(token_log_prob(model, out.tokens, labels).double(), out.log_prob, atol=1e-3)
    assert torch.allclose(model.decode(out.tokens), out.images, atol=1e-5)
    assert model.encode(out.images).shape == (2, 680)


class _MeanColour(nn.Module):
    feature_dim = 3

    def forward(self, images_uint8):
        return images_uint8.float().mean((2, 3))


def test_fid_of_tokens_through_the_var_decoder(tmp_path, model):
    from ddo_lightning.metrics import FrechetDistance
    from ddo_lightning.networks.var import VARImageDecoder

    torch.save(model.vae.state_dict(), tmp_path / "vae.pth")
    vae_kwargs = dict(V=32, Cvae=8, ch=32, patch_nums=PN)
    decoder = VARImageDecoder(str(tmp_path / "vae.pth"), vae_kwargs=vae_kwargs, decode_batch_size=2)
    fid_tokens = FrechetDistance(_MeanColour(), decoder=decoder)
    fid_images = FrechetDistance(_MeanColour())
    tokens = model.sample_tokens(labels_of([0, 1, 2]), seeded_uniform([1, 2, 3], L))
    images = model.decode(tokens)
    assert torch.equal(decoder(tokens), model_to_uint8(images))  # the tokenizer's decode, 8-bit
    fid_tokens.update(tokens)
    fid_images.update(images)
    assert int(fid_tokens.count) == 3 and torch.allclose(fid_tokens.total, fid_images.total)
    assert not any("vae" in k or "decoder" in k for k in fid_tokens.state_dict())
    with pytest.raises(ValueError, match="expected tokens"):
        decoder(tokens[:, :-1])
