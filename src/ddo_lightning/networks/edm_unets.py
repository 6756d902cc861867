"""The image U-Nets of EDM (Karras et al. 2022): ``SongUNet`` (DDPM++ / NCSN++) and ``DhariwalUNet`` (ADM).

This is an independent re-implementation written for this package. It keeps the class names,
constructor arguments, defaults, parameter/buffer names and initialisation schemes of EDM's
``training/networks.py`` so that the weights of NVIDIA's released EDM checkpoints load into these
modules with ``load_state_dict(strict=True)``, and so that training from scratch starts from the same
distribution of weights. Differences from EDM, all deliberate:

* **float32 / no autocast.** Every layer runs in the dtype of its input (weights are cast to it), there
  is no ``use_fp16`` switch and no dtype assertion; we run in float32 (``precision="32-true"``).
* **Dropout is an ``nn.Dropout`` module** (``UNetBlock.dropout``), so ``disable_dropout`` can switch it
  off. ``nn.Dropout`` holds no tensors, so the state_dict is unchanged.
* **``map_augment`` is frozen.** With ``augment_dim > 0`` the augmentation-label layer is built (the
  released CIFAR-10 checkpoints contain ``model.map_augment.weight``) but ``requires_grad`` is switched
  off at construction: we never feed augmentation labels, so the layer would otherwise be a trainable
  parameter without a gradient, which DDP rejects (``find_unused_parameters``). Passing
  ``augment_labels`` still works (the frozen layer is applied).
* **Labels.** ``class_labels`` may be ``None`` or ``[B, 0]`` for unconditional networks; for a
  conditional network ``None`` means the all-zero label (the "no class" input that label dropout
  trains for classifier-free guidance).

Shapes: x [B, C_in, R, R], noise_labels [B], class_labels [B, label_dim] → [B, C_out, R, R].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone

__all__ = [
    "Conv2d",
    "DhariwalUNet",
    "FourierEmbedding",
    "GroupNorm",
    "Linear",
    "PositionalEmbedding",
    "SongUNet",
    "UNetBlock",
    "attention_weights",
    "weight_init",
]


# ---------------------------------------------------------------------------------------------------
# Initialisation


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """A random tensor for the four EDM init modes.

    xavier_uniform: U(±√(6/(fan_in+fan_out)));  xavier_normal: N(0, 2/(fan_in+fan_out));
    kaiming_uniform: U(±√(3/fan_in));            kaiming_normal: N(0, 1/fan_in).
    (Variance 1/fan_in for "kaiming" is EDM's convention, i.e. gain 1, not He's gain √2.)
    The random draw happens even when the caller multiplies by 0, so the sequence of draws from the
    global generator does not depend on the init gains.
    """
    shape = list(shape)
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r} (xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal)")


def _init_pair(out_shape, bias: bool, mode: str, fan_in: int, fan_out: int, init_weight: float, init_bias: float):
    """(weight, bias-or-None) drawn with ``weight_init`` and scaled by the gains."""
    w = nn.Parameter(weight_init(out_shape, mode, fan_in, fan_out) * init_weight)
    b = nn.Parameter(weight_init([out_shape[0]], mode, fan_in, fan_out) * init_bias) if bias else None
    return w, b


# ---------------------------------------------------------------------------------------------------
# Layers


class Linear(nn.Module):
    """Fully connected layer y = x Wᵀ + b with EDM's init (``weight`` [out, in], ``bias`` [out])."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight, self.bias = _init_pair(
            [out_features, in_features], bias, init_mode, in_features, out_features, init_weight, init_bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), b)


