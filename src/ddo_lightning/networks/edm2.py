"""EDM2's magnitude-preserving U-Net and its preconditioner (Karras et al., "Analyzing and Improving the
Training Dynamics of Diffusion Models", CVPR 2024), re-implemented from the paper (config G, Fig. 21,
Eqs. 47/66/75/81/88/103) so that NVIDIA's snapshots (``edm2-img64-s-1073741-0.075.pkl`` & co.) load with
``strict=True``: constructor arguments, module names and parameter/buffer names and shapes are EDM2's
(``training/networks_edm2.py``; checked against a key → shape dump of the original code in
``tests/data/edm2_state_dict_shapes.json``).

Magnitude preservation:

* ``normalize(x, dim)``: unit RMS over ``dim`` (all but the first by default), ε = 1e-4;
* ``MPConv``: weight-normalised convolution / linear layer with no bias; in training mode it first
  rescales its stored weight to unit RMS per output channel (*forced* weight normalisation, Eq. 66),
  then applies the normalised weight scaled by ``gain/√fan_in``;
* ``mp_silu`` = SiLU / 0.596, ``mp_sum`` (a weighted sum with unit-variance output), ``mp_cat`` (a
  weighted concatenation), ``MPFourier`` (random Fourier features with √2 cos).

Differences from the original that do not change a single stored name or an eval-mode output:

* Forced weight normalisation is skipped when the stored weight has not changed since this layer last
  normalised it (no optimizer step or load in between): a second train-mode forward in one step then
  modifies nothing in place, so autograd stays correct for any number of forwards (the original would
  raise "modified by an inplace operation" at backward). The first train-mode forward after each change
  renormalises exactly like the original.
* Dropout is an ``nn.Dropout`` submodule (it has no state) so that ``training.base.disable_dropout``
  finds it; EDM2-M and larger were trained with dropout 0.1.
* Activation clipping is out of place.
* ``Precond.logvar_linear`` (the uncertainty head of EDM2's loss) is frozen at construction (see
  :class:`Precond`); ``use_fp16`` only takes effect on CUDA (as in EDM2) and our DDO presets switch it off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Network

__all__ = [
    "EDM2_PRESETS",
    "Block",
    "MPConv",
    "MPFourier",
    "Precond",
    "UNet",
    "edm2_preset_kwargs",
    "mp_cat",
    "mp_silu",
    "mp_sum",
    "normalize",
    "resample",
]


def normalize(x: torch.Tensor, dim: Sequence[int] | int | None = None, eps: float = 1e-4) -> torch.Tensor:
    """``x`` divided by (ε + its root-mean-square over ``dim``), the RMS computed in float32.

    ``dim=None``: every dimension but the first (one RMS per output channel of a weight)."""
    if dim is None:
        dim = tuple(range(1, x.ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    count = 1
    for d in dims:
        count *= x.shape[d]
    rms = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32) / math.sqrt(count)
    return x / (rms + eps).to(x.dtype)


def resample(x: torch.Tensor, f: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """2× down- or upsampling of NCHW ``x`` with the separable filter ``f`` (normalised to sum 1; ×4 gain
    when upsampling), per channel; ``mode='keep'`` returns ``x``."""
    if mode == "keep":
        return x
    taps = torch.as_tensor(np.asarray(f, dtype=np.float32), device=x.device)
    if taps.ndim != 1 or len(taps) % 2:
        raise ValueError(f"resample filter must be 1-D with an even number of taps, got {list(f)}")
    taps = taps / taps.sum()
    kernel = torch.outer(taps, taps).to(x.dtype)
    c, pad = x.shape[1], (len(taps) - 1) // 2
    if mode == "down":
        return F.conv2d(x, kernel.expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)
    if mode == "up":
        return F.conv_transpose2d(x, (4 * kernel).expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)
    raise ValueError(f"resample mode must be 'keep', 'down' or 'up', got {mode!r}")


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU scaled to keep unit magnitude for unit-normal input (EDM2 Eq. 81)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1−t)·a + t·b divided by √((1−t)² + t²): unit variance for independent unit-variance inputs (Eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation along ``dim`` with weights (1−t) and t on the two parts, normalised per element count
    so the result keeps unit magnitude (Eq. 103)."""
    na, nb = a.shape[dim], b.shape[dim]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (scale * (1 - t) / math.sqrt(na)), b * (scale * t / math.sqrt(nb))], dim=dim)


