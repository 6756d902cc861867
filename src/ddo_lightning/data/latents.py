"""Latent-space data for EDM2's 512 px models (EDM2 ``training/encoders.py``, ``dataset_tool.py encode``).

EDM2 trains its ImageNet-512 models on the latents of Stability AI's VAE (``stabilityai/sd-vae-ft-mse``,
8× downsampling: 64×64×4 for a 512×512 image). ``dataset_tool.py encode`` stores, per image, the VAE
posterior's mean and standard deviation as one float32 ``.npy`` of 8 channels [mean (4) ⊕ std (4), 64, 64]
(``img-mean-std-XXXXXXXX.npy``) in an EDM-style folder or zip with ``dataset.json`` labels. Training draws
a fresh latent ``mean + std·N(0, 1)`` every time an image is used and maps it to the model's space with a
fixed per-channel affine map ("raw" → "final" latents):

    final = raw·scale + bias,   scale = final_std / raw_std,   bias = final_mean − raw_mean·scale

with raw_mean = [5.81, 3.25, 0.12, −2.15], raw_std = [4.17, 4.62, 3.71, 3.28], final_mean = 0,
final_std = 0.5 (EDM2's ``StabilityVAEEncoder`` defaults). Decoding inverts the map and runs the VAE
decoder; EDM2 feeds the VAE pixels in [0, 1] (not [−1, 1]) and turns its output into uint8 as
``clamp(0, 1)·255`` truncated.

* :class:`LatentFolderDataset`: the real data of a latent DDO run (lazy: ImageNet's 1.28 M latents are
  168 GB of float32).
* :class:`StabilityVAE`: the VAE (diffusers' ``AutoencoderKL``, loaded from a local directory only, never
  downloaded) for decoding samples to uint8 pixels — the ``decoder`` of ``metrics.FrechetDistance`` (and
  hence of ``SampleGrids``) — and for encoding images into EDM2's mean ⊕ std format.

Fakes of a latent run stay latents (the DDO loss needs no decoding); the fake source must not quantise
them (``quantize: false``).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..protocols import Samples
from ..samplers import mix_seed

__all__ = ["EDM2_RAW_MEAN", "EDM2_RAW_STD", "LatentFolderDataset", "LatentScaling", "StabilityVAE"]

EDM2_RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
EDM2_RAW_STD = (4.17, 4.62, 3.71, 3.28)


class LatentScaling:
    """EDM2's per-channel affine map between raw VAE latents and the model's ("final") latents, computed in
    float32 like EDM2 (``scale = final_std/raw_std``, ``bias = final_mean − raw_mean·scale``)."""

    def __init__(
        self,
        raw_mean: Sequence[float] = EDM2_RAW_MEAN,
        raw_std: Sequence[float] = EDM2_RAW_STD,
        final_mean: float = 0.0,
        final_std: float = 0.5,
    ):
        if len(raw_mean) != len(raw_std):
            raise ValueError(f"raw_mean has {len(raw_mean)} channels, raw_std {len(raw_std)}")
        self.scale = np.float32(final_std) / np.asarray(raw_std, dtype=np.float32)
        self.bias = np.float32(final_mean) - np.asarray(raw_mean, dtype=np.float32) * self.scale
        self.channels = len(raw_mean)

    def _affine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-3] != self.channels:
            raise ValueError(f"latents have {x.shape[-3]} channels, the scaling {self.channels}")
        shape = (-1, 1, 1)
        return (
            torch.as_tensor(self.scale, device=x.device).reshape(shape),
            torch.as_tensor(self.bias, device=x.device).reshape(shape),
        )

    def to_final(self, raw: torch.Tensor) -> torch.Tensor:
        scale, bias = self._affine(raw)
        return raw.to(torch.float32) * scale + bias

    def to_raw(self, final: torch.Tensor) -> torch.Tensor:
        scale, bias = self._affine(final)
        return (final.to(torch.float32) - bias) / scale


class LatentFolderDataset(Dataset):
    """EDM2's encoded dataset (``dataset_tool.py encode``): a folder or .zip of ``.npy`` files, each float
    [2C, H, W] = VAE posterior mean ⊕ std, ordered by sorted relative path, with an optional
    ``dataset.json`` (``{"labels": [[relative_path, int_label], ...]}``), read lazily.

    Item i: ``Samples(final latent [C, H, W] float32, one-hot label [K])`` with the latent
    ``scaling.to_final(mean + std·ε)``, ε ~ N(0, 1) drawn anew at every access from torch's default
    generator (as EDM2 does; DataLoader workers get distinct seeds), or, with ``latent_seed`` set, from a
    generator seeded by (latent_seed, i): one fixed latent per image (reproducible, e.g. for tests).

    Args:
        path: the directory or .zip.
        conditional: labels are one-hot of width ``num_classes`` (needs ``dataset.json`` labels).
        num_classes: number of classes (None: max label + 1).
        max_size: keep the first ``max_size`` files (sorted order).
        latent_seed: see above (None: fresh draws).
        raw_mean, raw_std, final_mean, final_std: :class:`LatentScaling` (EDM2's defaults).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        conditional: bool = False,
        num_classes: int | None = None,
        max_size: int | None = None,
        latent_seed: int | None = None,
        raw_mean: Sequence[float] = EDM2_RAW_MEAN,
        raw_std: Sequence[float] = EDM2_RAW_STD,
        final_mean: float = 0.0,
        final_std: float = 0.5,
    ):
        from .images import read_dataset_json_labels

        self.path = Path(path)
        self.scaling = LatentScaling(raw_mean, raw_std, final_mean, final_std)
        self.latent_seed = latent_seed
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        if self.path.is_dir():
            names = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
        elif self.path.is_file():
            try:
                with zipfile.ZipFile(self.path) as zf:
                    names = sorted(i.filename for i in zf.infolist() if not i.is_dir())
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ValueError(f"{self.path}: not a readable zip archive (truncated or corrupt?): {e}") from e
        else:
            raise FileNotFoundError(f"{path}: no such directory or zip file")
        fnames = [n for n in names if n.lower().endswith(".npy")]
        if not fnames:
            raise ValueError(f"{self.path}: no .npy latents found (EDM2's `dataset_tool.py encode` output?)")
        if max_size is not None:
            fnames = fnames[: int(max_size)]
        labels = read_dataset_json_labels(names, fnames, self._read, num_classes, self._where("dataset.json"))
        if conditional and labels is None:
            raise ValueError(f"{self.path}: conditional=True but it has no labels (no dataset.json, or null labels)")
        self.fnames = fnames
        self.conditional = bool(conditional)
        self._num_classes = (
            0 if labels is None else (int(num_classes) if num_classes is not None else int(labels.max()) + 1)
        )
        self.raw_labels = None if labels is None else torch.from_numpy(labels)
        first = self._load(0)
        if first.shape[0] != 2 * self.scaling.channels:
            raise ValueError(
                f"{self._where(fnames[0])}: {first.shape[0]} channels, expected mean ⊕ std = "
                f"{2 * self.scaling.channels}"
            )
        self._shape = (self.scaling.channels, *first.shape[1:])

    # ---- reading --------------------------------------------------------------------------------------
    def _where(self, name: str) -> str:
        return f"{self.path}: member {name!r}" if self.path.is_file() else str(self.path / name)

    def _read(self, name: str) -> bytes:
        if self.path.is_dir():
            return (self.path / name).read_bytes()
        # opened lazily, once per process: forked DataLoader workers inherit the parent's handle without
        # pickling, and reads through one file offset shared by several processes corrupt each other
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip.read(name)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _zip=None)  # an open zip handle does not travel to spawned workers

    def _load(self, j: int) -> np.ndarray:
        name = self.fnames[j]
        try:
            arr = np.load(io.BytesIO(self._read(name)), allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{self._where(name)}: cannot read the latent ({type(e).__name__}: {e})") from e
        if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{self._where(name)}: expected a float [2C, H, W] array, got {arr.dtype} {arr.shape}")
        return arr

    # ---- dataset --------------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return len(self.fnames)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def label_dim(self) -> int:
        return self._num_classes if self.conditional else 0

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape

    def __len__(self) -> int:
        return len(self.fnames)

    def mean_std(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored posterior mean and std of item i, each float32 [C, H, W]."""
        arr = self._load(i)
        if (arr.shape[0] // 2, *arr.shape[1:]) != self._shape:
            raise ValueError(
                f"{self._where(self.fnames[i])}: shape {arr.shape}, expected {(2 * self._shape[0], *self._shape[1:])}"
            )
        mean, std = torch.from_numpy(arr.astype(np.float32)).chunk(2, dim=0)
        return mean, std

    def __getitem__(self, i: int) -> Samples:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)}")
        i = i % len(self)
        mean, std = self.mean_std(i)
        gen = None if self.latent_seed is None else torch.Generator().manual_seed(mix_seed(self.latent_seed, i))
        x = self.scaling.to_final(mean + torch.randn(mean.shape, generator=gen) * std)
        if self.conditional:
            label = torch.nn.functional.one_hot(self.raw_labels[i], self._num_classes).float()
        else:
            label = torch.zeros(0)
        return Samples(x, label)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={str(self.path)!r}, latents={len(self)}, shape={self.sample_shape}, "
            f"num_classes={self.num_classes}, conditional={self.conditional})"
        )


class StabilityVAE(nn.Module):
    """The VAE of EDM2's latent models, through diffusers' ``AutoencoderKL``: decodes final latents to
    uint8 pixels (and encodes pixels to EDM2's mean ⊕ std). ``FrechetDistance(decoder=...)`` keeps its
    weights out of checkpoints.

    Args:
        vae_path: a LOCAL diffusers directory (``config.json`` + weights) of the VAE, e.g. a download of
            ``stabilityai/sd-vae-ft-mse``; loaded with ``local_files_only=True`` (never downloads).
        vae: an ``AutoencoderKL`` instance instead of ``vae_path`` (tests, custom loading).
        raw_mean, raw_std, final_mean, final_std: :class:`LatentScaling` (EDM2's defaults).
        batch_size: images per VAE call (EDM2: 8).

    forward(latents [B, C, h, w] final) -> uint8 [B, 3, H, W]: ``decode``.
    """

    def __init__(
        self,
        vae_path: str | None = None,
        vae: nn.Module | None = None,
        raw_mean: Sequence[float] = EDM2_RAW_MEAN,
        raw_std: Sequence[float] = EDM2_RAW_STD,
        final_mean: float = 0.0,
        final_std: float = 0.5,
        batch_size: int = 8,
    ):
        super().__init__()
        if (vae_path is None) == (vae is None):
            raise ValueError("give exactly one of vae_path (a local diffusers directory) and vae")
        if vae is None:
            if not os.path.isdir(vae_path):
                raise FileNotFoundError(
                    f"VAE directory not found: {vae_path} (a local diffusers AutoencoderKL "
                    "directory, e.g. stabilityai/sd-vae-ft-mse downloaded beforehand)"
                )
            try:
                from diffusers import AutoencoderKL
            except ImportError as err:
                raise ImportError("decoding latents needs diffusers: pip install -e '.[latent]'") from err
            vae = AutoencoderKL.from_pretrained(vae_path, local_files_only=True)
        self.vae = vae.eval().requires_grad_(False)
        self.scaling = LatentScaling(raw_mean, raw_std, final_mean, final_std)
        self.batch_size = int(batch_size)

    def train(self, mode: bool = True) -> StabilityVAE:  # always in eval mode
        return super().train(False)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents [B, C, h, w] -> uint8 pixels [B, 3, H, W] (EDM2's ``StabilityVAEEncoder.decode``)."""
        raw = self.scaling.to_raw(latents)
        dtype = next(self.vae.parameters()).dtype
        pixels = torch.cat([self.vae.decode(b.to(dtype)).sample.float() for b in raw.split(self.batch_size)])
        return pixels.clamp(0, 1).mul(255).to(torch.uint8)

    @torch.no_grad()
    def encode(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [B, 3, H, W] -> raw posterior mean ⊕ std [B, 2C, h, w] float32 (what EDM2's
        ``dataset_tool.py encode`` stores per image)."""
        x = images_uint8.to(torch.float32) / 255
        dtype = next(self.vae.parameters()).dtype
        out = []
        for b in x.split(self.batch_size):
            dist = self.vae.encode(b.to(dtype)).latent_dist
            out.append(torch.cat([dist.mean, dist.std], dim=1).float())
        return torch.cat(out)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)
