"""A small class-conditional GPT (pre-LayerNorm transformer decoder) for token DDO on CPU.

Input position 0 is the condition (a class embedding; an all-zero label row — CFG's dropped label —
uses a learned "no condition" embedding), positions 1…L−1 the tokens shifted right; output t is the
distribution of token t (``protocols.TokenModel``). Built from torch's ``nn.TransformerEncoderLayer``
with a causal mask.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Network


class TokenGPT(Network):
    """Args:
    vocab_size: V, tokens are 0…V−1.
    length: L, tokens per sequence.
    label_dim: K, width of one-hot labels (0: unconditional).
    d_model, n_layer, n_head: transformer sizes.
    dropout: dropout in the blocks (DDO switches it off; label dropout is applied outside).
    """

    def __init__(
        self,
        vocab_size: int,
        length: int,
        label_dim: int = 0,
        d_model: int = 64,
        n_layer: int = 2,
        n_head: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if vocab_size < 2 or length < 1 or label_dim < 0 or d_model % n_head:
            raise ValueError(
                f"invalid TokenGPT sizes: vocab_size={vocab_size}, length={length}, "
                f"label_dim={label_dim}, d_model={d_model}, n_head={n_head}"
            )
        self.vocab_size, self.length, self.label_dim = vocab_size, length, label_dim
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.zeros(length, d_model))
        self.cond = nn.Linear(label_dim, d_model, bias=False) if label_dim else None
        self.null = nn.Parameter(torch.zeros(d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, n_head, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)
        nn.init.normal_(self.pos, std=0.02)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(L,): one token sequence (protocols.SampleSpec)."""
        return (self.length,)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] int64, labels [B, K] → logits [B, L, V]."""
        B, L = tokens.shape
        if L != self.length:
            raise ValueError(f"TokenGPT was built for {self.length} tokens, got {L}")
        start = self.null.expand(B, -1)
        if self.cond is not None and labels.shape[1]:
            given = labels.abs().sum(1, keepdim=True) > 0
            start = torch.where(given, self.cond(labels.to(self.null.dtype)), start)
        x = torch.cat([start.unsqueeze(1), self.tok(tokens[:, :-1])], 1) + self.pos
        h = self.blocks(x, mask=self.causal, is_causal=True)
        return self.head(self.norm(h))
