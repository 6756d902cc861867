"""Preconditioning wrappers (Karras et al. 2022, Table 1) around any raw network F:

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ), labels)

| class          | c_skip          | c_out             | c_in          | c_noise                  |
|----------------|-----------------|-------------------|---------------|--------------------------|
| `EDMPrecond`   | σ_d²/(σ²+σ_d²)  | σ·σ_d/√(σ²+σ_d²)  | 1/√(σ²+σ_d²)  | ln(σ)/4                  |
| `VPPrecond`    | 1               | −σ                | 1/√(σ²+1)     | (M−1)·σ_VP⁻¹(σ)          |
| `VEPrecond`    | 1               | σ                 | 1             | ln(σ/2)                  |
| `iDDPMPrecond` | 1               | −σ                | 1/√(σ²+1)     | M−1−argmin_j |u_j − σ|   |

The raw network is stored as ``self.model`` (EDM's attribute name, so parameters are ``model.*``);
iDDPM also keeps EDM's buffer ``u``. Every wrapper runs in float32 (no autocast, no ``use_fp16``: the
DDO log-ratio is a small difference of large sums, docs/method.md §2) and exposes ``sigma_data``,
``sigma_min``, ``sigma_max`` and ``round_sigma`` like EDM's preconditioners.

``sigma_data`` of VP/VE/iDDPM: those parameterisations have no σ_d; the attribute is 0.5 (the std of
images in [−1, 1]) so that code using EDM's loss weight λ(σ) = (σ²+σ_d²)/(σ·σ_d)² works with them.
Their own training losses weight differently (VP: 1/σ², VE: 1/σ², iDDPM: a discrete ε-loss), so λ with
σ_d = 0.5 is EDM's weighting applied to these networks, not the weighting they were trained with.
"""

from __future__ import annotations

import math

import torch

from .base import Backbone, Network


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) for σ of any shape."""
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def raw_network(net: torch.nn.Module) -> torch.nn.Module:
    """The raw network an EDM preconditioner wraps (``net.model``: EDM keeps the sizes there), else ``net``."""
    return net.model if isinstance(net, _Preconditioner) else net


class _Preconditioner(Network):
    """Shared forward of the wrappers; subclasses define ``coefficients(σ [B]) -> (c_skip, c_out, c_in,
    c_noise)``, each [B] float32.

    forward(x [B,*D], sigma [B] or scalar, labels [B,K] or None, **model_kwargs) -> [B,*D] float32.
    ``model_kwargs`` (e.g. ``augment_labels``) go to the raw network unchanged.
    """

    sigma_data: float
    sigma_min: float
    sigma_max: float

    def __init__(self, model: Backbone):
        super().__init__()
        self.model = model

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The raw network's sample shape (protocols.SampleSpec)."""
        return tuple(self.model.sample_shape)

    @property
    def label_dim(self) -> int:
        """The raw network's label width K (protocols.SampleSpec)."""
        return int(self.model.label_dim)

    @label_dim.setter
    def label_dim(self, value: int) -> None:  # the EDM factory records it on the wrapper, as EDM's classes do
        if int(value) != int(self.model.label_dim):
            raise ValueError(f"label_dim {value} differs from the raw network's {self.model.label_dim}")

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def round_sigma(self, sigma):
        """The noise level the network actually supports nearest to σ (identity except iDDPM)."""
        return torch.as_tensor(sigma)

    def _select(self, F_x: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F_x

    @staticmethod
    def _prepare(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1).expand(x.shape[0])
        return x, sigma

    def _raw(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        c_in: torch.Tensor,
        c_noise: torch.Tensor,
        labels: torch.Tensor | None,
        model_kwargs: dict,
    ) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.ndim - 1)
        if labels is not None:
            labels = labels.to(torch.float32)
        F_x = self.model(c_in.reshape(shape) * x, c_noise, labels, **model_kwargs)
        return self._select(F_x, x).to(torch.float32)

    def raw(
        self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None, **model_kwargs
    ) -> torch.Tensor:
        """F(c_in·x; c_noise): the raw network output (for iDDPM, its first C channels)."""
        x, sigma = self._prepare(x, sigma)
        _, _, c_in, c_noise = self.coefficients(sigma)
        return self._raw(x, sigma, c_in, c_noise, labels, model_kwargs)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None, **model_kwargs
    ) -> torch.Tensor:
        x, sigma = self._prepare(x, sigma)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        shape = (-1,) + (1,) * (x.ndim - 1)
        F_x = self._raw(x, sigma, c_in, c_noise, labels, model_kwargs)
        return c_skip.reshape(shape) * x + c_out.reshape(shape) * F_x


class EDMPrecond(_Preconditioner):
    """Wrap a raw network ``model(x, noise_labels, class_labels) -> F_x`` into an EDM denoiser.

    Args:
        model: the raw network; called with x [B, *D] (scaled by c_in), noise_labels [B] and
            class_labels [B, K] (zeros of width 0 for unconditional models).
        sigma_data: the data standard deviation σ_d (0.5 for images in [−1, 1]).
        sigma_min, sigma_max: the supported noise range (EDM's attributes; 0 and ∞ by default).

    forward(x [B,*D], sigma [B] or scalar, labels [B,K]) -> [B,*D] float32. Runs in float32 (no
    autocast: the DDO log-ratio is a small difference of large sums, docs/method.md §2).
    """

    def __init__(
        self, model: Backbone, sigma_data: float = 0.5, *, sigma_min: float = 0.0, sigma_max: float = float("inf")
    ):
        super().__init__(model)
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return edm_coefficients(sigma, self.sigma_data)


