"""A class-conditional Markov source of token sequences whose likelihood is exact.

Each class c has an initial distribution π_c and a transition matrix T_c (softmax of Gaussian logits
scaled by ``sharpness``); a sequence's probability is π_c(x_0)·Π T_c(x_{t−1}, x_t). With V^L small the
whole sequence space can be enumerated, so a model's distribution is known exactly and its distance to
the source is computed, not estimated (``exact_kl``).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch.utils.data import Dataset

from ..protocols import Samples


class MarkovSource:
    """Args:
    num_classes: K.
    vocab_size: V.
    length: L.
    sharpness: scale of the logits (larger: more deterministic chains, a harder target for a small model).
    seed: seed of the chains' parameters.
    """

    def __init__(
        self, num_classes: int = 4, vocab_size: int = 4, length: int = 6, sharpness: float = 2.0, seed: int = 0
    ):
        if num_classes < 1 or vocab_size < 2 or length < 1:
            raise ValueError(f"invalid MarkovSource sizes: K={num_classes}, V={vocab_size}, L={length}")
        self.num_classes, self.vocab_size, self.length = num_classes, vocab_size, length
        gen = torch.Generator().manual_seed(seed)
        self.log_init = torch.log_softmax(
            sharpness * torch.randn(num_classes, vocab_size, generator=gen, dtype=torch.float64), -1
        )
        self.log_trans = torch.log_softmax(
            sharpness * torch.randn(num_classes, vocab_size, vocab_size, generator=gen, dtype=torch.float64), -1
        )

    def log_prob(self, tokens: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Exact log p(tokens | class) [B] (float64)."""
        lp = self.log_init[classes, tokens[:, 0]]
        for t in range(1, tokens.shape[1]):
            lp = lp + self.log_trans[classes, tokens[:, t - 1], tokens[:, t]]
        return lp

    def sample(self, classes: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Sequences [B, L] for the given classes [B]."""
        gen = torch.Generator().manual_seed(seed)
        out = torch.empty((len(classes), self.length), dtype=torch.long)
        out[:, 0] = torch.multinomial(self.log_init[classes].exp(), 1, generator=gen).squeeze(1)
        for t in range(1, self.length):
            out[:, t] = torch.multinomial(self.log_trans[classes, out[:, t - 1]].exp(), 1, generator=gen).squeeze(1)
        return out

    def all_sequences(self) -> torch.Tensor:
        """Every sequence [V^L, L]."""
        if self.vocab_size**self.length > 2**20:
            raise ValueError(f"{self.vocab_size}^{self.length} sequences are too many to enumerate")
        return torch.tensor(list(itertools.product(range(self.vocab_size), repeat=self.length)))

    @torch.no_grad()
    def exact_kl(self, model: Any, batch_size: int = 8192) -> dict[str, float]:
        """KL(source ‖ model) and KL(model ‖ source) per class, averaged over classes (nats per sequence),
        from the model's exact sequence log-likelihoods over the whole sequence space."""
        from ..likelihood import token_log_prob

        seqs = self.all_sequences()
        device = (
            next((p.device for p in model.parameters()), torch.device("cpu"))
            if isinstance(model, torch.nn.Module)
            else "cpu"
        )
        forward, reverse = [], []
        for c in range(self.num_classes):
            labels = torch.nn.functional.one_hot(torch.full((len(seqs),), c), self.num_classes).float()
            lq = torch.cat(
                [
                    token_log_prob(model, seqs[i : i + batch_size].to(device), labels[i : i + batch_size].to(device))
                    .double()
                    .cpu()
                    for i in range(0, len(seqs), batch_size)
                ]
            )
            lp = self.log_prob(seqs, torch.full((len(seqs),), c))
            forward.append(float((lp.exp() * (lp - lq)).sum()))
            reverse.append(float((lq.exp() * (lq - lp)).sum()))
        return {"kl_data_model": sum(forward) / len(forward), "kl_model_data": sum(reverse) / len(reverse)}


class MarkovTokenDataset(Dataset):
    """``num_samples`` sequences of a :class:`MarkovSource`, class-balanced, as ``Samples(tokens, one-hot)``.

    Args:
        num_samples: dataset size.
        num_classes, vocab_size, length, sharpness, source_seed: the source (see MarkovSource).
        seed: seed of the drawn sequences.
    """

    def __init__(
        self,
        num_samples: int = 20000,
        num_classes: int = 4,
        vocab_size: int = 4,
        length: int = 6,
        sharpness: float = 2.0,
        source_seed: int = 0,
        seed: int = 1,
    ):
        self.source = MarkovSource(num_classes, vocab_size, length, sharpness, source_seed)
        self.classes = torch.arange(num_samples) % num_classes
        self.tokens = self.source.sample(self.classes, seed)
        self.labels = torch.nn.functional.one_hot(self.classes, num_classes).float()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.source.length,)

    @property
    def label_dim(self) -> int:
        return self.source.num_classes

    @property
    def vocab_size(self) -> int:
        """V, the source's (protocols.TokenVocabulary)."""
        return self.source.vocab_size

    @property
    def ground_truth(self) -> MarkovSource:
        return self.source

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> Samples:
        return Samples(self.tokens[i], self.labels[i])
