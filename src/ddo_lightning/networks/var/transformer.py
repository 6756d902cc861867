"""The VAR transformer (Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
Next-Scale Prediction"), re-implemented.

Module, parameter and buffer names and constructor arguments follow FoundationVision/VAR
(``models/var.py``, ``models/basic_var.py``) so the released ``var_d{16,20,24,30}.pth`` load with
``strict=True``; the code is our own. A GPT-2-style decoder over the L = Σ pn² tokens of all scales,
conditioned by adaptive LayerNorm on the class embedding. Scale k's pn_k² positions are predicted in
parallel from the class token (scale 0) or from f̂ after scales < k area-downsampled to pn_k × pn_k
(``VectorQuantizer2.idxBl_to_var_input``); attention is block-causal over scales
(``attn_bias_for_masking``: 0 where key scale ≤ query scale, −inf elsewhere).

Differences from the original, none of which changes names, shapes or the function computed:
- attention always uses ``F.scaled_dot_product_attention`` (``flash_if_available`` /
  ``fused_if_available`` are accepted and recorded, flash-attn/xformers/fused kernels are not used);
- ``forward`` applies the label dropout ``cond_drop_rate`` only in train mode (the original applies it
  in eval mode too, which makes its eval-mode likelihood random); ``forward_logits`` never drops;
- no progressive training (``prog_si``), no internal ``torch.Generator`` and no sampler here (the DDO
  sampler lives in ``adapter.VARTokenModel``);
- ``vae_proxy`` is shared, not copied, by ``copy.deepcopy``;
- constructing a VAR never patches ``torch.nn`` classes (the original ``build_vae_var`` replaces
  ``reset_parameters`` of Linear/LayerNorm/Conv process-wide for speed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .vqvae import VQVAE


class SharedRef(tuple):
    """A tuple holding modules by reference, outside the owner's module tree (the original's
    ``vae_proxy = (vae,)``), which deep copies share instead of copying: the frozen VQ-VAE is one object
    for the target, the reference and the EMA."""

    def __deepcopy__(self, memo: dict) -> SharedRef:
        return self


class DropPath(nn.Module):
    """Stochastic depth: in train mode zero a sample's residual branch with probability ``drop_prob`` and
    rescale the kept ones by 1/(1 − p)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask / keep if keep > 0 and self.scale_by_keep else mask)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"


class FFN(nn.Module):
    """fc1 → GELU(tanh) → fc2 (→ dropout)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        drop: float = 0.0,
        fused_if_available: bool = True,
    ):
        super().__init__()
        self.fused_if_available = fused_if_available  # recorded only
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SelfAttention(nn.Module):
    """Multi-head attention with a q/v bias (no k bias: ``zero_k_bias`` buffer), optional "L2-norm"
    attention (cosine similarity times a learned per-head temperature ``exp(scale_mul_1H11)`` capped at
    100) and a key/value cache for scale-by-scale sampling."""

    def __init__(
        self,
        block_idx: int,
        embed_dim: int = 768,
        num_heads: int = 12,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_l2_norm: bool = False,
        flash_if_available: bool = True,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.block_idx, self.num_heads, self.head_dim = block_idx, num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop
        self.flash_if_available = flash_if_available  # recorded only
        self.caching, self.cached_k, self.cached_v = False, None, None

    def kv_caching(self, enable: bool) -> None:
        """Switch the key/value cache on (empty) or off (cleared)."""
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, c]
        if self.attn_l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cached_k is not None:
                k, v = torch.cat((self.cached_k, k), 2), torch.cat((self.cached_v, v), 2)
            self.cached_k, self.cached_v = k, v
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q,
            k.to(q.dtype),
            v.to(q.dtype),
            attn_mask=attn_bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))

    def extra_repr(self) -> str:
        return f"attn_l2_norm={self.attn_l2_norm}"


class SharedAdaLin(nn.Linear):
    """One AdaLN projection shared by all blocks (``shared_aln=True``): cond [B, D] → [B, 1, 6, C]."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).view(-1, 1, 6, self.weight.shape[0] // 6)


