"""Autoregressive sampling for next-token models (``protocols.TokenModel``), as a pure function of
(model, labels, per-sample uniforms).

Each sample's randomness is one row of uniforms u ∈ [0, 1)^L drawn from its own seed
(``seeded_uniform``), and token t is the inverse CDF of the model's conditional at u_t: a sample is a
function of its seed only — not of the batch it was drawn in, the device count or the rank — exactly as
``seeded_normal`` makes diffusion samples. Guidance-free by default (what DDO's reference samples must
be, method.md §3); classifier-free guidance, temperature, top-k and top-p are for evaluation.
"""

from __future__ import annotations

import torch

from ..protocols import TokenModel


def seeded_uniform(seeds: torch.Tensor | list[int], length: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Uniforms [len(seeds), length] in float64, row i from a CPU generator seeded with seeds[i]."""
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    gen = torch.Generator()
    rows = []
    for s in seeds:
        gen.manual_seed(s)
        rows.append(torch.rand(length, generator=gen, dtype=torch.float64))
    out = torch.stack(rows) if rows else torch.empty((0, length), dtype=torch.float64)
    return out.to(device) if device is not None else out


def filtered_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """Probabilities [B, V] (float64) from logits after temperature, top-k and top-p (nucleus) filtering."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.double() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
        keep_sorted = before < top_p  # the smallest prefix reaching top_p (the top token always kept)
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


@torch.no_grad()
def sample_tokens(model: TokenModel, labels: torch.Tensor, uniforms: torch.Tensor, *, cfg: float = 0.0,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Tokens [B, L] drawn from ``model`` given ``labels`` [B, K], one position at a time, token t the
    inverse CDF of p(· | tokens<t, c) at ``uniforms[:, t]``. ``cfg`` > 0: logits
    (1 + cfg)·cond − cfg·uncond (the unconditional branch gets all-zero labels). Each step re-runs the
    model on the prefix (no KV cache: simple and exact; networks with a cache can override this)."""
    B, L = uniforms.shape
    device = uniforms.device
    tokens = torch.zeros((B, L), dtype=torch.long, device=device)
    for t in range(L):
        logits = model(tokens, labels)[:, t]
        if cfg:
            logits = (1 + cfg) * logits - cfg * model(tokens, torch.zeros_like(labels))[:, t]
        cdf = filtered_probs(logits, temperature, top_k, top_p).cumsum(-1)
        u = (uniforms[:, t] * cdf[:, -1]).unsqueeze(-1)  # scaled by the total: robust to rounding
        tokens[:, t] = torch.searchsorted(cdf, u, right=True).clamp_max(cdf.shape[-1] - 1).squeeze(-1)
    return tokens
