"""EDM's deterministic/stochastic Heun sampler (Karras et al. 2022, Algorithm 2).

A pure function: the denoiser, the initial noise, the labels and the σ grid go in; samples come out.
The only randomness beyond ``noise`` is the churn noise, drawn from ``generator`` when S_churn > 0.
"""

from __future__ import annotations

import math
import weakref

import torch

from ..protocols import Denoiser
from ..schedules import karras_sigmas
from .base import Sampler
from .noise import seeded_normal


@torch.no_grad()
def heun_sampler(
    denoiser: Denoiser,
    noise: torch.Tensor,
    labels: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE from σ = sigmas[0] to sigmas[-1] (normally 0).

    noise: [B, *D] standard normal (scaled here by sigmas[0]); labels: [B, K];
    sigmas: [N+1] decreasing grid ending in 0 (see ``karras_sigmas``). N steps cost 2N−1 network
    evaluations (the last step is Euler). State kept in float64 as EDM does; the network sees float32.
    Returns [B, *D] float32, no gradient.
    """
    num_steps = len(sigmas) - 1
    if num_steps < 1:
        raise ValueError("the sigma grid needs at least two entries")
    sig = sigmas.to(device=noise.device, dtype=torch.float64)
    batch = noise.shape[0]

    def d(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        sigma = s.to(torch.float32).expand(batch)
        return denoiser(x.to(torch.float32), sigma, labels).to(torch.float64)

    x_next = noise.to(torch.float64) * sig[0]
    for i in range(num_steps):
        t_cur, t_next = sig[i], sig[i + 1]
        x_cur = x_next
        # churn: temporarily raise the noise level (Algorithm 2, lines 4-6)
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_churn > 0 and S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            eps = torch.randn(x_cur.shape, generator=generator, device=x_cur.device, dtype=torch.float64)
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * eps
        else:
            x_hat = x_cur
        d_cur = (x_hat - d(x_hat, t_hat)) / t_hat  # Euler step (line 7-8)
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:  # 2nd-order correction (lines 9-11)
            d_prime = (x_next - d(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(torch.float32)


class HeunSampler(Sampler):
    """EDM Heun sampler settings (defaults: EDM CIFAR-10, 18 steps = 35 NFE, no churn).

    Args:
        num_steps: N grid points (2N−1 network evaluations).
        sigma_min, sigma_max, rho: Karras grid (EDM Eq. 5).
        S_churn, S_min, S_max, S_noise: stochasticity (EDM Algorithm 2); S_churn = 0 is deterministic.
        compile: run the denoiser through ``torch.compile`` (compiled once per network object and reused;
            the weights may change between calls). Measured on CPU (``make bench``): the sampler 16% faster
            on the digits UNet after a 33 s first compilation, so worth it for large pools (CIFAR-10's 50k
            pool), not for small ones. Samples agree with eager mode to float rounding.
    """

    def __init__(
        self,
        num_steps: int = 18,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        S_churn: float = 0.0,
        S_min: float = 0.0,
        S_max: float = float("inf"),
        S_noise: float = 1.0,
        compile: bool = False,
    ):
        self.sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho)  # validates the arguments
        self.compile = compile
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.num_steps = num_steps
        self.grid = dict(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
        self.churn = dict(S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise)

    def with_steps(self, num_steps: int) -> "HeunSampler":
        """The same sampler (σ range, ρ, churn) with another number of steps."""
        return HeunSampler(num_steps, **self.grid, **self.churn, compile=self.compile)

    @property
    def nfe(self) -> int:
        return 2 * self.num_steps - 1

    def __call__(
        self, denoiser: Denoiser, noise: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if self.compile:
            denoiser = self.compiled(denoiser)
        return heun_sampler(denoiser, noise, labels, self.sigmas, generator=generator, **self.churn)

    def compiled(self, denoiser: Denoiser) -> Denoiser:
        """``torch.compile(denoiser)``, made once per network object (the compiled wrapper reads the
        network's current weights at every call, so promotions and EMA updates need no recompilation)."""
        fn = self._compiled.get(denoiser)
        if fn is None:
            fn = torch.compile(denoiser)
            self._compiled[denoiser] = fn
        return fn

    def from_seeds(self, net: Denoiser, seeds: torch.Tensor, labels: torch.Tensor, sample_shape: tuple[int, ...],
                   device: torch.device | str) -> torch.Tensor:
        """Samples from initial noise seeded per sample (``seeded_normal``)."""
        noise = seeded_normal(seeds, sample_shape, device=device)
        return self(net, noise, labels.to(device))

    def __repr__(self) -> str:
        return f"HeunSampler(num_steps={self.num_steps}, nfe={self.nfe}, sigmas=[{self.sigmas[0]:.3g}..{self.sigmas[-2]:.3g}], {self.churn})"