class AdaLNSelfAttn(nn.Module):
    """Pre-norm transformer block whose LayerNorms (no affine) are modulated by the condition:
    x += γ₁·Attn(LN(x)·(1 + s₁) + b₁); x += γ₂·FFN(LN(x)·(1 + s₂) + b₂), (γ₁, γ₂, s₁, s₂, b₁, b₂) from
    ``ada_lin(cond)`` (or ``ada_gss`` + the shared projection)."""

    def __init__(
        self,
        block_idx: int,
        last_drop_p: float,
        embed_dim: int,
        cond_dim: int,
        shared_aln: bool,
        norm_layer,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_l2_norm: bool = False,
        flash_if_available: bool = False,
        fused_if_available: bool = True,
    ):
        super().__init__()
        self.block_idx, self.last_drop_p = block_idx, last_drop_p
        self.C, self.D = embed_dim, cond_dim
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = SelfAttention(
            block_idx=block_idx,
            embed_dim=embed_dim,
            num_heads=num_heads,
            attn_drop=attn_drop,
            proj_drop=drop,
            attn_l2_norm=attn_l2_norm,
            flash_if_available=flash_if_available,
        )
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio), drop=drop, fused_if_available=fused_if_available)
        self.ln_wo_grad = norm_layer(embed_dim, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * embed_dim))
        self.fused_add_norm_fn = None

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        mod = (self.ada_gss + cond_BD) if self.shared_aln else self.ada_lin(cond_BD).view(-1, 1, 6, self.C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)  # each [B, 1, C]
        h = self.attn(self.ln_wo_grad(x) * (1 + scale1) + shift1, attn_bias=attn_bias)
        x = x + self.drop_path(h * gamma1)
        h = self.ffn(self.ln_wo_grad(x) * (1 + scale2) + shift2)
        return x + self.drop_path(h * gamma2)

    def extra_repr(self) -> str:
        return f"shared_aln={self.shared_aln}"


class AdaLNBeforeHead(nn.Module):
    """The final LayerNorm (no affine) modulated by the condition: LN(x)·(1 + s) + b."""

    def __init__(self, C: int, D: int, norm_layer):
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = norm_layer(C, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * C))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC) * (1 + scale) + shift


def scale_ids(patch_nums: Sequence[int]) -> torch.Tensor:
    """The scale index of every token position [L] (0 for the pn_0² first tokens, ...)."""
    return torch.cat([torch.full((pn * pn,), i, device="cpu") for i, pn in enumerate(patch_nums)])


