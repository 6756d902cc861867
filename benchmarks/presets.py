"""The networks and batches the benchmarks run: the three presets of configs/, shrunk where a CPU needs it.

- ``toy2d``: configs/toy2d.yaml's ToyMLP (2-D, hidden 64, depth 2), batch 512 (the config's).
- ``digits``: configs/digits.yaml's SongUNet (8×8×1, model_channels 32, channel_mult [1, 2], 1 block).
- ``cifar``: configs/edm_cifar10.yaml's DDPM++ SongUNet (32×32×3, channel_mult [2, 2, 2], 4 blocks,
  attention at 16, augment_dim 9, positional embedding) at reduced width: model_channels 32 instead
  of 128 (3.5M parameters instead of 55.7M) and small batches.

``quick`` shrinks everything further (smoke tests: seconds, not figures).
Dropout is 0 everywhere (DDO switches it off; the MLE comparison runs the same network).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ddo_lightning.networks import EDMPrecond, SongUNet, ToyMLP

PRESETS = ("toy2d", "digits", "cifar")


@dataclass
class Preset:
    name: str
    shape: tuple[int, ...]
    batch: int  # real batch B of a DDO step (B real + B fake)
    sample_batch: int  # samples per sampler call in the sampler benchmark
    sample_steps: int  # Heun steps in the sampler benchmark (NFE = 2N − 1)
    config: dict  # the config's round budget: batch, kimg_per_round, pool size, generation batch
    net_kwargs: dict = field(default_factory=dict)

    def network(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        if self.name == "toy2d":
            return EDMPrecond(ToyMLP(**self.net_kwargs), sigma_data=0.5)
        return EDMPrecond(SongUNet(**self.net_kwargs), sigma_data=0.5)

    def data(self, n: int, seed: int = 0) -> torch.Tensor:
        """n stand-in samples in [-1, 1] (timings do not depend on the values)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.rand((n, *self.shape), generator=gen) * 2 - 1

    def labels(self, n: int) -> torch.Tensor:
        return torch.zeros(n, 0)


def preset(name: str, quick: bool = False) -> Preset:
    if name == "toy2d":
        return Preset(
            "toy2d",
            (2,),
            batch=64 if quick else 512,
            sample_batch=256 if quick else 5000,
            sample_steps=4 if quick else 18,
            config=dict(batch=512, kimg_per_round=512, pool=50_000, generation_batch=10_000),
            net_kwargs=dict(data_dim=2, hidden=64, depth=2),
        )
    if name == "digits":
        return Preset(
            "digits",
            (1, 8, 8),
            batch=8 if quick else 128,
            sample_batch=16 if quick else 64,
            sample_steps=3 if quick else 8,
            config=dict(batch=128, kimg_per_round=32, pool=2_000, generation_batch=500),
            net_kwargs=dict(
                img_resolution=8,
                in_channels=1,
                out_channels=1,
                model_channels=16 if quick else 32,
                channel_mult=[1, 2],
                num_blocks=1,
                attn_resolutions=[],
                dropout=0.0,
            ),
        )
    if name == "cifar":
        return Preset(
            "cifar",
            (3, 16, 16) if quick else (3, 32, 32),
            batch=2 if quick else 4,
            sample_batch=2 if quick else 4,
            sample_steps=3 if quick else 6,
            config=dict(batch=512, kimg_per_round=1500, pool=50_000, generation_batch=500),
            net_kwargs=dict(
                img_resolution=16 if quick else 32,
                in_channels=3,
                out_channels=3,
                label_dim=0,
                augment_dim=9,
                model_channels=8 if quick else 32,
                channel_mult=[2, 2, 2],
                channel_mult_noise=1,
                embedding_type="positional",
                encoder_type="standard",
                decoder_type="standard",
                resample_filter=[1, 1],
                num_blocks=1 if quick else 4,
                attn_resolutions=[8] if quick else [16],
                dropout=0.0,
            ),
        )
    raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")


def presets_from(arg: str | None, quick: bool, default: tuple[str, ...] = PRESETS) -> list[Preset]:
    names = [s.strip() for s in arg.split(",")] if arg else list(default)
    return [preset(n, quick) for n in names]


def num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
