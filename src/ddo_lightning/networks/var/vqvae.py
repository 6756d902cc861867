"""VAR's multi-scale residual VQ-VAE tokenizer (Tian et al. 2024, §3.2), re-implemented.

Module and parameter names follow FoundationVision/VAR (``models/vqvae.py``, ``models/basic_vae.py``,
``models/quant.py``) so its released ``vae_ch160v4096z32.pth`` loads with ``strict=True``; the code is
our own. The encoder/decoder are the LDM ``vq-f16`` convnets (``ch_mult=(1, 1, 2, 2, 4)``, 2 residual
blocks per level, self-attention at the lowest resolution): 16× downsampling.

Quantization (``VectorQuantizer2``): the encoder feature f [B, Cvae, h, w] (h = w = patch_nums[-1]) is
explained scale by scale, coarse to fine. At scale k the residual r = f − f̂ is area-downsampled to
pn_k × pn_k, each position takes its nearest codebook entry (squared L2), the looked-up map is bicubic-
upsampled back to h × w, refined by a 3×3 conv φ_k (``Phi``: ``(1 − ρ)·z + ρ·conv(z)``, ρ = 0.5), and
added to f̂. The token sequence is the concatenation of the K index maps, row-major (L = Σ pn_k²).

Not re-implemented: VQ-VAE training (``VectorQuantizer2.forward``'s commitment loss and codebook-usage
statistics); the buffer ``ema_vocab_hit_SV`` is kept so checkpoints load.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    """Pad right/bottom by one, then a 3×3 stride-2 conv without padding (LDM's asymmetric downsampling)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class ResnetBlock(nn.Module):
    """GroupNorm–SiLU–conv ×2 with a 1×1 shortcut when the width changes."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions (1×1 convs for qkv and output), residual."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.C = in_channels
        self.norm = _group_norm(in_channels)
        self.qkv = nn.Conv2d(in_channels, 3 * in_channels, 1)
        self.w_ratio = in_channels**-0.5
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)  # each [B, HW, C]
        h = F.scaled_dot_product_attention(q, k, v, scale=self.w_ratio)  # [B, HW, C]
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


def _level() -> nn.Module:
    return nn.Module()  # a plain container, so parameter names read ``down.0.block.1.conv1.weight``


def _mid(width: int, dropout: float, using_mid_sa: bool) -> nn.Module:
    """The lowest-resolution stage of both convnets: ``block_1``, ``attn_1`` (or identity), ``block_2``."""
    mid = _level()
    mid.block_1 = ResnetBlock(in_channels=width, out_channels=width, dropout=dropout)
    mid.attn_1 = AttnBlock(width) if using_mid_sa else nn.Identity()
    mid.block_2 = ResnetBlock(in_channels=width, out_channels=width, dropout=dropout)
    return mid


class _ConvNet(nn.Module):
    """What ``Encoder`` and ``Decoder`` share: the original's size attributes and one level's forward."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, in_channels: int):
        super().__init__()
        self.ch, self.num_resolutions = ch, len(ch_mult)
        self.num_res_blocks, self.in_channels = num_res_blocks, in_channels

    @staticmethod
    def _run_level(lvl: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """A level's residual blocks, each followed by its attention block where the level has them."""
        for j, block in enumerate(lvl.block):
            h = block(h)
            if len(lvl.attn):
                h = lvl.attn[j](h)
        return h


class Encoder(_ConvNet):
    """Image [B, 3, H, W] → feature [B, z_channels, H/2^(n−1), W/2^(n−1)], n = len(ch_mult)."""

    def __init__(
        self,
        *,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        dropout: float = 0.0,
        in_channels: int = 3,
        z_channels: int,
        double_z: bool = False,
        using_sa: bool = True,
        using_mid_sa: bool = True,
    ):
        super().__init__(ch, ch_mult, num_res_blocks, in_channels)
        self.downsample_ratio = 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        widths = [ch] + [ch * m for m in ch_mult]
        self.down = nn.ModuleList()
        for i in range(self.num_resolutions):
            lvl, last = _level(), i == self.num_resolutions - 1
            lvl.block = nn.ModuleList(
                ResnetBlock(
                    in_channels=widths[i] if j == 0 else widths[i + 1], out_channels=widths[i + 1], dropout=dropout
                )
                for j in range(num_res_blocks)
            )
            lvl.attn = nn.ModuleList(
                AttnBlock(widths[i + 1]) for _ in range(num_res_blocks if (last and using_sa) else 0)
            )
            if not last:
                lvl.downsample = Downsample2x(widths[i + 1])
            self.down.append(lvl)
        width = widths[-1]
        self.mid = _mid(width, dropout, using_mid_sa)
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for lvl in self.down:
            h = self._run_level(lvl, h)
            if hasattr(lvl, "downsample"):
                h = lvl.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(_ConvNet):
    """Feature [B, z_channels, h, w] → image [B, in_channels, h·2^(n−1), w·2^(n−1)] (unclamped)."""

    def __init__(
        self,
        *,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        dropout: float = 0.0,
        in_channels: int = 3,
        z_channels: int,
        using_sa: bool = True,
        using_mid_sa: bool = True,
    ):
        super().__init__(ch, ch_mult, num_res_blocks, in_channels)
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, 1, 1)
        self.mid = _mid(width, dropout, using_mid_sa)
        levels: list[nn.Module] = []
        for i in reversed(range(self.num_resolutions)):  # built coarse to fine, stored fine to coarse
            lvl, out = _level(), ch * ch_mult[i]
            lvl.block = nn.ModuleList(
                ResnetBlock(in_channels=width if j == 0 else out, out_channels=out, dropout=dropout)
                for j in range(num_res_blocks + 1)
            )
            top = i == self.num_resolutions - 1
            lvl.attn = nn.ModuleList(AttnBlock(out) for _ in range(num_res_blocks + 1 if (top and using_sa) else 0))
            if i != 0:
                lvl.upsample = Upsample2x(out)
            levels.insert(0, lvl)
            width = out
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, in_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for lvl in reversed(self.up):
            h = self._run_level(lvl, h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    """φ(z) = (1 − ρ)·z + ρ·conv3×3(z): the residual refinement applied to each upsampled scale."""

    def __init__(self, embed_dim: int, quant_resi: float):
        super().__init__(embed_dim, embed_dim, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.resi_ratio) + super().forward(h) * self.resi_ratio


def _ticks(k: int) -> np.ndarray:
    # Positions in [0, 1] of K φ modules; scale si uses the module nearest to si/(S−1). Computed with numpy
    # exactly as the original: scale 2 of 10 lies exactly halfway between two ticks for K = 4, so the choice
    # rests on the floating-point rounding of these very expressions.
    return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


def _nearest_tick(ticks: np.ndarray, at: float) -> int:
    return int(np.argmin(np.abs(ticks - at)).item())


class PhiShared(nn.Module):
    """One φ for every scale."""

    def __init__(self, qresi: nn.Module):
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, _at: float) -> nn.Module:
        return self.qresi


class PhiPartiallyShared(nn.Module):
    """K φ modules shared by the S scales: scale si uses the one whose tick is nearest to si/(S−1)."""

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls
        self.ticks = _ticks(len(qresi_ls))

    def __getitem__(self, at: float) -> nn.Module:
        return self.qresi_ls[_nearest_tick(self.ticks, at)]


class PhiNonShared(nn.ModuleList):
    """One φ per scale (``share_quant_resi=0``)."""

    def __init__(self, qresi: list[nn.Module]):
        super().__init__(qresi)
        self.ticks = _ticks(len(qresi))

    def __getitem__(self, at: float) -> nn.Module:  # type: ignore[override]
        return super().__getitem__(_nearest_tick(self.ticks, at))


class VectorQuantizer2(nn.Module):
    """Multi-scale residual quantizer (see the module docstring). Args as the original:
    ``vocab_size`` V, ``Cvae`` code width, ``using_znorm`` (cosine instead of L2 nearest neighbour),
    ``beta`` (commitment weight, training only), ``default_qresi_counts`` (number of φ when not shared,
    0: one per scale), ``v_patch_nums`` scale sides, ``quant_resi`` ρ, ``share_quant_resi``
    (0: one φ per scale, 1: a single φ, n ≥ 2: n partially shared φ)."""

    def __init__(
        self,
        vocab_size: int,
        Cvae: int,
        using_znorm: bool,
        beta: float = 0.25,
        default_qresi_counts: int = 0,
        v_patch_nums: Sequence[int] | None = None,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
    ):
        super().__init__()
        if not v_patch_nums or len(v_patch_nums) < 2:
            raise ValueError(f"v_patch_nums needs at least two scales, got {v_patch_nums}")
        self.vocab_size, self.Cvae, self.using_znorm = vocab_size, Cvae, using_znorm
        self.v_patch_nums = tuple(v_patch_nums)
        self.quant_resi_ratio, self.beta = quant_resi, beta

        def phi() -> nn.Module:
            return Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            self.quant_resi = PhiNonShared([phi() for _ in range(default_qresi_counts or len(self.v_patch_nums))])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(phi())
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList(phi() for _ in range(share_quant_resi)))
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, Cvae)

    def phi(self, si: int) -> nn.Module:
        """The φ module used at scale index ``si``."""
        return self.quant_resi[si / (len(self.v_patch_nums) - 1)]

    def extra_repr(self) -> str:
        return f"{self.v_patch_nums}, znorm={self.using_znorm}, quant_resi={self.quant_resi_ratio}"

    def _nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        codebook = self.embedding.weight.detach()
        if self.using_znorm:
            return (F.normalize(z_NC, dim=-1) @ F.normalize(codebook, dim=-1).T).argmax(1)
        # ‖z‖² + ‖e‖² − 2 z·e, with the product accumulated by addmm like the original (same rounding: ties)
        dist = torch.addmm(
            z_NC.square().sum(1, keepdim=True) + codebook.square().sum(1), z_NC, codebook.T, beta=1, alpha=-2
        )
        return dist.argmin(1)

    def _phi_up(self, h: torch.Tensor, si: int, S: int, H: int, W: int) -> torch.Tensor:
        """φ for scale ``si`` of ``S`` applied to its code map [B, Cvae, pn, pn] bicubic-upsampled to H × W (the
        last scale is at full size already and is not resampled)."""
        if si != S - 1:
            h = F.interpolate(h, size=(H, W), mode="bicubic")
        return self.quant_resi[si / (S - 1)](h)

    def f_to_idxBl_or_fhat(
        self, f_BChw: torch.Tensor, to_fhat: bool, v_patch_nums: Sequence[int | tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """Quantize a feature map scale by scale: the index maps [B, ph·pw] (``to_fhat=False``) or the
        running reconstructions f̂ [B, C, H, W] after each scale (``to_fhat=True``)."""
        B, C, H, W = f_BChw.shape
        hws = [(p, p) if isinstance(p, int) else (p[0], p[1]) for p in (v_patch_nums or self.v_patch_nums)]
        if hws[-1] != (H, W):
            raise ValueError(f"the last scale {hws[-1]} must equal the feature size {(H, W)}")
        rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(rest)
        out = []
        for si, (ph, pw) in enumerate(hws):
            z = rest if si == len(hws) - 1 else F.interpolate(rest, size=(ph, pw), mode="area")
            idx = self._nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = self._phi_up(self.embedding(idx.view(B, ph, pw)).permute(0, 3, 1, 2), si, len(hws), H, W)
            f_hat = f_hat + h
            rest = rest - h
            out.append(f_hat.clone() if to_fhat else idx.reshape(B, ph * pw))
        return out

    def embed_to_fhat(
        self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool = True, last_one: bool = False
    ) -> list[torch.Tensor] | torch.Tensor:
        """Accumulate per-scale code maps into f̂ (at full size; ``all_to_max_scale=False`` is the
        original's experimental progressive-resize variant). ``last_one``: only the final f̂."""
        B = ms_h_BChw[0].shape[0]
        side = self.v_patch_nums[-1]
        outs: list[torch.Tensor] = []
        if all_to_max_scale:
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, side, side, dtype=torch.float32)
            for si, h in enumerate(ms_h_BChw):
                f_hat = f_hat + self._phi_up(h, si, len(self.v_patch_nums), side, side)
                outs.append(f_hat)
        else:
            p0 = self.v_patch_nums[0]
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, p0, p0, dtype=torch.float32)
            for si, pn in enumerate(self.v_patch_nums):
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic") + self.phi(si)(ms_h_BChw[si])
                outs.append(f_hat)
        return outs[-1] if last_one else outs

    def idx_to_h(self, idx_Bl: torch.Tensor) -> torch.Tensor:
        """Index map [B, pn²] → code map [B, Cvae, pn, pn]."""
        B, l = idx_Bl.shape
        pn = round(l**0.5)
        if pn * pn != l:
            raise ValueError(f"a scale must hold a square number of tokens, got {l}")
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn)

    def idxBl_to_var_input(self, gt_ms_idx_Bl: list[torch.Tensor]) -> torch.Tensor | None:
        """Teacher-forcing input of VAR [B, L − pn_0², Cvae]: for every scale k ≥ 1, f̂ after scales < k
        area-downsampled to pn_k × pn_k (row-major), concatenated over k."""
        B = gt_ms_idx_Bl[0].shape[0]
        side, S = self.v_patch_nums[-1], len(self.v_patch_nums)
        f_hat = torch.zeros(B, self.Cvae, side, side, device=gt_ms_idx_Bl[0].device, dtype=torch.float32)
        inputs = []
        for si in range(S - 1):
            f_hat = f_hat + self._phi_up(self.idx_to_h(gt_ms_idx_Bl[si]), si, S, side, side)
            nxt = self.v_patch_nums[si + 1]
            inputs.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2))
        return torch.cat(inputs, 1) if inputs else None

    def get_next_autoregressive_input(
        self, si: int, SN: int, f_hat: torch.Tensor, h_BChw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling: add scale ``si``'s code map to f̂ (in place, as the original) and return (f̂, the next
        scale's input: f̂ area-downsampled to pn_{si+1}; f̂ itself after the last scale)."""
        side = self.v_patch_nums[-1]
        f_hat.add_(self._phi_up(h_BChw, si, SN, side, side))
        if si == SN - 1:
            return f_hat, f_hat
        nxt = self.v_patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area")

    def forward(self, f_BChw: torch.Tensor, ret_usages: bool = False):
        raise NotImplementedError(
            "VQ-VAE training (the quantizer's training forward) is not re-implemented; "
            "use f_to_idxBl_or_fhat for inference"
        )


class VQVAE(nn.Module):
    """The tokenizer. Args as FoundationVision/VAR's ``VQVAE`` (the released one:
    ``VQVAE(vocab_size=4096, z_channels=32, ch=160, test_mode=True, share_quant_resi=4)``, 108.9 M
    parameters). ``test_mode`` freezes it (eval, no gradients), as for VAR training and DDO.
    ``ch`` must be a multiple of 32 (GroupNorm with 32 groups)."""

    def __init__(
        self,
        vocab_size: int = 4096,
        z_channels: int = 32,
        ch: int = 128,
        dropout: float = 0.0,
        beta: float = 0.25,
        using_znorm: bool = False,
        quant_conv_ks: int = 3,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        default_qresi_counts: int = 0,
        v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        test_mode: bool = True,
    ):
        super().__init__()
        if ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm(32)), got {ch}")
        self.test_mode = test_mode
        self.V = self.vocab_size = vocab_size
        self.Cvae = z_channels
        dd = dict(
            dropout=dropout,
            ch=ch,
            z_channels=z_channels,
            in_channels=3,
            ch_mult=(1, 1, 2, 2, 4),
            num_res_blocks=2,
            using_sa=True,
            using_mid_sa=True,
        )
        self.encoder = Encoder(double_z=False, **dd)
        self.decoder = Decoder(**dd)
        self.downsample = 2 ** (len(dd["ch_mult"]) - 1)
        self.quantize = VectorQuantizer2(
            vocab_size=vocab_size,
            Cvae=z_channels,
            using_znorm=using_znorm,
            beta=beta,
            default_qresi_counts=default_qresi_counts,
            v_patch_nums=v_patch_nums,
            quant_resi=quant_resi,
            share_quant_resi=share_quant_resi,
        )
        pad = quant_conv_ks // 2
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, pad)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, pad)
        if test_mode:
            self.eval().requires_grad_(False)

    def forward(self, inp: torch.Tensor, ret_usages: bool = False):
        raise NotImplementedError("VQ-VAE training is not re-implemented")

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f̂ [B, Cvae, h, w] → image [B, 3, 16h, 16w] in [−1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def img_to_idxBl(
        self, inp_img_no_grad: torch.Tensor, v_patch_nums: Sequence[int | tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """Image [B, 3, H, W] in [−1, 1] → list of index maps [B, pn²], coarse to fine."""
        f = self.quant_conv(self.encoder(inp_img_no_grad))
        return self.quantize.f_to_idxBl_or_fhat(f, to_fhat=False, v_patch_nums=v_patch_nums)

    def idxBl_to_img(
        self, ms_idx_Bl: list[torch.Tensor], same_shape: bool, last_one: bool = False
    ) -> list[torch.Tensor] | torch.Tensor:
        """Index maps → image(s) in [−1, 1] (``last_one``: only the image of all scales)."""
        return self.embed_to_img(
            [self.quantize.idx_to_h(idx) for idx in ms_idx_Bl], all_to_max_scale=same_shape, last_one=last_one
        )

    def embed_to_img(
        self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool, last_one: bool = False
    ) -> list[torch.Tensor] | torch.Tensor:
        f = self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale, last_one=last_one)
        return self.fhat_to_img(f) if last_one else [self.fhat_to_img(x) for x in f]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # The codebook-usage statistics are training bookkeeping; a checkpoint made with another number of
        # scales carries a differently shaped buffer, which the original also tolerates.
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.quantize.ema_vocab_hit_SV.shape:
            state_dict = {**state_dict, key: self.quantize.ema_vocab_hit_SV.detach().clone()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