class VAR(nn.Module):
    """Args (as FoundationVision/VAR's ``VAR``):
    vae_local: the VQ-VAE (held by reference, NOT a submodule: it is not in ``state_dict``).
    num_classes: classes; the class embedding has one more row, index ``num_classes`` = no condition.
    depth, embed_dim, num_heads, mlp_ratio: transformer sizes (``build_var``: width 64·depth, depth heads).
    drop_rate, attn_drop_rate, drop_path_rate: dropouts (stochastic depth rises linearly to
        ``drop_path_rate`` over the blocks).
    norm_eps: LayerNorm epsilon.
    shared_aln: one AdaLN projection for all blocks (VAR-d36-s) instead of one per block.
    cond_drop_rate: label dropout inside ``forward`` (train mode only here; DDO uses 0 and drops labels
        outside).
    attn_l2_norm: cosine attention with learned temperature (the released models: True).
    patch_nums: token-map sides per scale (256 px: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), L = 680).
    flash_if_available, fused_if_available: accepted for compatibility, not used.
    """

    def __init__(
        self,
        vae_local: VQVAE,
        num_classes: int = 1000,
        depth: int = 16,
        embed_dim: int = 1024,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        shared_aln: bool = False,
        cond_drop_rate: float = 0.1,
        attn_l2_norm: bool = False,
        patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        flash_if_available: bool = True,
        fused_if_available: bool = True,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        if tuple(patch_nums) != tuple(vae_local.quantize.v_patch_nums):
            raise ValueError(
                f"patch_nums {tuple(patch_nums)} differ from the VQ-VAE's {vae_local.quantize.v_patch_nums}"
            )
        self.Cvae, self.V = vae_local.Cvae, vae_local.vocab_size
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.cond_drop_rate = cond_drop_rate
        self.patch_nums = tuple(patch_nums)
        self.L = sum(pn * pn for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends, end = [], 0
        for pn in self.patch_nums:
            self.begin_ends.append((end, end + pn * pn))
            end += pn * pn
        self.num_stages_minus_1 = len(self.patch_nums) - 1
        self.vae_proxy = SharedRef((vae_local,))
        self.vae_quant_proxy = SharedRef((vae_local.quantize,))

        self.word_embed = nn.Linear(self.Cvae, self.C)
        std = math.sqrt(1 / self.C / 3)
        self.num_classes = num_classes
        self.class_emb = nn.Embedding(num_classes + 1, self.C)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, self.C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, self.C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C)
        for t in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(t.data, mean=0, std=std)

        self.shared_ada_lin = (
            nn.Sequential(nn.SiLU(), SharedAdaLin(self.D, 6 * self.C)) if shared_aln else nn.Identity()
        )
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.drop_path_rate = drop_path_rate
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(
                block_idx=i,
                last_drop_p=0 if i == 0 else dpr[i - 1],
                embed_dim=self.C,
                cond_dim=self.D,
                shared_aln=shared_aln,
                norm_layer=norm_layer,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                attn_l2_norm=attn_l2_norm,
                flash_if_available=flash_if_available,
                fused_if_available=fused_if_available,
            )
            for i in range(depth)
        )
        self.using_fused_add_norm_fn = False

        ids = scale_ids(self.patch_nums).to(self.pos_1LC.device)
        self.register_buffer("lvl_1L", ids.view(1, self.L).clone())
        # block-causal over scales: query position i may attend to key j iff scale(j) <= scale(i)
        mask = torch.where(ids.view(-1, 1) >= ids.view(1, -1), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.view(1, 1, self.L, self.L).contiguous())

        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_layer=norm_layer)
        self.head = nn.Linear(self.C, self.V)

    def get_logits(self, h: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Final modulated LayerNorm and head, in float32: [B, l, C] → [B, l, V]."""
        return self.head(self.head_nm(h.float(), cond_BD).float()).float()

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, L, V] (the original's signature). In train mode, labels are replaced by
        the null class with probability ``cond_drop_rate`` (see the module docstring)."""
        if self.training and self.cond_drop_rate > 0:
            drop = torch.rand(label_B.shape[0], device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(drop, torch.full_like(label_B, self.num_classes), label_B)
        return self.forward_logits(label_B, x_BLCv_wo_first_l)

    def forward_logits(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced logits [B, L, V] without any label dropout. label_B: [B] int64 in
        [0, num_classes] (num_classes = no condition); x_BLCv_wo_first_l: [B, L − first_l, Cvae]."""
        B = label_B.shape[0]
        cond_BD = self.class_emb(label_B)
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start
        if x_BLCv_wo_first_l is None:
            x = sos
        else:
            x = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), 1)
        L = x.shape[1]
        x = x + self.lvl_embed(self.lvl_1L[:, :L]) + self.pos_1LC[:, :L]
        attn_bias = self.attn_bias_for_masking[:, :, :L, :L]
        cond = self.shared_ada_lin(cond_BD)
        for block in self.blocks:
            x = block(x, cond, attn_bias)
        return self.get_logits(x, cond_BD)

    @torch.no_grad()
    def init_weights(
        self,
        init_adaln: float = 0.5,
        init_adaln_gamma: float = 1e-5,
        init_head: float = 0.02,
        init_std: float = 0.02,
        conv_std_or_gain: float = 0.02,
    ) -> None:
        """VAR's from-scratch initialisation (``build_var`` calls it like ``build_vae_var``): truncated normal
        Linear/Embedding weights (std ``init_std``; < 0: sqrt(1/(3C))), zero biases, unit norms, the head
        scaled by ``init_head``, attention/FFN output projections by 1/sqrt(2·depth), the AdaLN projections
        by ``init_adaln`` (shift/scale rows) and ``init_adaln_gamma`` (gate rows)."""
        if init_std < 0:
            init_std = (1 / self.C / 3) ** 0.5
        norms = (
            nn.LayerNorm,
            nn.GroupNorm,
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.BatchNorm3d,
            nn.SyncBatchNorm,
            nn.InstanceNorm1d,
            nn.InstanceNorm2d,
            nn.InstanceNorm3d,
        )
        convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        for m in self.modules():
            weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=init_std)
                if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, norms):
                if weight is not None:
                    weight.fill_(1.0)
            elif isinstance(m, convs):
                if conv_std_or_gain > 0:
                    nn.init.trunc_normal_(m.weight, std=conv_std_or_gain)
                else:
                    nn.init.xavier_normal_(m.weight, gain=-conv_std_or_gain)
            else:
                continue
            if isinstance(bias, torch.Tensor):
                bias.zero_()
        if init_head >= 0:
            self.head.weight.mul_(init_head)
            self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                lin = block.ada_lin[-1]
                lin.weight[2 * self.C :].mul_(init_adaln)
                lin.weight[: 2 * self.C].mul_(init_adaln_gamma)
                lin.bias.zero_()

    def extra_repr(self) -> str:
        return f"drop_path_rate={self.drop_path_rate:g}"
