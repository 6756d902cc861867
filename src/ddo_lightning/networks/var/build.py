"""Builders and checkpoint loaders for VAR and its VQ-VAE.

``build_vae``/``build_var`` reproduce FoundationVision/VAR's ``build_vae_var`` hyperparameters (width
64·depth, depth heads, stochastic depth 0.1·depth/24, cosine attention, the released tokenizer's
``ch=160, vocab 4096, z 32, 4 partially shared φ``) WITHOUT its process-wide patch of
``torch.nn.{Linear, LayerNorm, Conv*, BatchNorm*}.reset_parameters``: building is slower
(default init, then ``init_weights``); pass ``init=False`` or build on ``torch.device("meta")`` when the
weights come from a checkpoint.

Released weights (plain state dicts, never downloaded by this project; see docs/var.md):
``vae_ch160v4096z32.pth``, ``var_d16.pth``, ``var_d20.pth``, ``var_d24.pth``, ``var_d30.pth``
(https://huggingface.co/FoundationVision/var) and DDO's ``var_d16-ddo.pth``/``var_d30-ddo.pth``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from ...errors import CheckpointMismatch
from ...files import read_tensor_file
from .transformer import VAR
from .vqvae import VQVAE

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

# The released checkpoints and the sizes they were trained with (README of FoundationVision/VAR).
VAR_CHECKPOINTS = {
    "vae_ch160v4096z32.pth": dict(kind="vae"),
    "var_d16.pth": dict(kind="var", depth=16),
    "var_d20.pth": dict(kind="var", depth=20),
    "var_d24.pth": dict(kind="var", depth=24),
    "var_d30.pth": dict(kind="var", depth=30),
}


def build_vae(
    V: int = 4096,
    Cvae: int = 32,
    ch: int = 160,
    share_quant_resi: int = 4,
    patch_nums: Sequence[int] = PATCH_NUMS_256,
    device: torch.device | str | None = None,
) -> VQVAE:
    """The tokenizer as VAR builds it (frozen, ``test_mode=True``)."""
    with torch.device(device) if device is not None else nullcontext():
        return VQVAE(
            vocab_size=V,
            z_channels=Cvae,
            ch=ch,
            test_mode=True,
            share_quant_resi=share_quant_resi,
            v_patch_nums=tuple(patch_nums),
        )


def build_var(
    vae: VQVAE,
    depth: int = 16,
    num_classes: int = 1000,
    shared_aln: bool = False,
    attn_l2_norm: bool = True,
    cond_drop_rate: float = 0.1,
    drop_path_rate: float | None = None,
    embed_dim: int | None = None,
    num_heads: int | None = None,
    init: bool = True,
    init_adaln: float = 0.5,
    init_adaln_gamma: float = 1e-5,
    init_head: float = 0.02,
    init_std: float = -1,
    device: torch.device | str | None = None,
) -> VAR:
    """VAR of a given depth with ``build_vae_var``'s rules: ``embed_dim = 64·depth``, ``num_heads = depth``,
    ``drop_path_rate = 0.1·depth/24`` (each overridable, for tiny test models). ``init``: run
    ``init_weights`` (skip it when loading weights)."""
    with torch.device(device) if device is not None else nullcontext():
        var = VAR(
            vae_local=vae,
            num_classes=num_classes,
            depth=depth,
            embed_dim=64 * depth if embed_dim is None else embed_dim,
            num_heads=depth if num_heads is None else num_heads,
            drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=0.1 * depth / 24 if drop_path_rate is None else drop_path_rate,
            norm_eps=1e-6,
            shared_aln=shared_aln,
            cond_drop_rate=cond_drop_rate,
            attn_l2_norm=attn_l2_norm,
            patch_nums=vae.quantize.v_patch_nums,
        )
        if init and not any(p.is_meta for p in var.parameters()):
            var.init_weights(
                init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head, init_std=init_std
            )
    return var


def build_vae_var(
    depth: int = 16,
    patch_nums: Sequence[int] = PATCH_NUMS_256,
    V: int = 4096,
    Cvae: int = 32,
    ch: int = 160,
    share_quant_resi: int = 4,
    num_classes: int = 1000,
    shared_aln: bool = False,
    attn_l2_norm: bool = True,
    init: bool = True,
    device: torch.device | str | None = None,
) -> tuple[VQVAE, VAR]:
    """(VQ-VAE, VAR) as the original ``build_vae_var`` makes them, without patching ``torch.nn``."""
    vae = build_vae(V, Cvae, ch, share_quant_resi, patch_nums, device)
    return vae, build_var(vae, depth, num_classes, shared_aln, attn_l2_norm, init=init, device=device)


def _read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    obj = read_tensor_file(path)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a plain state dict (name → tensor), as VAR's released .pth files are")
    return obj


def _strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape and not (what == "VQ-VAE" and k == "quantize.ema_vocab_hit_SV")
    )
    if missing or unexpected or shapes:

        def few(xs: list[str]) -> str:
            return ", ".join(xs[:8]) + (f", … ({len(xs)} in all)" if len(xs) > 8 else "")

        parts = [
            f"missing keys: {few(missing)}" if missing else "",
            f"unexpected keys: {few(unexpected)}" if unexpected else "",
            f"shape mismatches: {few(shapes)}" if shapes else "",
        ]
        raise CheckpointMismatch(f"{path} does not fit this {what} ({'; '.join(p for p in parts if p)})")
    module.load_state_dict(state, strict=True)


def load_vae_checkpoint(path: str | os.PathLike, vae: VQVAE | None = None, **build_kwargs) -> VQVAE:
    """A VQ-VAE with the weights of ``path`` (``torch.load(weights_only=True)``, strict). ``vae``: load into
    this one, else build it with ``build_vae(**build_kwargs)`` (defaults: the released tokenizer)."""
    state = _read_state_dict(path)
    vae = build_vae(**build_kwargs) if vae is None else vae
    _strict_load(vae, state, path, "VQ-VAE")
    return vae.eval().requires_grad_(False)


def load_var_checkpoint(
    path: str | os.PathLike, vae: VQVAE, var: VAR | None = None, depth: int | None = None, **build_kwargs
) -> VAR:
    """A VAR with the weights of ``path`` (strict). ``var``: load into this one; else build it with
    ``build_var(vae, depth, init=False, **build_kwargs)``, the depth inferred from the checkpoint
    (``blocks.{depth−1}``) when not given."""
    state = _read_state_dict(path)
    if var is None:
        if depth is None:
            ids = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
            if not ids:
                raise CheckpointMismatch(f"{path} has no 'blocks.*' tensors: not a VAR checkpoint")
            depth = max(ids) + 1
        var = build_var(vae, depth, init=False, **build_kwargs)
    _strict_load(var, state, path, "VAR")
    return var