class MPFourier(nn.Module):
    """Fourier features √2·cos(2π(f·x + φ)) of a scalar per sample, f ~ N(0, bandwidth²), φ ~ U[0, 1)
    (stored pre-multiplied by 2π as the buffers ``freqs`` and ``phases``). x [B] -> [B, num_channels]."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer("freqs", 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * np.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution (``kernel=[k, k]``) or linear layer (``kernel=[]``), no bias.

    The weight [out, in, *kernel] is used as ``normalize(weight)·gain/√fan_in``. In training mode the
    stored weight is first overwritten by ``normalize(weight)`` (forced weight normalisation, under
    ``no_grad``), unless it is unchanged since this layer last did so (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))
        self._normalized_version: tuple[int, int] | None = None

    def _force_normalize(self) -> None:
        w = self.weight
        stamp = (id(w), w._version)
        if stamp == self._normalized_version:
            return  # already normalised and untouched since: nothing to do, nothing modified in place
        with torch.no_grad():
            w.copy_(normalize(w.to(torch.float32)))
        self._normalized_version = (id(w), w._version)

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        if self.training:
            self._force_normalize()
        w = normalize(self.weight.to(torch.float32))
        w = (w * (gain / math.sqrt(w[0].numel()))).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        if w.ndim != 4:
            raise ValueError(f"MPConv weight must be 2-D or 4-D, got {w.ndim}-D")
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


class Block(nn.Module):
    """EDM2 U-Net block (Fig. 21): residual branch conv3×3 → ×(1 + emb) → conv3×3 mixed into the main
    path by ``mp_sum``, optional cosine self-attention, activation clipping. ``flavor='enc'`` applies the
    1×1 skip convolution and pixel norm before the residual branch, ``'dec'`` the skip convolution after.
    Arguments and names as in EDM2."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",
        resample_mode: str = "keep",
        resample_filter: Sequence[float] = (1, 1),
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float | None = 256,
    ):
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"flavor must be 'enc' or 'dec', got {flavor!r}")
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = list(resample_filter)
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.res_balance, self.attn_balance, self.clip_act = res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None
        self.drop = nn.Dropout(dropout)

    @property
    def dropout(self) -> float:
        return self.drop.p

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # channel layout of attn_qkv's output: [head, channel-in-head, (q, k, v)], as in EDM2's weights
        qkv = self.attn_qkv(x).reshape(n, self.num_heads, -1, 3, h * w)
        q, k, v = normalize(qkv, dim=2).unbind(3)  # [n, heads, c_head, hw], each pixel-normalised
        logits = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2]))
        y = torch.einsum("nhqk,nhck->nhcq", logits.softmax(dim=3), v)
        return self.attn_proj(y.reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        y = self.conv_res1(self.drop(y))
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self._attention(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x


class UNet(nn.Module):
    """EDM2's U-Net (config G). x [B, C, H, W], noise_labels [B], class_labels [B, K] or None -> [B, C, H, W].

    Args (EDM2's): img_resolution, img_channels, label_dim (0: unconditional), model_channels,
    channel_mult (per resolution), channel_mult_noise / channel_mult_emb (None: channel_mult[0] /
    max(channel_mult)), num_blocks (per resolution), attn_resolutions, label_balance, concat_balance,
    **block_kwargs (see :class:`Block`).
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_noise: int | None = None,
        channel_mult_emb: int | None = None,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (16, 8),
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        **block_kwargs,
    ):
        super().__init__()
        widths = [model_channels * m for m in channel_mult]
        c_noise = model_channels * channel_mult_noise if channel_mult_noise is not None else widths[0]
        c_emb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(widths)
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(c_noise)
        self.emb_noise = MPConv(c_noise, c_emb, kernel=[])
        self.emb_label = MPConv(label_dim, c_emb, kernel=[]) if label_dim else None

        attn = set(attn_resolutions)
        self.enc = nn.ModuleDict()
        channels = img_channels + 1  # + a constant-ones channel
        for level, width in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(channels, width, kernel=[3, 3])
                channels = width
            else:
                self.enc[f"{res}x{res}_down"] = Block(
                    channels, channels, c_emb, flavor="enc", resample_mode="down", **block_kwargs
                )
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = Block(
                    channels, width, c_emb, flavor="enc", attention=res in attn, **block_kwargs
                )
                channels = width

        self.dec = nn.ModuleDict()
        skip_widths = [m.out_channels for m in self.enc.values()]
        for level in reversed(range(len(widths))):
            res, width = img_resolution >> level, widths[level]
            if level == len(widths) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(
                    channels, channels, c_emb, flavor="dec", attention=True, **block_kwargs
                )
                self.dec[f"{res}x{res}_in1"] = Block(channels, channels, c_emb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(
                    channels, channels, c_emb, flavor="dec", resample_mode="up", **block_kwargs
                )
            for i in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{i}"] = Block(
                    channels + skip_widths.pop(), width, c_emb, flavor="dec", attention=res in attn, **block_kwargs
                )
                channels = width
        self.out_conv = MPConv(channels, img_channels, kernel=[3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * math.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "_block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class Precond(Network):
    """EDM preconditioning around EDM2's :class:`UNet` (``self.unet``), plus EDM2's uncertainty head.

    forward(x [B,C,H,W], sigma [B] or scalar, class_labels [B,K] or None) -> D(x; σ) [B,C,H,W] float32;
    ``return_logvar=True`` also returns u(σ) [B,1,1,1] (EDM2's loss weighting; not used by DDO).

    Args (EDM2's): img_resolution, img_channels, label_dim, use_fp16 (run the U-Net in fp16 — only on
    CUDA, never on CPU; our DDO presets set it False because the DDO log-ratio needs fp32), sigma_data,
    logvar_channels, **unet_kwargs.

    The uncertainty head ``logvar_fourier`` (buffers) + ``logvar_linear`` (one weight) is kept so that
    EDM2's files load strictly, but ``logvar_linear.weight`` is created with ``requires_grad=False``:
    DDO's log-ratio never calls it, and a trainable parameter without a gradient would make DDP fail
    (or need ``find_unused_parameters``). The flag is a property of the parameter, so it survives
    ``copy.deepcopy`` (DDOModule's reference, the EMA), ``load_state_dict`` (copy or ``assign=True``: torch
    keeps the module's ``requires_grad``) and checkpoints; Adam skips parameters whose grad stays None.
    Pass ``train_logvar=True`` to train it (EDM2's own loss).
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool = True,
        sigma_data: float = 0.5,
        logvar_channels: int = 128,
        train_logvar: bool = False,
        **unet_kwargs,
    ):
        super().__init__()
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)
        self.sigma_data = float(sigma_data)
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])
        self.logvar_linear.requires_grad_(bool(train_logvar))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) = (img_channels, img_resolution, img_resolution) (protocols.SampleSpec)."""
        return (self.img_channels, self.img_resolution, self.img_resolution)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        return_logvar: bool = False,
        **unet_kwargs,
    ):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1).expand(x.shape[0])
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([x.shape[0], self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32
        s = sigma.reshape(-1, 1, 1, 1)
        d2 = self.sigma_data**2
        c_skip = d2 / (s**2 + d2)
        c_out = s * self.sigma_data / (s**2 + d2).sqrt()
        c_in = 1 / (s**2 + d2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.unet((c_in * x).to(dtype), c_noise, class_labels, **unet_kwargs)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        if return_logvar:
            return D_x, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return D_x


#: EDM2's model sizes (``train_edm2.py`` ``config_presets``): model_channels and the dropout they were
#: trained with. Everything else is the UNet default (channel_mult [1,2,3,4], 3 blocks, attention at 16, 8).
EDM2_PRESETS: dict[str, dict[str, float]] = {
    "xxs": dict(model_channels=64, dropout=0.0),
    "xs": dict(model_channels=128, dropout=0.0),
    "s": dict(model_channels=192, dropout=0.0),
    "m": dict(model_channels=256, dropout=0.1),
    "l": dict(model_channels=320, dropout=0.1),
    "xl": dict(model_channels=384, dropout=0.1),
    "xxl": dict(model_channels=448, dropout=0.1),
}


def edm2_preset_kwargs(dataset: str, size: str, label_dim: int = 1000) -> dict:
    """Precond kwargs of an EDM2 preset: ``dataset`` 'img64' (64×64 RGB) or 'img512' (64×64×4 latents of
    the 512 px VAE), ``size`` one of :data:`EDM2_PRESETS`."""
    if size not in EDM2_PRESETS:
        raise ValueError(f"unknown EDM2 size {size!r}; expected one of {', '.join(EDM2_PRESETS)}")
    channels = {"img64": 3, "img512": 4}.get(dataset)
    if channels is None:
        raise ValueError(f"unknown EDM2 dataset {dataset!r}; expected 'img64' or 'img512'")
    p = EDM2_PRESETS[size]
    return dict(
        img_resolution=64,
        img_channels=channels,
        label_dim=label_dim,
        model_channels=int(p["model_channels"]),
        dropout=p["dropout"],
    )
