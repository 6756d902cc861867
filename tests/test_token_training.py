"""Token models in the Lightning modules (issue 6): TokenMLE, TokenSampler, MarkovMetrics, the model
family check, and MLE → DDO self-play end to end with online and pooled reference samples."""

import json
import math
import os

import pytest
import torch
from conftest import make_trainer
from torch import nn

from ddo_lightning.data import MarkovSource, MarkovTokenDataset
from ddo_lightning.metrics import MarkovMetrics
from ddo_lightning.networks import EDMPrecond, TokenGPT, ToyMLP
from ddo_lightning.objectives import DiffusionDDO, TokenDDO, TokenMLE, label_drop_mask
from ddo_lightning.protocols import Samples
from ddo_lightning.samplers import HeunSampler, TokenSampler, mix_seed, sample_tokens, seeded_uniform
from ddo_lightning.training import DDODataModule, DDOModule, MLEModule, OnlineFakeSource, PoolFakeSource, SelfPlay

K, V, L = 2, 3, 4


class SourceModel(nn.Module):
    """The MarkovSource itself as a TokenModel (its exact conditionals as logits); ``shift`` perturbs it."""

    def __init__(self, source: MarkovSource, shift: float = 0.0):
        super().__init__()
        self.source = source
        self.shift = nn.Parameter(torch.tensor(shift))

    def forward(self, tokens, labels):
        cls = labels.argmax(1)
        first = self.source.log_init[cls].unsqueeze(1)  # [B, 1, V]
        rest = self.source.log_trans[cls.unsqueeze(1), tokens[:, :-1]]  # [B, L-1, V]
        logits = torch.cat([first, rest], 1).float()
        return logits + self.shift * torch.arange(logits.shape[-1], dtype=logits.dtype)


def brute_force_nll(model, tokens, labels):
    """−Σ_t log softmax(logits)[t, x_t], one sequence and one position at a time."""
    out = []
    for i in range(len(tokens)):
        logits = model(tokens[i : i + 1], labels[i : i + 1])[0]
        out.append(-sum(float(torch.log_softmax(logits[t].double(), 0)[tokens[i, t]]) for t in range(tokens.shape[1])))
    return torch.tensor(out, dtype=torch.float64)