def _fir_filter_2d(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D low-pass kernel from 1-D taps, normalised to unit sum: [1, 1, k, k]."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square()).reshape(1, 1, f.numel(), f.numel())


def _depthwise(f: torch.Tensor, channels: int) -> torch.Tensor:
    return f.expand(channels, 1, -1, -1)


def _upsample2x(x: torch.Tensor, f: torch.Tensor, padding: int) -> torch.Tensor:
    """2× upsampling by zero insertion + FIR filter (gain 4 keeps the mean), per channel."""
    c = x.shape[1]
    return F.conv_transpose2d(x, _depthwise(f * 4, c), stride=2, padding=padding, groups=c)


def _downsample2x(x: torch.Tensor, f: torch.Tensor, padding: int) -> torch.Tensor:
    """FIR filter + 2× decimation, per channel."""
    c = x.shape[1]
    return F.conv2d(x, _depthwise(f, c), stride=2, padding=padding, groups=c)


class Conv2d(nn.Module):
    """k×k convolution ("same" padding) with optional 2× up- or down-sampling by a FIR filter.

    ``kernel=0`` gives a pure resampling layer without weights. With ``fused_resample`` the filter and
    the convolution are applied as one strided pass (up: filter first; down: convolution first).
    Tensors: ``weight`` [out, in, k, k], ``bias`` [out], and, when resampling, the buffer
    ``resample_filter`` [1, 1, f, f].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ):
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        if kernel:
            self.weight, self.bias = _init_pair(
                [out_channels, in_channels, kernel, kernel],
                bias,
                init_mode,
                in_channels * kernel * kernel,
                out_channels * kernel * kernel,
                init_weight,
                init_bias,
            )
        else:
            self.weight, self.bias = None, None
        self.register_buffer("resample_filter", _fir_filter_2d(resample_filter) if (up or down) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        wp = 0 if w is None else w.shape[-1] // 2  # padding of the convolution
        fp = 0 if f is None else (f.shape[-1] - 1) // 2  # padding of the resampling filter
        if w is not None and self.fused_resample and self.up:
            x = _upsample2x(x, f, padding=max(fp - wp, 0))
            x = F.conv2d(x, w, padding=max(wp - fp, 0))
        elif w is not None and self.fused_resample and self.down:
            x = F.conv2d(x, w, padding=wp + fp)
            x = _downsample2x(x, f, padding=0)
        else:
            if self.up:
                x = _upsample2x(x, f, padding=fp)
            elif self.down:
                x = _downsample2x(x, f, padding=fp)
            if w is not None:
                x = F.conv2d(x, w, padding=wp)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with at most ``num_groups`` groups and at least ``min_channels_per_group``
    channels per group (``weight`` ones, ``bias`` zeros)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax_k(qᵀk / √c) for q, k [N, c, L] → [N, L_q, L_k], computed in float32 and returned in q's
    dtype (autograd differentiates through the casts, so gradients are float32 inside as well)."""
    scale = 1 / math.sqrt(k.shape[1])
    logits = torch.einsum("ncq,nck->nqk", q.to(torch.float32), k.to(torch.float32) * scale)
    return logits.softmax(dim=2).to(q.dtype)


class UNetBlock(nn.Module):
    """Residual block shared by DDPM++, NCSN++ and ADM, with optional 2× resampling and self-attention.

    GroupNorm → SiLU → conv0 (resampling here) → embedding injection (``affine``; ADM's adaptive
    scale/shift or DDPM++'s additive bias) → GroupNorm → SiLU → dropout → conv1, plus the (projected /
    resampled) input, times ``skip_scale``. With attention: multi-head self-attention over pixels
    (``norm2``/``qkv``/``proj``) with its own residual and ``skip_scale``.

    Args mirror EDM: ``init`` / ``init_zero`` / ``init_attn`` are keyword dicts for the layers
    (``init_zero`` for the layers closing a residual branch: conv1 and proj; ``init_attn`` for qkv,
    default ``init``); ``num_heads`` overrides ``out_channels // channels_per_head``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0,
        skip_scale: float = 1,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict | None = None,
        init_zero: dict | None = None,
        init_attn: dict | None = None,
    ):
        super().__init__()
        init = {} if init is None else dict(init)
        init_zero = dict(init_weight=0) if init_zero is None else dict(init_zero)
        init_attn = init if init_attn is None else dict(init_attn)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(
            in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init
        )
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)  # a module (no tensors) so that disable_dropout reaches it
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)

        # Shortcut: identity, or a 1×1 projection and/or pure resampling when the shape changes.
        self.skip = None
        if out_channels != in_channels or up or down:
            project = resample_proj or out_channels != in_channels
            self.skip = Conv2d(
                in_channels,
                out_channels,
                kernel=1 if project else 0,
                up=up,
                down=down,
                resample_filter=resample_filter,
                **init,
            )

        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **init_attn)
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.skip is None else self.skip(x)
        h = self.conv0(F.silu(self.norm0(x)))
        e = self.affine(emb).to(h.dtype)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = e.chunk(2, dim=1)
            h = F.silu(self.norm1(h) * (scale + 1) + shift)
        else:
            h = F.silu(self.norm1(h + e))
        h = self.conv1(self.dropout(h))
        x = (h + shortcut) * self.skip_scale

        if self.num_heads:
            b, c, hh, ww = x.shape
            # qkv channels are laid out as [head, channel-in-head, (q, k, v)] (EDM's layout).
            q, k, v = self.qkv(self.norm2(x)).reshape(b * self.num_heads, c // self.num_heads, 3, hh * ww).unbind(2)
            attn = attention_weights(q, k)  # [b·heads, L_q, L_k]
            out = torch.einsum("nqk,nck->ncq", attn, v).reshape(b, c, hh, ww)
            x = (self.proj(out) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a scalar: [B] → [B, num_channels] = [cos(x·ω), sin(x·ω)]
    with ω_i = max_positions^(−i/(n/2)) (``endpoint``: −i/(n/2 − 1), so the last frequency is
    1/max_positions). No tensors."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** exponent
        ang = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([ang.cos(), ang.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar: [B] → [B, num_channels] = [cos(2π x f), sin(2π x f)] with
    fixed frequencies f ~ N(0, scale²) stored in the buffer ``freqs`` [num_channels/2]."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ang = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([ang.cos(), ang.sin()], dim=1)


# ---------------------------------------------------------------------------------------------------
# Shared helpers of the two U-Nets


def _check_labels(class_labels: torch.Tensor | None, label_dim: int, batch: int, like: torch.Tensor):
    """None for unconditional nets; a [B, label_dim] float tensor (zeros when None) for conditional ones."""
    if label_dim == 0:
        if class_labels is not None and class_labels.numel() != 0:
            raise ValueError(f"unconditional network got class labels of shape {tuple(class_labels.shape)}")
        return None
    if class_labels is None:
        return torch.zeros(batch, label_dim, dtype=like.dtype, device=like.device)
    class_labels = class_labels.reshape(batch, -1)
    if class_labels.shape[1] != label_dim:
        raise ValueError(f"class labels have width {class_labels.shape[1]}, the network expects {label_dim}")
    return class_labels.to(like.dtype)


def _drop_labels(labels: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Label dropout for classifier-free guidance: zero each sample's label with probability p
    (training mode only)."""
    if not (training and p):
        return labels
    keep = torch.rand(labels.shape[0], 1, device=labels.device) >= p
    return labels * keep.to(labels.dtype)


def _make_augment_layer(augment_dim: int, out_features: int, init: dict) -> Linear | None:
    """EDM's augmentation-label mapping, frozen (see the module docstring): it exists so that the
    released checkpoints load, but we never train it."""
    if not augment_dim:
        return None
    layer = Linear(augment_dim, out_features, bias=False, **init)
    layer.requires_grad_(False)
    return layer


def _encoder_blocks(
    enc: nn.ModuleDict, r: int, width: int, out_width: int, count: int, attention: bool, blk: dict, skips: list[int]
) -> int:
    """Adds ``{r}x{r}_block{i}`` (i < count) to the encoder, ``width`` → ``out_width`` channels; each
    block's output is a skip connection (its width is appended to ``skips``). Returns ``out_width``."""
    for i in range(count):
        enc[f"{r}x{r}_block{i}"] = UNetBlock(width, out_width, attention=attention, **blk)
        width = out_width
        skips.append(width)
    return width


def _decoder_level(
    dec: nn.ModuleDict,
    r: int,
    width: int,
    out_width: int,
    first: bool,
    attention: list[bool],
    blk: dict,
    skips: list[int],
) -> int:
    """Adds one decoder level: ``{r}x{r}_in0``/``_in1`` (the lowest level, ``first``) or ``{r}x{r}_up``,
    then ``{r}x{r}_block{i}`` for each entry of ``attention``, each taking the last skip in ``skips``.
    Returns ``out_width``."""
    if first:
        dec[f"{r}x{r}_in0"] = UNetBlock(width, width, attention=True, **blk)
        dec[f"{r}x{r}_in1"] = UNetBlock(width, width, **blk)
    else:
        dec[f"{r}x{r}_up"] = UNetBlock(width, width, up=True, **blk)
    for i, attn in enumerate(attention):
        dec[f"{r}x{r}_block{i}"] = UNetBlock(width + skips.pop(), out_width, attention=attn, **blk)
        width = out_width
    return width


class _UNetCall:
    """What the two U-Nets share around their layers: the size and label attributes, the label checks and
    label dropout, and the call ``embedding`` → ``trunk``. (A mixin, not a ``Backbone``,
    so that the config help lists only the two U-Nets.)"""

    def __init__(self, img_resolution: int, in_channels: int, label_dim: int, label_dropout: float):
        super().__init__()
        self.img_resolution = img_resolution
        self.in_channels = in_channels
        self.label_dim = label_dim
        self.label_dropout = label_dropout

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        labels = _check_labels(class_labels, self.label_dim, x.shape[0], x)
        if labels is not None:
            labels = _drop_labels(labels, self.label_dropout, self.training)
        augment = None
        if self.map_augment is not None and augment_labels is not None:
            augment = self.map_augment(augment_labels.to(x.dtype))
        emb = self.embedding(self.map_noise(noise_labels.reshape(-1).to(x.dtype)), labels, augment)
        return self.trunk(x, emb)

    def embedding(self, emb: torch.Tensor, labels: torch.Tensor | None, augment: torch.Tensor | None) -> torch.Tensor:
        """The blocks' embedding from the noise embedding ``emb``, the class labels after label dropout (None:
        unconditional) and the mapped augmentation labels (None when absent)."""
        raise NotImplementedError

    def trunk(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Encoder and decoder on ``x`` with the blocks' embedding ``emb``."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# DDPM++ / NCSN++


class SongUNet(_UNetCall, Backbone):
    """The DDPM++ and NCSN++ U-Nets of Song et al. (2021) in EDM's formulation.

    Args (EDM's names and defaults):
        img_resolution, in_channels, out_channels: image size and channel counts.
        label_dim: number of classes (0 = unconditional). augment_dim: augmentation-label width
            (0 = none; when > 0 the layer is frozen, see the module docstring).
        model_channels: base width; channel_mult: width multiplier per resolution level;
            channel_mult_emb: embedding width = model_channels·channel_mult_emb.
        num_blocks: residual blocks per level; attn_resolutions: resolutions with self-attention.
        dropout: dropout in the residual blocks; label_dropout: class-label dropout (training only).
        embedding_type: 'positional' (DDPM++) or 'fourier' (NCSN++) noise embedding.
        channel_mult_noise: noise-embedding width = model_channels·channel_mult_noise (1 DDPM++, 2 NCSN++).
        encoder_type: 'standard' (DDPM++), 'skip' (input pyramid added at every level) or
            'residual' (NCSN++: progressively downsampled input with residual connections).
        decoder_type: 'standard' or 'skip' (output pyramid summed over levels).
        resample_filter: FIR taps for resampling ([1,1] DDPM++, [1,3,3,1] NCSN++).

    Module names follow EDM: ``map_*``, ``enc['{R}x{R}_conv' | '_down' | '_aux_down' | '_aux_skip' |
    '_aux_residual' | '_block{i}']``, ``dec['{R}x{R}_in0' | '_in1' | '_up' | '_block{i}' | '_aux_up' |
    '_aux_norm' | '_aux_conv']``.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ):
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        super().__init__(img_resolution, in_channels, label_dim, label_dropout)
        emb_ch = model_channels * channel_mult_emb
        noise_ch = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        blk = dict(
            emb_channels=emb_ch,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=init_zero,
            init_attn=init_attn,
        )

        # Noise / label / augmentation embedding → MLP.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_ch, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_ch)
        self.map_label = Linear(label_dim, noise_ch, **init) if label_dim else None
        self.map_augment = _make_augment_layer(augment_dim, noise_ch, init)
        self.map_layer0 = Linear(noise_ch, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)

        # Encoder. `width` is the running channel count of the main path, `aux_width` that of the
        # auxiliary input pyramid.
        self.enc = nn.ModuleDict()
        width, aux_width = in_channels, in_channels
        skip_widths: list[int] = []
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(width, model_channels, kernel=3, **init)
                width = model_channels
                skip_widths.append(width)
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(width, width, down=True, **blk)
                skip_widths.append(width)
                if encoder_type == "skip":
                    self.enc[f"{r}x{r}_aux_down"] = Conv2d(
                        aux_width, aux_width, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{r}x{r}_aux_skip"] = Conv2d(aux_width, width, kernel=1, **init)
                elif encoder_type == "residual":
                    self.enc[f"{r}x{r}_aux_residual"] = Conv2d(
                        aux_width,
                        width,
                        kernel=3,
                        down=True,
                        resample_filter=resample_filter,
                        fused_resample=True,
                        **init,
                    )
                    aux_width = width
            width = _encoder_blocks(
                self.enc, r, width, model_channels * mult, num_blocks, r in attn_resolutions, blk, skip_widths
            )

        # Decoder.
        self.dec = nn.ModuleDict()
        last = len(channel_mult) - 1
        for level in range(last, -1, -1):
            mult, r = channel_mult[level], img_resolution >> level
            attention = [i == num_blocks and r in attn_resolutions for i in range(num_blocks + 1)]
            width = _decoder_level(
                self.dec, r, width, model_channels * mult, level == last, attention, blk, skip_widths
            )
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last:
                    self.dec[f"{r}x{r}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{r}x{r}_aux_norm"] = GroupNorm(width, eps=1e-6)
                self.dec[f"{r}x{r}_aux_conv"] = Conv2d(width, out_channels, kernel=3, **init_zero)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) = (in_channels, img_resolution, img_resolution) (protocols.SampleSpec)."""
        return (self.in_channels, self.img_resolution, self.img_resolution)

    def embedding(self, emb: torch.Tensor, labels: torch.Tensor | None, augment: torch.Tensor | None) -> torch.Tensor:
        """DDPM++'s order: [sin, cos] features, plus labels and augmentation, then two SiLU layers."""
        half = emb.shape[1] // 2
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=1)  # DDPM++ orders the features [sin, cos]
        if labels is not None:
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if augment is not None:
            emb = emb + augment
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def trunk(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Encoder (skips kept, the auxiliary input pyramid in place) and decoder (the output pyramid)."""
        # Encoder: every main-path output is kept for the decoder; the auxiliary layers update the
        # most recent one in place of the main path.
        skips: list[torch.Tensor] = []
        aux = x
        for name, layer in self.enc.items():
            if name.endswith("_aux_down"):
                aux = layer(aux)
            elif name.endswith("_aux_skip"):
                x = x + layer(aux)
                skips[-1] = x
            elif name.endswith("_aux_residual"):
                x = (x + layer(aux)) / math.sqrt(2)
                skips[-1] = aux = x
            elif isinstance(layer, UNetBlock):
                x = layer(x, emb)
                skips.append(x)
            else:
                x = layer(x)
                skips.append(x)

        # Decoder: each `_block{i}` consumes one skip; the aux layers build the output (pyramid).
        out = None
        feat = None
        for name, layer in self.dec.items():
            if name.endswith("_aux_up"):
                out = layer(out)
            elif name.endswith("_aux_norm"):
                feat = layer(x)
            elif name.endswith("_aux_conv"):
                feat = layer(F.silu(feat))
                out = feat if out is None else out + feat
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return out


# ---------------------------------------------------------------------------------------------------
# ADM


class DhariwalUNet(_UNetCall, Backbone):
    """The ADM U-Net of Dhariwal & Nichol (2021) in EDM's formulation.

    Args (EDM's names and defaults): img_resolution, in_channels, out_channels, label_dim (0 =
    unconditional), augment_dim (frozen when > 0, see the module docstring), model_channels,
    channel_mult, channel_mult_emb, num_blocks, attn_resolutions, dropout, label_dropout (as in
    ``SongUNet``). Blocks use adaptive scale/shift, 64 channels per attention head, kaiming-uniform
    init with gain √(1/3) and zero-initialised residual outputs.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
    ):
        super().__init__(img_resolution, in_channels, label_dim, label_dropout)
        emb_ch = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        blk = dict(emb_channels=emb_ch, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = _make_augment_layer(augment_dim, model_channels, init_zero)
        self.map_layer0 = Linear(model_channels, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)
        self.map_label = (
            Linear(label_dim, emb_ch, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(label_dim))
            if label_dim
            else None
        )

        self.enc = nn.ModuleDict()
        width = in_channels
        skip_widths: list[int] = []
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(width, model_channels * mult, kernel=3, **init)
                width = model_channels * mult
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(width, width, down=True, **blk)
            skip_widths.append(width)
            width = _encoder_blocks(
                self.enc, r, width, model_channels * mult, num_blocks, r in attn_resolutions, blk, skip_widths
            )

        self.dec = nn.ModuleDict()
        last = len(channel_mult) - 1
        for level in range(last, -1, -1):
            mult, r = channel_mult[level], img_resolution >> level
            attention = [r in attn_resolutions] * (num_blocks + 1)
            width = _decoder_level(
                self.dec, r, width, model_channels * mult, level == last, attention, blk, skip_widths
            )
        self.out_norm = GroupNorm(width)
        self.out_conv = Conv2d(width, out_channels, kernel=3, **init_zero)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) = (in_channels, img_resolution, img_resolution) (protocols.SampleSpec)."""
        return (self.in_channels, self.img_resolution, self.img_resolution)

    def embedding(self, emb: torch.Tensor, labels: torch.Tensor | None, augment: torch.Tensor | None) -> torch.Tensor:
        """ADM's order: augmentation added, the two layers, then the labels added before the SiLU."""
        if augment is not None:
            emb = emb + augment
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if labels is not None:
            emb = emb + self.map_label(labels)
        return F.silu(emb)

    def trunk(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Encoder (every output a skip), decoder, then the output norm and conv."""
        skips: list[torch.Tensor] = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for name, layer in self.dec.items():
            if "_block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
