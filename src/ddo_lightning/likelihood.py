"""Log-likelihood-ratio estimators: what each model family plugs into the DDO loss.

Next-token models (docs/method.md §3): log p(x|c) is exact, the sum over all tokens of the teacher-forced
log-probabilities (no length normalisation), so Δ = log p_θ(x|c) − log p_ref(x|c) needs no noise.

Diffusion (docs/method.md §2, paper Eq. 14–16): log p_θ(x) − log p_ref(x) is estimated from one noise draw
(σ, ε) per sample, shared by target and reference, as the negative difference of λ-weighted
denoising errors summed over dimensions:

    Δ(x) = −(λ(σ)·‖D_θ(x+σε; σ) − x‖² − λ(σ)·‖D_ref(x+σε; σ) − x‖²)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import denoising_error
from .protocols import Denoiser, TokenModel
from .schedules import edm_weight


@dataclass(frozen=True)
class DiffusionLogRatio:
    """Per-sample outputs of :func:`diffusion_log_ratio`, all [N].

    delta: −(err_target − err_reference), with gradient through the target only.
    err_target: λ-weighted summed denoising error of the target (with gradient).
    err_reference: same for the reference (no gradient).
    """

    delta: torch.Tensor
    err_target: torch.Tensor
    err_reference: torch.Tensor


def diffusion_log_ratio(
    target: Denoiser,
    reference: Denoiser,
    x: torch.Tensor,
    labels: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
) -> DiffusionLogRatio:
    """Estimate log p_θ(x) − log p_ref(x) for every sample of x with ONE forward of each network.

    x: [N, *D] clean samples (real and fake concatenated by the caller); labels: [N, K];
    sigma: [N] noise levels; noise: [N, *D] standard normal ε. The same (σ, ε) enters both networks,
    so their difference has low variance (common random numbers). The target runs with grad, the
    reference under ``torch.no_grad``; the reference's mode (eval) is the caller's business.
    """
    if target.sigma_data != reference.sigma_data:
        raise ValueError(f"target and reference disagree on sigma_data ({target.sigma_data} vs {reference.sigma_data})")
    shape = (-1,) + (1,) * (x.ndim - 1)
    noisy = x + sigma.reshape(shape) * noise
    weight = edm_weight(sigma, target.sigma_data)
    # Reference first: its no-grad working memory is freed before the target's autograd activations pile
    # up, so it never stacks on top of them: the step's peak memory is lower (measured in
    # docs/performance.md). The two forwards are
    # independent: the results are identical.
    with torch.no_grad():
        err_reference = denoising_error(reference(noisy, sigma, labels), x, weight)
    err_target = denoising_error(target(noisy, sigma, labels), x, weight)
    return DiffusionLogRatio(-(err_target - err_reference), err_target, err_reference)


def token_log_prob(model: TokenModel, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(tokens | labels) [B]: Σ_t log softmax(logits[:, t])[tokens[:, t]], summed over all L tokens
    (no length normalisation), computed in float32."""
    logits = model(tokens, labels)
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)} (expected [B, L, V])")
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(-1)


@dataclass(frozen=True)
class TokenLogRatio:
    """Per-sample outputs of :func:`token_log_ratio`, all [N]: ``delta`` = log p_θ − log p_ref (gradient
    through the target only) and the two log-likelihoods."""

    delta: torch.Tensor
    logp_target: torch.Tensor
    logp_reference: torch.Tensor


def token_log_ratio(
    target: TokenModel, reference: TokenModel, tokens: torch.Tensor, labels: torch.Tensor
) -> TokenLogRatio:
    """Exact log p_θ(x|c) − log p_ref(x|c) for every sequence, with ONE forward of each network over the
    whole batch (real and fake concatenated by the caller): target with grad, reference without."""
    logp_target = token_log_prob(target, tokens, labels)
    with torch.no_grad():
        logp_reference = token_log_prob(reference, tokens, labels)
    return TokenLogRatio(logp_target - logp_reference, logp_target, logp_reference)
