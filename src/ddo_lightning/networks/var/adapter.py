"""VAR as a ``protocols.TokenModel`` for autoregressive DDO (docs/method.md §3).

A sample is the concatenation of all scales' index maps, row-major, coarse to fine: tokens [B, L],
L = Σ pn² (680 at 256 px). ``VARTokenModel(tokens, labels)`` returns VAR's teacher-forced logits
[B, L, V]: position t's distribution given the class and every token of the scales before t's scale
(tokens of the same scale are conditionally independent given the earlier scales, so the sequence
log-likelihood Σ_t log p(x_t | ·) is exact).

Quirks of the original quarantined here:
- VAR drops labels inside ``forward`` with ``cond_drop_rate`` (0.1), in eval mode too. The adapter sets
  it to 0 and always calls ``VAR.forward_logits``; DDO drops labels outside (``TokenDDO``), an all-zero
  label row meaning the null class ``num_classes``.
- Stochastic depth (``drop_path_rate = 0.1·depth/24``) is active in train mode, which makes the target's
  likelihood random and Δ ≠ 0 at θ = θ_ref. Switched off unless ``keep_drop_path=True`` (CCA keeps it and
  puts the reference in train mode too).
- The VQ-VAE is frozen and shared, not a submodule: it is not in ``state_dict`` or ``parameters()``
  (so neither in the optimizer, the EMA nor checkpoints), a deep copy (the DDO reference, the EMA)
  shares it instead of copying 109 M parameters, and ``.to()`` moves it along.
- The adapter's ``state_dict`` has VAR's own names (no ``var.`` prefix; ``load_state_dict`` accepts
  both): a released ``var_d16.pth`` is the adapter's state dict, so ``DDOModule(init_from=...)`` and
  ``checkpoints.load.load_network_weights`` read it as they read any plain state dict.

Sampling (``sample_tokens``): scale by scale with a key/value cache, all tokens of a scale in parallel;
token t is the inverse CDF of its (filtered) conditional at ``uniforms[:, t]``, so a sample is a function
of its seed only. CFG as VAR: logits (1 + s)·cond − s·uncond with s ramped linearly over scales,
s = cfg·k/(K − 1) (``cfg_schedule="linear"``, VAR's ``autoregressive_infer_cfg``) or constant
(``"constant"``, the generic ``samplers.tokens.sample_tokens``). Guidance-free by default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...pixels import quantize
from ...samplers.noise import inverse_cdf
from ...samplers.tokens import filtered_probs
from ..base import Network
from .build import build_vae, build_var, load_vae_checkpoint, load_var_checkpoint
from .transformer import VAR, DropPath
from .vqvae import VQVAE


@dataclass(frozen=True)
class VARSample:
    """tokens [B, L] int64; log_prob [B] float64: Σ_t log of the (guided, filtered) probability the sampler
    gave each drawn token; images [B, 3, H, W] in [−1, 1] (only when requested)."""

    tokens: torch.Tensor
    log_prob: torch.Tensor
    images: torch.Tensor | None = None


def _drop_var_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    head = prefix + "var."
    for key in [k for k in state_dict if k.startswith(head)]:
        state_dict[prefix + key[len(head) :]] = state_dict.pop(key)


def _add_var_prefix(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    head = prefix + "var."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(head)]:
        state_dict[head + key[len(prefix) :]] = state_dict.pop(key)


class VARTokenModel(Network):
    """Args:
    var: the VAR transformer (trained; its ``cond_drop_rate`` is set to 0).
    vae: its VQ-VAE tokenizer (frozen: eval, no gradients).
    fake_tokens: what ``prepare_fakes`` makes of the reference's samples (DDO's fakes): ``"tokens"`` (the sampled indices) or ``"reencode"``
        (the sampled tokens decoded to images and encoded again, as the paper's authors did for VAR
        fakes so that real and fake tokens come from the same encoder).
    reencode_uint8: in ``"reencode"``, quantise the decoded images to 8 bits first, as real images are.
    cfg_schedule: ``"linear"`` (VAR) or ``"constant"`` guidance over scales.
    keep_drop_path: keep VAR's stochastic depth in train mode (default: off, see the module docstring).
    """

    def __init__(
        self,
        var: VAR,
        vae: VQVAE,
        fake_tokens: Literal["tokens", "reencode"] = "tokens",
        reencode_uint8: bool = True,
        cfg_schedule: Literal["linear", "constant"] = "linear",
        keep_drop_path: bool = False,
    ):
        super().__init__()
        if fake_tokens not in ("tokens", "reencode"):
            raise ValueError(f"fake_tokens must be 'tokens' or 'reencode', got {fake_tokens!r}")
        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {cfg_schedule!r}")
        if var.vae_proxy[0] is not vae:
            raise ValueError("var was built with another VQ-VAE than the one given")
        self.var = var
        var.cond_drop_rate = 0.0
        if not keep_drop_path:
            for m in var.modules():
                if isinstance(m, DropPath):
                    m.drop_prob = 0.0
        vae.eval().requires_grad_(False)
        self.register_state_dict_post_hook(_drop_var_prefix)
        self.register_load_state_dict_pre_hook(_add_var_prefix)
        self.fake_tokens, self.reencode_uint8, self.cfg_schedule = fake_tokens, reencode_uint8, cfg_schedule

    @classmethod
    def from_checkpoints(cls, var_path: str | os.PathLike, vae_path: str | os.PathLike, **kwargs) -> VARTokenModel:
        """The released weights (``var_d16.pth`` …, ``vae_ch160v4096z32.pth``), strictly loaded."""
        vae = load_vae_checkpoint(vae_path)
        return cls(load_var_checkpoint(var_path, vae), vae, **kwargs)

    @property
    def vae(self) -> VQVAE:
        return self.var.vae_proxy[0]

    @property
    def vocab_size(self) -> int:
        return self.var.V

    @property
    def length(self) -> int:
        return self.var.L

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.var.L,)

    @property
    def label_dim(self) -> int:
        return self.var.num_classes

    @property
    def num_sampling_steps(self) -> int:
        """Forwards per sample (one per scale): what ``TokenSampler`` reports as steps."""
        return len(self.var.patch_nums)

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .float() also move the shared VQ-VAE
        super()._apply(fn, recurse)
        self.vae._apply(fn, recurse)
        return self

    def class_index(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot labels [B, K] → VAR class indices [B]; an all-zero row (or K = 0) → ``num_classes``."""
        B, K = labels.shape
        null = torch.full((B,), self.var.num_classes, dtype=torch.long, device=labels.device)
        if K == 0:
            return null
        if K != self.var.num_classes:
            raise ValueError(f"labels have {K} columns, VAR has {self.var.num_classes} classes")
        return torch.where(labels.abs().sum(1) > 0, labels.argmax(1), null)

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """[B, L] → the per-scale index maps [B, pn²]."""
        if tokens.ndim != 2 or tokens.shape[1] != self.var.L:
            raise ValueError(f"expected tokens [B, {self.var.L}], got {tuple(tokens.shape)}")
        return [tokens[:, b:e] for b, e in self.var.begin_ends]

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, L, V] (float32), no label dropout."""
        with torch.no_grad():
            x = self.vae.quantize.idxBl_to_var_input(self.split(tokens.long()))
        return self.var.forward_logits(self.class_index(labels), x)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [−1, 1] (H = 16·pn_last) → tokens [B, L] int64."""
        return torch.cat(self.vae.img_to_idxBl(images.float()), 1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, L] → images [B, 3, H, W] in [−1, 1]."""
        return self.vae.idxBl_to_img(self.split(tokens.long()), same_shape=True, last_one=True)

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        uniforms: torch.Tensor,
        cfg: float = 0.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        return_images: bool = False,
    ) -> VARSample:
        """Scale-by-scale sampling (module docstring) of the tokens, with the log-probabilities used and,
        if asked, the images decoded from the sampler's own f̂. labels [B, K]; uniforms [B, L] in [0, 1)."""
        var, quant = self.var, self.vae.quantize
        B = labels.shape[0]
        if uniforms.shape != (B, var.L):
            raise ValueError(f"expected uniforms [{B}, {var.L}], got {tuple(uniforms.shape)}")
        S, V, side = len(var.patch_nums), var.V, var.patch_nums[-1]
        guided = cfg != 0
        cls = self.class_index(labels.to(uniforms.device))
        if guided:
            cls = torch.cat([cls, torch.full_like(cls, var.num_classes)])
        cond_BD = var.class_emb(cls)
        cond = var.shared_ada_lin(cond_BD)
        lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC
        x = cond_BD.unsqueeze(1).expand(-1, var.first_l, -1) + var.pos_start + lvl_pos[:, : var.first_l]
        f_hat = torch.zeros(B, var.Cvae, side, side, device=cond_BD.device)
        tokens = torch.empty(B, var.L, dtype=torch.long, device=cond_BD.device)
        log_prob = torch.zeros(B, dtype=torch.float64, device=cond_BD.device)
        blocks = list(var.blocks)
        for blk in blocks:
            blk.attn.kv_caching(True)
        try:
            for si, (b, e) in enumerate(var.begin_ends):
                h = x
                for blk in blocks:
                    h = blk(h, cond, None)  # the cache holds every earlier scale: no mask needed
                logits = var.get_logits(h, cond_BD)
                if guided:
                    s = cfg * si / (S - 1) if self.cfg_schedule == "linear" else cfg
                    logits = (1 + s) * logits[:B] - s * logits[B:]
                probs = filtered_probs(logits.reshape(-1, V), temperature, top_k, top_p)
                idx = inverse_cdf(probs, uniforms[:, b:e].reshape(-1))
                log_prob += probs.gather(1, idx.unsqueeze(1)).log().view(B, -1).sum(1)
                idx = idx.view(B, e - b)
                tokens[:, b:e] = idx
                f_hat, nxt = quant.get_next_autoregressive_input(si, S, f_hat, quant.idx_to_h(idx))
                if si < S - 1:
                    x = var.word_embed(nxt.flatten(2).transpose(1, 2)) + lvl_pos[:, e : e + var.patch_nums[si + 1] ** 2]
                    if guided:
                        x = x.repeat(2, 1, 1)
        finally:
            for blk in blocks:
                blk.attn.kv_caching(False)
        return VARSample(tokens, log_prob, self.vae.fhat_to_img(f_hat) if return_images else None)

    @torch.no_grad()
    def sample_tokens(
        self,
        labels: torch.Tensor,
        uniforms: torch.Tensor,
        cfg: float = 0.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> torch.Tensor:
        """The sampled tokens [B, L] (what ``samplers.tokens.TokenSampler`` calls, for fakes and evaluation)."""
        return self.sample(labels, uniforms, cfg, temperature, top_k, top_p).tokens

    @torch.no_grad()
    def prepare_fakes(self, tokens: torch.Tensor) -> torch.Tensor:
        """What DDO trains on as fakes (``DDOModule.sample_reference`` calls this; evaluation does not):
        the sampled tokens, or with ``fake_tokens="reencode"`` the tokens of their decoded (8-bit) images."""
        if self.fake_tokens == "tokens":
            return tokens
        images = self.decode(tokens)
        return self.encode(quantize(images) if self.reencode_uint8 else images)


class VARNetwork(VARTokenModel):
    """``VARTokenModel`` built from plain hyperparameters, for configs (``model.init_args.network``).

    The VQ-VAE's weights come from ``vae_checkpoint`` (they are not part of the network's state dict);
    the VAR's from ``var_checkpoint`` or, in a DDO run, from ``DDOModule(init_from=...)`` (a released
    ``var_d16.pth`` is this network's state dict). Without checkpoints both are randomly initialised
    (tests). Sizes default to the released 256 px models; ``embed_dim``/``num_heads`` override VAR's
    depth rules (tiny test models).

    Args:
        depth: VAR depth (16, 20, 24, 30).
        vae_checkpoint, var_checkpoint: ``.pth`` state dicts (strict), or None.
        init: run VAR's ``init_weights`` when no ``var_checkpoint`` is given (skip it when ``init_from``
            will overwrite the weights anyway).
        num_classes, patch_nums, vocab_size, z_channels, vae_ch, share_quant_resi, embed_dim, num_heads,
            attn_l2_norm, shared_aln: the architecture (``build_vae``/``build_var``).
        fake_tokens, reencode_uint8, cfg_schedule, keep_drop_path: see ``VARTokenModel``.
    """

    def __init__(
        self,
        depth: int = 16,
        vae_checkpoint: str | None = None,
        var_checkpoint: str | None = None,
        init: bool = True,
        num_classes: int = 1000,
        patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        vocab_size: int = 4096,
        z_channels: int = 32,
        vae_ch: int = 160,
        share_quant_resi: int = 4,
        embed_dim: int | None = None,
        num_heads: int | None = None,
        attn_l2_norm: bool = True,
        shared_aln: bool = False,
        fake_tokens: Literal["tokens", "reencode"] = "tokens",
        reencode_uint8: bool = True,
        cfg_schedule: Literal["linear", "constant"] = "linear",
        keep_drop_path: bool = False,
    ):
        vae = build_vae(vocab_size, z_channels, vae_ch, share_quant_resi, tuple(patch_nums))
        if vae_checkpoint is not None:
            load_vae_checkpoint(vae_checkpoint, vae)
        arch = dict(
            num_classes=num_classes,
            shared_aln=shared_aln,
            attn_l2_norm=attn_l2_norm,
            embed_dim=embed_dim,
            num_heads=num_heads,
        )
        if var_checkpoint is not None:
            var = load_var_checkpoint(var_checkpoint, vae, depth=depth, **arch)
        else:
            var = build_var(vae, depth, init=init, **arch)
        super().__init__(
            var,
            vae,
            fake_tokens=fake_tokens,
            reencode_uint8=reencode_uint8,
            cfg_schedule=cfg_schedule,
            keep_drop_path=keep_drop_path,
        )
