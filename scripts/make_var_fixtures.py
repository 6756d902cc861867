"""Regenerate tests/data/var_state_dict_shapes.json and tests/data/var_tiny_parity.pt from the ORIGINAL
FoundationVision/VAR code (provenance of the VAR checkpoint-compatibility tests; not needed to run them).

    git clone https://github.com/FoundationVision/VAR /tmp/VAR
    git -C /tmp/VAR checkout 78b95394fc5896192e3a003e4b295f8ea743c48f
    python scripts/make_var_fixtures.py /tmp/VAR tests/data
    # or from an export without .git:  python scripts/make_var_fixtures.py /tmp/varorig tests/data <commit>

Run it in a throw-away process: the original ``build_vae_var`` replaces ``reset_parameters`` of several
``torch.nn`` classes process-wide. ``huggingface_hub`` is stubbed when missing (only ``VARHF`` needs
it). Peak memory ≈ 9 GB (VAR-d30 is allocated, uninitialised, on the CPU to count its parameters).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import torch


def fill(module: torch.nn.Module, seed: int) -> None:
    """Weights of the tiny parity model (tests/test_var.py imports this recipe)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            v = 0.1 * torch.randn(params[name].shape, generator=gen, dtype=torch.float64)
            if name.endswith("weight") and params[name].ndim == 1:
                v = v + 1
            params[name].copy_(v.to(params[name].dtype))


def main(repo: str, out_dir: str, commit: str | None = None) -> None:
    """``commit``: the original's commit when ``repo`` is an export without git metadata."""
    if commit is None:
        commit = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    sys.path.insert(0, repo)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        sys.modules["huggingface_hub"] = types.SimpleNamespace(
            PyTorchModelHubMixin=type("PyTorchModelHubMixin", (), {})
        )
    import models.var as original_var  # type: ignore[import-not-found]
    from models import VAR, VQVAE, build_vae_var  # type: ignore[import-not-found]
    from models.quant import PhiPartiallyShared  # type: ignore[import-not-found]

    out = Path(out_dir)
    VAR.init_weights = lambda self, **kw: None  # init does not change names or shapes; saves minutes
    shapes: dict = {
        "source": "github.com/FoundationVision/VAR",
        "commit": commit,
        "var": {},
        "vae": None,
        "how": (
            "original models.build_vae_var(device='cpu', depth=d, flash_if_available=False, "
            "fused_if_available=False) with its other defaults (V=4096, Cvae=32, ch=160, share_quant_resi=4, "
            "attn_l2_norm=True, shared_aln=False), VAR.init_weights skipped (init does not change names or "
            "shapes); state_dict() keys in order with shapes; num_params = sum(p.numel() for p in "
            "m.parameters()); num_tensors = len(state_dict()); phi_index_per_scale: which of the 4 "
            "partially shared Phi each of the 10 scales uses"
        ),
    }
    for depth in (16, 20, 24, 30):
        vae, var = build_vae_var(device="cpu", depth=depth, flash_if_available=False, fused_if_available=False)
        entry = {"num_params": sum(p.numel() for p in var.parameters()), "num_tensors": len(var.state_dict())}
        if depth in (16, 30):
            entry["state_dict"] = [[k, list(v.shape)] for k, v in var.state_dict().items()]
        shapes["var"][f"d{depth}"] = entry
        if shapes["vae"] is None:
            shapes["vae"] = {
                "num_params": sum(p.numel() for p in vae.parameters()),
                "num_tensors": len(vae.state_dict()),
                "state_dict": [[k, list(v.shape)] for k, v in vae.state_dict().items()],
            }
        del var
    mods = torch.nn.ModuleList([torch.nn.Identity() for _ in range(4)])
    pps = PhiPartiallyShared(mods)
    shapes["phi_index_per_scale"] = [next(i for i, m in enumerate(mods) if m is pps[si / 9]) for si in range(10)]
    (out / "var_state_dict_shapes.json").write_text(json.dumps(shapes, separators=(",", ":")))

    cfg = dict(
        vae=dict(vocab_size=32, z_channels=8, ch=32, share_quant_resi=4, v_patch_nums=(1, 2, 3), test_mode=True),
        var=dict(
            num_classes=5,
            depth=2,
            embed_dim=64,
            num_heads=2,
            drop_path_rate=0.0,
            cond_drop_rate=0.0,
            attn_l2_norm=True,
            patch_nums=(1, 2, 3),
            flash_if_available=False,
            fused_if_available=False,
        ),
    )
    vae = VQVAE(**cfg["vae"])
    var = VAR(vae_local=vae, **cfg["var"]).eval()
    fill(vae, 1)
    fill(var, 2)
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    labels = torch.tensor([1, 5])  # 5 = the null class
    sampled: list[torch.Tensor] = []
    draw = original_var.sample_with_top_k_top_p_

    def spy(logits, **kw):
        idx = draw(logits, **kw)
        sampled.append(idx[:, :, 0].clone())
        return idx

    original_var.sample_with_top_k_top_p_ = spy
    with torch.no_grad():
        idx = vae.img_to_idxBl(images)
        x = vae.quantize.idxBl_to_var_input(idx)
        record = {
            "source": f"github.com/FoundationVision/VAR@{commit}",
            "config": {
                part: {k: list(v) if isinstance(v, tuple) else v for k, v in c.items()} for part, c in cfg.items()
            },
            "weight_seeds": {"vae": 1, "var": 2},
            "images": images,
            "labels": labels,
            "tokens": torch.cat(idx, 1),
            "var_input": x,
            "recon": vae.idxBl_to_img(idx, same_shape=True, last_one=True),
            "logits": var(labels, x),
            "greedy_labels": torch.tensor([0, 3]),
            "greedy_cfg": 1.5,
            "greedy_images01": var.autoregressive_infer_cfg(
                B=2, label_B=torch.tensor([0, 3]), g_seed=0, cfg=1.5, top_k=1, top_p=0.0
            ),
        }
    record["greedy_tokens"] = torch.cat(sampled, 1)
    torch.save(record, out / "var_tiny_parity.pt")


if __name__ == "__main__":
    main(*sys.argv[1:4])
