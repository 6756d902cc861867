"""EDM's deterministic/stochastic Heun sampler (Karras et al. 2022, Algorithm 2).

A pure function: the denoiser, the initial noise, the labels and the σ grid go in; samples come out.
The only randomness beyond ``noise`` is the churn noise, drawn from ``generator`` when S_churn > 0 (one
generator for the batch, or one per sample: ``HeunSampler.from_seeds`` seeds one per sample).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch

from ..protocols import Denoiser, NoiseLevels
from ..schedules import karras_sigmas
from .base import Sampler
from .noise import mix_seed, seeded_normal


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
    generator: torch.Generator | list[torch.Generator] | None = None,
    round_sigma: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE from σ = sigmas[0] to sigmas[-1] (normally 0).

    noise: [B, *D] standard normal (scaled here by sigmas[0]); labels: [B, K];
    sigmas: [N+1] decreasing grid ending in 0 (see ``karras_sigmas``). N steps cost 2N−1 network
    evaluations (the last step is Euler). State kept in float64 as EDM does; the network sees float32.
    round_sigma: the network's nearest supported σ (EDM's ``net.round_sigma``), applied to the raised
    noise level t̂ of a churn step as EDM's generator does (the grid itself comes rounded).
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
        if gamma > 0 and round_sigma is not None:
            t_hat = torch.as_tensor(round_sigma(t_hat)).to(device=sig.device, dtype=torch.float64)
        if gamma > 0:
            eps = _churn_noise(x_cur, generator)
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * eps
        else:
            x_hat = x_cur
        d_cur = (x_hat - d(x_hat, t_hat)) / t_hat  # Euler step (line 7-8)
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:  # 2nd-order correction (lines 9-11)
            d_prime = (x_next - d(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(torch.float32)


def _churn_noise(x: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal float64 like ``x`` [B, *D]: from one generator (or torch's global one), or row i from
    the CPU generator ``generator[i]`` (a sample's churn noise then depends on its own generator only)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} churn generators for a batch of {x.shape[0]}")
        rows = [torch.randn(x.shape[1:], generator=g, dtype=torch.float64) for g in generator]
        return torch.stack(rows).to(x.device)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)


class HeunSampler(Sampler):
    """EDM Heun sampler settings (defaults: EDM CIFAR-10, 18 steps = 35 NFE, no churn).

    Like EDM's generator (``edm_sampler``), the grid follows the network it samples: a network with
    ``sigma_min``/``sigma_max`` narrows the σ range to its own (σ_min = max(sigma_min, net.sigma_min),
    σ_max = min(sigma_max, net.sigma_max)) and one with ``round_sigma`` has every grid σ (and a churn
    step's t̂) moved to the nearest level it supports (iDDPM: its table ``u``); see :meth:`sigmas_for`.
    EDMPrecond's range (0, ∞) and identity rounding leave the grid as configured; EDM2's Precond has
    neither attribute.

    Args:
        num_steps: N grid points (2N−1 network evaluations).
        sigma_min, sigma_max, rho: Karras grid (EDM Eq. 5).
        S_churn, S_min, S_max, S_noise: stochasticity (EDM Algorithm 2); S_churn = 0 is deterministic.
        compile: run the denoiser through ``torch.compile`` (compiled once per network object and reused;
            the weights may change between calls). It pays for large pools (CIFAR-10's 50k), not small ones:
            the first call compiles (docs/performance.md, "torch.compile"). Samples agree with eager mode
            to float rounding.
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

    def with_steps(self, num_steps: int) -> HeunSampler:
        """The same sampler (σ range, ρ, churn) with another number of steps."""
        return HeunSampler(num_steps, **self.grid, **self.churn, compile=self.compile)

    @property
    def nfe(self) -> int:
        return 2 * self.num_steps - 1

    def sigmas_for(self, net: Denoiser) -> torch.Tensor:
        """The [N+1] float64 grid used for ``net``: the Karras grid between the configured bounds clamped
        to the network's ``sigma_min``/``sigma_max``, each point passed through its ``round_sigma``, then
        a final 0 (EDM's ``edm_sampler``). A network without a noise range (not a :class:`~ddo_lightning.protocols.NoiseLevels`): the configured grid."""
        levels = isinstance(net, NoiseLevels)
        net_min, net_max = (net.sigma_min, net.sigma_max) if levels else (None, None)
        lo, hi = self.grid["sigma_min"], self.grid["sigma_max"]
        lo = max(lo, float(net_min)) if net_min is not None else lo
        hi = min(hi, float(net_max)) if net_max is not None else hi
        if (lo, hi) == (self.grid["sigma_min"], self.grid["sigma_max"]):
            sig = self.sigmas.clone()
        elif not lo < hi:
            raise ValueError(
                f"the sampler's σ range [{self.grid['sigma_min']:g}, {self.grid['sigma_max']:g}] and the range of "
                f"{type(net).__name__} [{float(net_min or 0):g}, {float(net_max or math.inf):g}] do not overlap: "
                "set the sampler's sigma_min/sigma_max inside the network's range"
            )
        else:
            sig = karras_sigmas(self.num_steps, lo, hi, self.grid["rho"])
        if levels:
            sig[:-1] = torch.as_tensor(net.round_sigma(sig[:-1])).to(device=sig.device, dtype=torch.float64)
        return sig

    def __call__(
        self,
        denoiser: Denoiser,
        noise: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Samples [N, *D] (float32) from standard normal ``noise`` [N, *D] (the sampler contract);
        ``generator``: the churn noise's (S_churn > 0): one for the batch, one per sample, or None (torch's
        global generator)."""
        sigmas = self.sigmas_for(denoiser)
        round_sigma = denoiser.round_sigma if isinstance(denoiser, NoiseLevels) else None
        if self.compile:
            denoiser = self.compiled(denoiser)
        return heun_sampler(
            denoiser,
            noise,
            labels,
            sigmas,
            generator=generator,
            round_sigma=round_sigma,
            **self.churn,
        )

    def compiled(self, denoiser: Denoiser) -> Denoiser:
        """``torch.compile(denoiser)``, made once per network object (the compiled wrapper reads the
        network's current weights at every call, so promotions and EMA updates need no recompilation)."""
        fn = self._compiled.get(denoiser)
        if fn is None:
            fn = torch.compile(denoiser)
            self._compiled[denoiser] = fn
        return fn

    def noise(
        self, seeds: torch.Tensor | list[int], sample_shape: tuple[int, ...], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Initial noise [N, *sample_shape]: standard normal, row i from seeds[i] (``seeded_normal``)."""
        return seeded_normal(seeds, sample_shape, device=device)

    def from_seeds(
        self,
        net: Denoiser,
        seeds: torch.Tensor | list[int],
        labels: torch.Tensor,
        sample_shape: tuple[int, ...],
        device: torch.device | str,
    ) -> torch.Tensor:
        """Samples from per-sample seeded noise; with churn (S_churn > 0) each sample's churn noise comes
        from its own generator too, seeded with ``mix_seed(seed, 1)``, so a churn sample is also a function
        of its seed only (without churn: exactly ``Sampler.from_seeds``)."""
        gens = None
        if self.churn["S_churn"] > 0:
            listed = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
            gens = [torch.Generator().manual_seed(mix_seed(int(s), 1)) for s in listed]
        return self(net, self.noise(seeds, tuple(sample_shape), device), labels.to(device), generator=gens)

    def __repr__(self) -> str:
        return f"HeunSampler(num_steps={self.num_steps}, nfe={self.nfe}, sigmas=[{self.sigmas[0]:.3g}..{self.sigmas[-2]:.3g}], {self.churn})"