def test_token_mle_is_the_exact_nll_and_drops_labels_with_the_global_mask():
    torch.manual_seed(0)
    net = TokenGPT(V, L, K, d_model=16, n_layer=1, n_head=2)
    ds = MarkovTokenDataset(num_samples=8, num_classes=K, vocab_size=V, length=L)
    batch = Samples(ds.tokens, ds.labels)
    out = TokenMLE(label_drop=0.0)(net, batch)
    expected = brute_force_nll(net, ds.tokens, ds.labels)
    torch.testing.assert_close(out.per_sample.double(), expected, rtol=1e-5, atol=1e-5)
    assert math.isclose(float(out.loss), float(expected.mean()) / L, rel_tol=1e-5)
    # with dropout: exactly the rows of the global mask get the all-zero label (2 ranks = 1 process)
    mle = TokenMLE(label_drop=0.5)
    seen = []
    hook = net.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    mle(net, batch, generator=torch.Generator().manual_seed(3))
    (drop,) = label_drop_mask(8, 1, 0.5, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert 0 < int(drop.sum()) < 8
    assert torch.equal(seen[0].sum(1) == 0, drop)
    seen.clear()
    mle(net, Samples(ds.tokens[1::2], ds.labels[1::2]), generator=torch.Generator().manual_seed(3), shard=(1, 2))
    assert torch.equal(seen[0].sum(1) == 0, drop[1::2])
    hook.remove()
    with pytest.raises(ValueError, match="label_drop"):
        TokenMLE(label_drop=1.0)


def test_token_sampler_is_the_seeded_inverse_cdf_and_uses_a_networks_own_sampler():
    torch.manual_seed(0)
    net = TokenGPT(V, L, K, d_model=16, n_layer=1, n_head=2).eval()
    seeds = torch.tensor([5, 6, 7])
    labels = torch.eye(K)[[0, 1, 0]]
    s = TokenSampler()
    got = s.from_seeds(net, seeds, labels, (L,), "cpu")
    assert torch.equal(got, sample_tokens(net, labels, seeded_uniform(seeds, L)))
    assert s.nfe == L and s.guidance_free
    assert TokenSampler(cfg=1.5).from_seeds(net, seeds, labels, (L,), "cpu").shape == (3, L)

    class OwnSampler(nn.Module):
        num_sampling_steps = 2

        def sample_tokens(self, labels, uniforms, cfg=0.0, temperature=1.0, top_k=None, top_p=None):
            self.called = (cfg, temperature, top_k, top_p)
            return (uniforms * 10).long()

    own = OwnSampler()
    out = TokenSampler(cfg=2.0, top_k=2).from_seeds(own, seeds, labels, (L,), "cpu")
    assert torch.equal(out, (seeded_uniform(seeds, L) * 10).long())
    assert own.called == (2.0, 1.0, 2, None)
    for bad in (dict(cfg=-1), dict(temperature=0), dict(top_k=0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            TokenSampler(**bad)


def test_markov_metrics_are_exact():
    source = MarkovSource(K, V, L, seed=0)
    m = MarkovMetrics()
    m.connect(source)
    exact = m.measure_network(SourceModel(source))
    assert abs(exact["kl_data_model"]) < 1e-6 and abs(exact["kl_model_data"]) < 1e-6
    off = m.measure_network(SourceModel(source, shift=0.5))
    assert off["kl_data_model"] > 0.01 and off["kl_model_data"] > 0.01
    assert off["kl_sym"] == pytest.approx(off["kl_data_model"] + off["kl_model_data"])
    tokens = source.sample(torch.tensor([0, 1, 1, 0]), seed=2)
    labels = torch.eye(K)[[0, 1, 1, 0]]
    m.update(tokens[:3], labels[:3])
    m.update(tokens[3:], labels[3:])
    want = -source.log_prob(tokens, torch.tensor([0, 1, 1, 0])).mean()
    assert float(m.compute()["sample_nll"]) == pytest.approx(float(want))
    with pytest.raises(ValueError, match="known token source"):
        MarkovMetrics().connect(object())


def test_mixing_model_families_is_a_clear_error():
    gpt = TokenGPT(V, L, K, d_model=8, n_layer=1, n_head=1)
    with pytest.raises(ValueError, match="needs objective TokenDDO"):
        DDOModule(gpt)  # default objective/sampler are the diffusion ones
    with pytest.raises(ValueError, match="needs objective TokenDDO"):
        MLEModule(gpt, sampler=TokenSampler())
    with pytest.raises(ValueError, match="is a diffusion denoiser"):
        DDOModule(EDMPrecond(ToyMLP(data_dim=2, hidden=8, depth=1)), objective=TokenDDO(), sampler=HeunSampler())
    DDOModule(gpt, objective=TokenDDO(), sampler=TokenSampler())  # the right pairing builds
    DDOModule(EDMPrecond(ToyMLP(data_dim=2, hidden=8, depth=1)), objective=DiffusionDDO())


@pytest.mark.parametrize("fake", ["online", "pool"])
def test_mle_then_ddo_self_play_on_tokens(tmp_path, fake):
    """MLE pretraining of a TokenGPT, then 2 DDO rounds; the fakes the module trains on are exactly the
    reference's seeded samples, evaluations carry the exact KLs, and the summary has every round."""
    torch.manual_seed(0)
    ds = MarkovTokenDataset(num_samples=1024, num_classes=K, vocab_size=V, length=L)
    make = lambda: TokenGPT(V, L, K, d_model=16, n_layer=1, n_head=2)  # noqa: E731

    def stage_settings() -> dict:  # both stages: EMA, sampler and evaluation (fresh objects per module)
        return dict(
            ema_halflife_kimg=1,
            sampler=TokenSampler(),
            evaluator=MarkovMetrics(),
            num_eval_samples=64,
            eval_batch_size=64,
        )

    mle = MLEModule(make(), objective=TokenMLE(), lr=3e-3, **stage_settings())
    trainer = make_trainer(tmp_path / "mle", max_steps=40)
    trainer.fit(mle, DDODataModule(ds, batch_size=64))
    ckpt = str(tmp_path / "mle.ckpt")
    trainer.save_checkpoint(ckpt)

    source = (
        OnlineFakeSource(seed=1)
        if fake == "online"
        else PoolFakeSource(size=96, generation_batch_size=32, seed=1, progress=False)
    )
    module = DDOModule(make(), init_from=ckpt, objective=TokenDDO(alpha=2.0, beta=0.5), lr=1e-3, **stage_settings())
    for p, q in zip(module.reference.parameters(), mle.ema.model.parameters()):
        assert torch.equal(p, q)  # starts from the MLE EMA
    seen = []
    orig = module.training_step

    def spy(batch, batch_idx):
        seen.append((module.reference.state_dict(), batch.fake.x.clone(), batch.fake.labels.clone()))
        return orig(batch, batch_idx)

    module.training_step = spy
    selfplay = SelfPlay(
        rounds=2, kimg_per_round=0.32, eval_every_kimg=0.16, monitor="kl_sym", mode="min", dirpath=str(tmp_path / "ddo")
    )
    trainer = make_trainer(tmp_path / "ddo", max_steps=-1, callbacks=[selfplay])
    trainer.fit(module, DDODataModule(ds, batch_size=32, fake=source))

    summary = json.load(open(tmp_path / "ddo" / "summary.json"))
    assert len(summary["rounds"]) == 2
    for metrics in [summary["reference"], *(r["metrics"] for r in summary["rounds"])]:
        for k in ("kl_data_model", "kl_model_data", "kl_sym", "sample_nll"):
            assert math.isfinite(metrics[k])
    # the first step's fakes: tokens the reference draws from the source's seeds, int64, class-balanced
    ref_state, x, labels = seen[0]
    assert x.dtype == torch.int64 and x.shape == (32, L)
    ref = make()
    ref.load_state_dict(ref_state)
    ref.eval()
    if fake == "online":
        idx = torch.arange(32)
        seeds = torch.tensor([mix_seed(1, 0, int(g), 2) for g in idx])
        assert torch.equal(labels, torch.eye(K)[idx % K])
        assert torch.equal(x, TokenSampler().from_seeds(ref, seeds, labels, (L,), "cpu"))
    else:
        pool = TokenSampler().from_seeds(
            ref, torch.tensor([mix_seed(1, 0, i) for i in range(96)]), torch.eye(K)[torch.arange(96) % K], (L,), "cpu"
        )
        # the first step takes the first 32 positions of epoch 0's permutation, seeded by (seed, round, epoch)
        rows = torch.randperm(96, generator=torch.Generator().manual_seed(mix_seed(1, 0, 0, 1)))[:32]
        assert torch.equal(x, pool[rows]) and torch.equal(labels, torch.eye(K)[rows % K])
    assert os.path.isfile(tmp_path / "ddo" / "best.pt")
