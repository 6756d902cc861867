"""Record what the samplers draw for fixed seeds on tiny deterministic networks: tests/data/sampler_outputs.pt.

    PYTHONPATH=src python scripts/record_sampler_outputs.py tests/data/sampler_outputs.pt

The file is the oracle of ``tests/test_sampler.py::test_samplers_reproduce_the_recorded_outputs``: it was
written by the samplers as they were before the sampler contract was unified (the per-sample noise
helpers, the two inverse-CDF draws), so a refactor that changes any sample for a given seed fails that
test. Rerun this script only when a change of the samples is intended, and say so in the commit.

Every network is built from its class and filled by ``fill`` (scripts/make_var_fixtures.py: 0.1·N(0, 1)
per parameter, in sorted-name order, from a seeded generator), so only the outputs are stored.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# small, large and a mix_seed-sized seed, then enough seeds that a shifted inverse-CDF draw changes tokens
SEEDS = [0, 5, 17, 2**40 + 3, 6_620_173_409_512_399_123, *range(100, 160)]


def _fill():
    spec = importlib.util.spec_from_file_location("make_var_fixtures", ROOT / "scripts" / "make_var_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill


def _onehot(n: int, k: int, offset: int = 0) -> torch.Tensor:
    """[n, k] one-hot rows cycling through the k classes and an all-zero row (no condition)."""
    out = torch.zeros(n, k)
    for i in range(n):
        c = (i + offset) % (k + 1)
        if c < k:
            out[i, c] = 1
    return out


def networks() -> dict[str, torch.nn.Module]:
    """The tiny networks: a conditional 2-D diffusion denoiser, a TokenGPT and the VAR parity model."""
    from ddo_lightning.networks import EDMPrecond, TokenGPT, ToyMLP
    from ddo_lightning.networks.var import VARTokenModel
    from ddo_lightning.networks.var.transformer import VAR
    from ddo_lightning.networks.var.vqvae import VQVAE

    fill = _fill()
    toy = EDMPrecond(ToyMLP(data_dim=2, hidden=16, depth=2, label_dim=3), sigma_data=0.5)
    gpt = TokenGPT(vocab_size=6, length=5, label_dim=4, d_model=8, n_layer=1, n_head=1)
    parity = torch.load(ROOT / "tests" / "data" / "var_tiny_parity.pt", weights_only=True)
    cfg = {
        part: {k: tuple(v) if isinstance(v, list) else v for k, v in parity["config"][part].items()}
        for part in ("vae", "var")
    }
    vae = VQVAE(**cfg["vae"])
    fill(vae, parity["weight_seeds"]["vae"])
    var = VAR(vae, **cfg["var"])
    fill(var, parity["weight_seeds"]["var"])
    for i, net in enumerate((toy, gpt)):
        fill(net, 100 + i)
    return {"toy": toy.eval(), "gpt": gpt.eval(), "var": VARTokenModel(var, vae).eval()}


def outputs() -> dict[str, torch.Tensor]:
    """Every recorded draw, computed with the samplers' public entry points (``from_seeds`` and the
    seeded noise functions), which the refactor keeps."""
    from ddo_lightning.samplers import (
        HeunSampler,
        TokenSampler,
        seeded_normal,
        seeded_uniform,
    )

    nets = networks()
    seeds = torch.tensor(SEEDS)
    n = len(SEEDS)
    out = {
        "normal": seeded_normal(seeds, (3, 4)),
        "uniform": seeded_uniform(seeds, 7),
        "heun": HeunSampler(num_steps=5).from_seeds(nets["toy"], seeds, _onehot(n, 3), (2,), "cpu"),
        "heun_narrow": HeunSampler(num_steps=3, sigma_min=0.05, sigma_max=5.0, rho=3.0).from_seeds(
            nets["toy"], seeds, _onehot(n, 3, offset=2), (2,), "cpu"
        ),
    }
    gpt_labels = _onehot(n, 4)
    out["gpt"] = TokenSampler().from_seeds(nets["gpt"], seeds, gpt_labels, (5,), "cpu")
    out["gpt_filtered"] = TokenSampler(cfg=1.5, temperature=0.8, top_k=4, top_p=0.9).from_seeds(
        nets["gpt"], seeds, gpt_labels, (5,), "cpu"
    )
    var_labels = _onehot(n, 5, offset=3)
    length = nets["var"].length
    out["var"] = TokenSampler().from_seeds(nets["var"], seeds, var_labels, (length,), "cpu")
    out["var_filtered"] = TokenSampler(cfg=0.5, temperature=1.2, top_k=20, top_p=0.9).from_seeds(
        nets["var"], seeds, var_labels, (length,), "cpu"
    )
    return out


def main(path: str) -> None:
    torch.save({"seeds": SEEDS, "outputs": outputs()}, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "tests" / "data" / "sampler_outputs.pt"))