class VPPrecond(_Preconditioner):
    """Variance-preserving preconditioning (Song et al. 2021, EDM Table 1 "VP").

    σ(t) = √(exp(½β_d t² + β_min t) − 1); c_noise = (M−1)·t(σ) with t(σ) its inverse.
    Args: model, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5 (EDM's names and defaults);
    sigma_min = σ(epsilon_t), sigma_max = σ(1); sigma_data = 0.5 (see the module docstring).
    """

    def __init__(
        self,
        model: Backbone,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        *,
        sigma_data: float = 0.5,
    ):
        super().__init__(model)
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.M = int(M)
        self.epsilon_t = float(epsilon_t)
        self.sigma_data = float(sigma_data)
        self.sigma_min = self._sigma_float(self.epsilon_t)
        self.sigma_max = self._sigma_float(1.0)

    def _sigma_float(self, t: float) -> float:
        return math.sqrt(math.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

    def sigma(self, t):
        """σ(t) of the VP schedule."""
        t = torch.as_tensor(t)
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sigma_inv(self, sigma):
        """t(σ), the inverse of ``sigma``: the positive root of ½β_d t² + β_min t = ln(1+σ²)."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        one = torch.ones_like(sigma)
        return one, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Preconditioner):
    """Variance-exploding preconditioning (Song et al. 2021, EDM Table 1 "VE"): c_skip = 1, c_out = σ,
    c_in = 1, c_noise = ln(σ/2). Args: model, sigma_min=0.02, sigma_max=100; sigma_data = 0.5 (see
    the module docstring)."""

    def __init__(self, model: Backbone, sigma_min: float = 0.02, sigma_max: float = 100.0, *, sigma_data: float = 0.5):
        super().__init__(model)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        one = torch.ones_like(sigma)
        return one, sigma, one, (0.5 * sigma).log()


class iDDPMPrecond(_Preconditioner):  # noqa: N801 (EDM's class name)
    """Improved-DDPM preconditioning (Nichol & Dhariwal 2021, EDM Table 1 "iDDPM").

    The M+1 supported noise levels are the buffer ``u`` (u_M = 0, u_{j−1} = √((u_j²+1) /
    max(ᾱ(j−1)/ᾱ(j), C_1) − 1), ᾱ(j) = sin²(π j / (2M(C_2+1)))); c_noise = M−1−j for the level u_j
    nearest σ. The raw network has 2·C output channels (ε and variance in the original); only the
    first C (those matching x) are used. Args: model, C_1=0.001, C_2=0.008, M=1000;
    sigma_min = u_{M−1}, sigma_max = u_0; sigma_data = 0.5 (see the module docstring).

    ``u`` is computed in float32 like EDM's (loading a checkpoint replaces it with the stored values).
    """

    def __init__(
        self,
        model: Backbone,
        C_1: float = 0.001,
        C_2: float = 0.008,
        M: int = 1000,
        *,  # noqa: N803
        sigma_data: float = 0.5,
    ):
        super().__init__(model)
        self.C_1 = float(C_1)
        self.C_2 = float(C_2)
        self.M = int(M)
        self.sigma_data = float(sigma_data)
        # float32 arithmetic, as EDM builds the table, so that a fresh wrapper has EDM's noise levels
        # (the recursion loses ~1e-4 relative precision near u_{M-1} in float32; we keep EDM's values).
        j = torch.arange(self.M + 1, device="cpu")
        abar = (0.5 * math.pi * j / self.M / (self.C_2 + 1)).sin() ** 2  # float32 ᾱ(j)
        u = torch.zeros(self.M + 1, device="cpu")
        for i in range(self.M, 0, -1):
            ratio = (abar[i - 1] / abar[i]).clip(min=self.C_1)
            u[i - 1] = ((u[i] ** 2 + 1) / ratio - 1).sqrt()
        self.sigma_min = float(u[self.M - 1])
        self.sigma_max = float(u[0])
        self.register_buffer("u", u.to(torch.empty(0).device))  # built on CPU, also under a meta device

    def round_sigma(self, sigma, return_index: bool = False):
        """The entry of ``u`` nearest each σ (or its index j with ``return_index``), in σ's shape."""
        sigma = torch.as_tensor(sigma)
        dist = (sigma.to(self.u.device, torch.float32).reshape(-1, 1) - self.u.reshape(1, -1)).abs()
        index = dist.argmin(dim=1)
        result = index if return_index else self.u[index].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        one = torch.ones_like(sigma)
        c_noise = (self.M - 1 - self.round_sigma(sigma, return_index=True)).to(torch.float32)
        return one, -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise

    def _select(self, F_x: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F_x[:, : x.shape[1]]
