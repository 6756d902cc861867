"""Autoregressive sampling for next-token models (``protocols.TokenModel``), as a pure function of
(model, labels, per-sample uniforms): ``TokenSampler()(net, uniforms, labels)``, the sampler contract.

Each sample's randomness is one row of uniforms u ∈ [0, 1)^L drawn from its own seed
(``noise.seeded_uniform``), and token t is the inverse CDF (``noise.inverse_cdf``) of the model's
conditional at u_t: a sample is a function of its seed only — not of the batch it was drawn in, the device count or the rank — exactly as
``seeded_normal`` makes diffusion samples. Guidance-free by default (what DDO's reference samples must
be, docs/method.md §3); classifier-free guidance, temperature, top-k and top-p are for evaluation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..protocols import SamplesTokens, TokenModel
from .base import Sampler
from .noise import inverse_cdf, seeded_uniform

__all__ = ["TokenSampler", "filtered_probs", "inverse_cdf", "sample_tokens", "seeded_uniform"]


def filtered_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
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
def sample_tokens(
    model: TokenModel,
    labels: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    cfg: float = 0.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
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
        tokens[:, t] = inverse_cdf(filtered_probs(logits, temperature, top_k, top_p), uniforms[:, t])
    return tokens


class TokenSampler(Sampler):
    """Autoregressive sampling settings. Guidance-free by default, which is what DDO's reference
    samples must be (docs/method.md §3); ``cfg``, ``temperature``, ``top_k``, ``top_p`` are for evaluation.

    A network with its own ``sample_tokens(labels, uniforms, cfg=, temperature=, top_k=, top_p=)``
    method (e.g. VAR, which samples a whole scale at once) is sampled with it; any other
    ``TokenModel`` position by position with :func:`sample_tokens`. Either way token t is the inverse CDF
    of its conditional at the seeded uniform u_t, so a sample is a function of its seed.

    Args:
        cfg: classifier-free guidance scale (0: none): logits (1 + cfg)·cond − cfg·uncond.
        temperature: softmax temperature (1: the model's distribution).
        top_k: keep the k most likely tokens (None: all).
        top_p: nucleus sampling mass (None: all).
    """

    def __init__(
        self, cfg: float = 0.0, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
    ):
        if cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {cfg}")
        filtered_probs(torch.zeros(1, 2), temperature, top_k, top_p)  # validates the settings
        self.cfg, self.temperature, self.top_k, self.top_p = cfg, temperature, top_k, top_p
        self.nfe = float("nan")  # forwards per sample; known after the first call
        self.num_steps = float("nan")

    @property
    def guidance_free(self) -> bool:
        return self.cfg == 0 and self.temperature == 1 and self.top_k is None and self.top_p is None

    def noise(
        self, seeds: torch.Tensor | list[int], sample_shape: tuple[int, ...], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Uniforms [N, L] in [0, 1), float64, row i from seeds[i] (``seeded_uniform``); sample_shape = (L,)."""
        if len(sample_shape) != 1:
            raise ValueError(f"token samples are sequences [L]; got the sample shape {tuple(sample_shape)}")
        return seeded_uniform(seeds, sample_shape[0], device=device)

    @torch.no_grad()
    def __call__(self, net: nn.Module, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Tokens [N, L] (int64): token t the inverse CDF of its conditional at ``noise[:, t]`` (uniforms
        [N, L], what :meth:`noise` makes); labels [N, K]."""
        kw = dict(cfg=self.cfg, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        if isinstance(net, SamplesTokens):  # the model's own loop (VAR's scales)
            tokens = net.sample_tokens(labels, noise, **kw)
            steps = float(net.num_sampling_steps)
        else:
            tokens = sample_tokens(net, labels, noise, **kw)
            steps = float(noise.shape[1])
        self.num_steps = steps
        self.nfe = steps * (2 if self.cfg else 1)
        return tokens

    def __repr__(self) -> str:
        return f"TokenSampler(cfg={self.cfg}, temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p})"
