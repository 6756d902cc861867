"""Token DDO core (docs/method.md §3): the exact sequence log-likelihood against a brute-force product of
conditionals, Δ ≡ 0 at θ = θ_ref, one label-drop mask shared by target and reference, and no gradient
from label-dropped fake examples."""

import itertools
import math

import pytest
import torch
from torch import nn

from ddo_lightning.likelihood import token_log_prob, token_log_ratio
from ddo_lightning.objectives import TokenDDO
from ddo_lightning.protocols import PairedBatch, Samples

V, L, K = 3, 4, 2


class TableModel(nn.Module):
    """logits of token t = table[class or 'none', previous token or BOS]: a class-conditional bigram
    model whose conditionals are explicit (a start token and the condition are handled inside)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(K + 1, V + 1, V, generator=gen))
        self.seen_labels: list[torch.Tensor] = []

    def forward(self, tokens, labels):
        self.seen_labels.append(labels.detach().clone())
        cls = torch.where(labels.sum(1) > 0, labels.argmax(1), torch.full((len(labels),), K))
        prev = torch.cat([torch.full((len(tokens), 1), V), tokens[:, :-1]], 1)  # BOS = V
        return self.table[cls.unsqueeze(1), prev]


def brute_force_log_prob(model: TableModel, seq: tuple[int, ...], cls: int) -> float:
    """Product of the conditionals p(x_t | x_{t-1}, c), computed one position at a time."""
    total, prev = 0.0, V
    for tok in seq:
        probs = torch.softmax(model.table[cls, prev].detach().double(), 0)
        total += math.log(float(probs[tok]))
        prev = tok
    return total


def test_sequence_log_prob_is_the_product_of_conditionals_and_normalised():
    model = TableModel()
    seqs = list(itertools.product(range(V), repeat=L))
    tokens = torch.tensor(seqs)
    for cls in range(K + 1):
        labels = (
            torch.zeros(len(seqs), K) if cls == K else nn.functional.one_hot(torch.full((len(seqs),), cls), K).float()
        )
        logp = token_log_prob(model, tokens, labels)
        expected = torch.tensor([brute_force_log_prob(model, s, cls) for s in seqs], dtype=torch.float64)
        assert torch.allclose(logp.double(), expected.double(), atol=1e-5)
        assert torch.logsumexp(logp.double(), 0).abs() < 1e-5  # summed over all V^L sequences: probability 1


def _batch(n: int, seed: int = 1) -> PairedBatch:
    gen = torch.Generator().manual_seed(seed)
    labels = nn.functional.one_hot(torch.randint(0, K, (n,), generator=gen), K).float()
    return PairedBatch(
        Samples(torch.randint(0, V, (n, L), generator=gen), labels),
        Samples(torch.randint(0, V, (n, L), generator=gen), labels.flip(0)),
    )


def test_delta_is_zero_at_the_reference_and_the_loss_is_exact():
    target, reference = TableModel(), TableModel()
    est = token_log_ratio(target, reference, torch.randint(0, V, (8, L)), torch.zeros(8, K))
    assert torch.equal(est.delta, torch.zeros(8))
    obj = TokenDDO(alpha=3.0, beta=0.5, label_drop=0.25)
    out = obj(target, reference, _batch(64), generator=torch.Generator().manual_seed(0))
    kept = 1 - obj.drop_mask(64, torch.Generator().manual_seed(0), torch.device("cpu"))[1].float()
    assert torch.allclose(out.per_sample, (1 + 3.0 * kept) * math.log(2))  # α = 0 for dropped fakes
    assert float(out.stats["disc_acc"]) == pytest.approx(0.0)


def test_one_drop_mask_shared_by_target_and_reference():
    target, reference = TableModel(), TableModel(seed=1)
    obj = TokenDDO(label_drop=0.3)
    batch = _batch(400)
    out = obj(target, reference, batch, generator=torch.Generator().manual_seed(5))
    (seen_t,), (seen_r,) = target.seen_labels, reference.seen_labels
    assert torch.equal(seen_t, seen_r)  # the same labels, dropped rows included
    dropped = seen_t.sum(1) == 0
    assert 0.2 < float(dropped.float().mean()) < 0.4 and float(out.stats["label_drop_rate"]) == pytest.approx(
        float(dropped.float().mean())
    )
    original = torch.cat([batch.real.labels, batch.fake.labels])
    assert torch.equal(seen_t[~dropped], original[~dropped])
    # the mask is a function of the global batch: two ranks see the single-process mask's rows
    gen = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    whole = obj.drop_mask(8, gen(), torch.device("cpu"))
    halves = [obj.drop_mask(4, gen(), torch.device("cpu"), shard=(r, 2)) for r in range(2)]
    for r in range(2):
        assert torch.equal(halves[r][0], whole[0][r::2]) and torch.equal(halves[r][1], whole[1][r::2])


def test_label_dropped_fakes_contribute_no_gradient_and_normalisation():
    reference = TableModel(seed=3)
    obj = TokenDDO(alpha=20.0, beta=0.5, label_drop=0.5)
    batch = _batch(32)
    drop_fake = obj.drop_mask(32, torch.Generator().manual_seed(2), torch.device("cpu"))[1]
    assert 0 < int(drop_fake.sum()) < 32

    def grad(b, normalize=False):
        target = TableModel(seed=4)
        o = TokenDDO(alpha=20.0, beta=0.5, label_drop=0.5, normalize=normalize)
        o(target, reference, b, generator=torch.Generator().manual_seed(2)).loss.backward()
        return target.table.grad.clone()

    other = batch.fake.x.clone()
    other[drop_fake] = (other[drop_fake] + 1) % V  # change only the dropped fakes' tokens
    changed = PairedBatch(batch.real, Samples(other, batch.fake.labels))
    assert torch.allclose(grad(batch), grad(changed), atol=1e-7)  # they carry no gradient
    kept = ~drop_fake
    other_kept = batch.fake.x.clone()
    other_kept[kept] = (other_kept[kept] + 1) % V
    assert not torch.allclose(grad(batch), grad(PairedBatch(batch.real, Samples(other_kept, batch.fake.labels))))
    assert torch.allclose(grad(batch, normalize=True), grad(batch) / 20.0, atol=1e-7)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="label_drop"):
        TokenDDO(label_drop=1.0)
    with pytest.raises(ValueError, match="beta"):
        TokenDDO(beta=0)
    with pytest.raises(ValueError, match="expected \\[B, L, V\\]"):
        token_log_prob(lambda t, c: torch.zeros(len(t), 2, V), torch.zeros(3, L, dtype=torch.long), torch.zeros(3, 0))


# ---- autoregressive sampling -----------------------------------------------------------------------------
def _sequence_index(tokens):
    return (tokens * torch.tensor([V ** (L - 1 - i) for i in range(L)])).sum(1)


def test_sampled_sequences_follow_the_model_distribution():
    from ddo_lightning.samplers import sample_tokens, seeded_uniform

    model = TableModel(seed=7)
    n = 20000
    labels = nn.functional.one_hot(torch.zeros(n, dtype=torch.long), K).float()
    tokens = sample_tokens(model, labels, seeded_uniform(torch.arange(n), L))
    freq = torch.bincount(_sequence_index(tokens), minlength=V**L).double() / n
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    exact = token_log_prob(model, seqs, labels[: len(seqs)]).double().exp()
    assert 0.5 * (freq - exact).abs().sum() < 0.05  # total variation; ~0.02 expected at n = 20,000


def test_a_sample_depends_on_its_seed_only():
    from ddo_lightning.samplers import sample_tokens, seeded_uniform

    model = TableModel(seed=2)
    seeds = torch.arange(5, 17)
    labels = nn.functional.one_hot(seeds % K, K).float()
    whole = sample_tokens(model, labels, seeded_uniform(seeds, L))
    parts = torch.cat(
        [sample_tokens(model, labels[i : i + 5], seeded_uniform(seeds[i : i + 5], L)) for i in range(0, 12, 5)]
    )
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, sample_tokens(model, labels, seeded_uniform(seeds + 100, L)))


def test_filtering_and_guidance():
    from ddo_lightning.samplers import filtered_probs, sample_tokens, seeded_uniform

    p = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert torch.allclose(filtered_probs(p, top_p=0.6), torch.tensor([[0.625, 0.375, 0.0]], dtype=torch.float64))
    assert torch.allclose(filtered_probs(p, top_k=1), torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(filtered_probs(p, temperature=0.5), torch.softmax(2 * p.double(), -1))
    model = TableModel(seed=4)
    n = 20000
    labels = nn.functional.one_hot(torch.ones(n, dtype=torch.long), K).float()
    greedy = sample_tokens(model, labels[:3], seeded_uniform(torch.arange(3), L), top_k=1)
    assert (greedy == greedy[0]).all()  # top-1: the same (argmax) sequence whatever the seed
    g = 1.5
    first = sample_tokens(model, labels, seeded_uniform(torch.arange(n), L), cfg=g)[:, 0]
    expected = torch.softmax((1 + g) * model.table[1, V].detach().double() - g * model.table[K, V].detach().double(), 0)
    freq = torch.bincount(first, minlength=V).double() / n
    assert (freq - expected).abs().max() < 0.015


# ---- the embedded token source and the small GPT ---------------------------------------------------------
def test_markov_source_is_exact_and_its_samples_follow_it():
    from ddo_lightning.data import MarkovSource, MarkovTokenDataset

    src = MarkovSource(num_classes=2, vocab_size=3, length=4, seed=0)
    seqs = src.all_sequences()
    for c in range(2):
        assert torch.logsumexp(src.log_prob(seqs, torch.full((len(seqs),), c)), 0).abs() < 1e-9
    data = MarkovTokenDataset(num_samples=20000, num_classes=2, vocab_size=3, length=4, seed=3)
    first = data.tokens[data.classes == 0]
    freq = torch.bincount(_sequence_index(first), minlength=81).double() / len(first)
    exact = src.log_prob(seqs, torch.zeros(len(seqs), dtype=torch.long)).exp()
    assert 0.5 * (freq - exact).abs().sum() < 0.06
    assert data[5].x.shape == (4,) and data.label_dim == 2 and data.sample_shape == (4,)


class SourceAsModel(nn.Module):
    """The Markov source itself as a TokenModel (its exact conditionals as logits)."""

    def __init__(self, src):
        super().__init__()
        self.src = src

    def forward(self, tokens, labels):
        c = labels.argmax(1)
        first = self.src.log_init[c].unsqueeze(1)
        rest = self.src.log_trans[c.unsqueeze(1), tokens[:, :-1]]
        return torch.cat([first, rest], 1).float()


def test_exact_kl_is_zero_for_the_source_and_positive_otherwise():
    from ddo_lightning.data import MarkovSource

    src = MarkovSource(num_classes=2, vocab_size=3, length=4, seed=0)
    kl = src.exact_kl(SourceAsModel(src))
    assert abs(kl["kl_data_model"]) < 1e-5 and abs(kl["kl_model_data"]) < 1e-5
    other = MarkovSource(num_classes=2, vocab_size=3, length=4, seed=1)
    kl = src.exact_kl(SourceAsModel(other))
    assert kl["kl_data_model"] > 0.1 and kl["kl_model_data"] > 0.1


def test_token_gpt_is_causal_conditional_and_learns():
    from ddo_lightning.data import MarkovTokenDataset
    from ddo_lightning.networks import TokenGPT

    torch.manual_seed(0)
    net = TokenGPT(vocab_size=4, length=6, label_dim=4, d_model=32, n_layer=2, n_head=4).eval()
    tokens = torch.randint(0, 4, (5, 6))
    labels = nn.functional.one_hot(torch.arange(5) % 4, 4).float()
    base = net(tokens, labels)
    changed = tokens.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 4
    after = net(changed, labels)
    assert torch.allclose(base[:, :4], after[:, :4], atol=1e-6) and not torch.allclose(base[:, 4:], after[:, 4:])
    assert not torch.allclose(net(tokens, torch.zeros_like(labels))[:, 0], base[:, 0])  # the null condition differs
    data = MarkovTokenDataset(num_samples=4096, vocab_size=4, length=6, num_classes=4)
    src = data.ground_truth
    before = src.exact_kl(net)["kl_data_model"]
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(60):
        idx = torch.randint(0, len(data), (256,), generator=torch.Generator().manual_seed(step))
        loss = -token_log_prob(net, data.tokens[idx], data.labels[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    assert src.exact_kl(net)["kl_data_model"] < 0.5 * before  # MLE on samples moves it toward the source
