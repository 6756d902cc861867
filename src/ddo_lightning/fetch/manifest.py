"""The manifest: every external file a preset needs, with where it comes from and under which licence.

An entry NAME lives in the cache folder ``<root>/NAME/`` and is named in YAML as ``"cache:NAME"``
(docs/fetch.md). ``known_hash`` is only set where the publisher gives a checksum; every other file is
checked against the sha256 its first download recorded in the lock file (``cache.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MANIFEST", "Entry", "RemoteFile"]

EDM = "https://nvlabs-fi-cdn.nvidia.com/edm"
EDM2 = "https://nvlabs-fi-cdn.nvidia.com/edm2"
HF_VAR = "https://huggingface.co/FoundationVision/var/resolve/main"
HF_SD_VAE = "https://huggingface.co/stabilityai/sd-vae-ft-mse/resolve/main"
NVIDIA_LICENCE = "CC BY-NC-SA 4.0 (NVIDIA): non-commercial use only"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file of an entry.

    Args:
        url: where it is published.
        name: the file's name in the entry's cache folder (what presets get).
        known_hash: pooch's ``"sha256:..."`` / ``"md5:..."`` where the publisher gives one, else None.
        size: bytes, where published (a cheap first check), else None.
        download_name: the downloaded file's name when it differs from ``name``: the entry then holds
            both, and ``convert`` (a key of ``download.CONVERTERS``) turns one into the other.
        convert: how ``download_name`` becomes ``name`` (None: they are the same file).
    """

    url: str
    name: str
    known_hash: str | None = None
    size: int | None = None
    download_name: str | None = None
    convert: str | None = None

    @property
    def source_name(self) -> str:
        """The name the download is stored under."""
        return self.download_name or self.name


@dataclass(frozen=True)
class Entry:
    """A manifest entry: one cache folder holding one file (the usual case) or several (a model folder)."""

    name: str
    files: tuple[RemoteFile, ...]
    licence: str
    description: str
    folder: bool = False  # "cache:NAME" resolves to the folder (several files) instead of the single file
    notes: tuple[str, ...] = field(default=())


def _one(name: str, url: str, description: str, licence: str, **kw) -> Entry:
    return Entry(name, (RemoteFile(url, url.rsplit("/", 1)[1], **kw),), licence, description)


def _edm2_ref(name: str, res: int) -> Entry:
    pkl = f"{EDM2}/dataset-refs/img{res}.pkl"
    return Entry(
        name,
        (RemoteFile(pkl, f"img{res}.npz", download_name=f"img{res}.pkl", convert="edm2-ref-fid"),),
        NVIDIA_LICENCE,
        f"ImageNet-{res} Inception reference statistics (EDM2's img{res}.pkl 'fid' entry, stored as mu/sigma .npz)",
    )


MANIFEST: dict[str, Entry] = {
    e.name: e
    for e in [
        _one(
            "edm-cifar10-uncond-vp",
            f"{EDM}/pretrained/edm-cifar10-32x32-uncond-vp.pkl",
            "EDM's unconditional CIFAR-10 DDPM++ (VP) network pickle",
            NVIDIA_LICENCE,
        ),
        _one(
            "edm-cifar10-cond-vp",
            f"{EDM}/pretrained/edm-cifar10-32x32-cond-vp.pkl",
            "EDM's class-conditional CIFAR-10 DDPM++ (VP) network pickle",
            NVIDIA_LICENCE,
        ),
        _one(
            "edm2-img64-s",
            f"{EDM2}/posthoc-reconstructions/edm2-img64-s-1073741-0.075.pkl",
            "EDM2-S ImageNet-64 network pickle (power EMA sigma_rel 0.075)",
            NVIDIA_LICENCE,
        ),
        _one(
            "edm2-img512-l",
            f"{EDM2}/posthoc-reconstructions/edm2-img512-l-1879048-0.085.pkl",
            "EDM2-L ImageNet-512 latent network pickle (power EMA sigma_rel 0.085)",
            NVIDIA_LICENCE,
        ),
        # md5 and size as published on https://www.cs.toronto.edu/~kriz/cifar.html
        _one(
            "cifar10",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "CIFAR-10, python version (read from the archive directly)",
            "no licence stated by the authors; cite Krizhevsky (2009), 'Learning Multiple Layers of Features from Tiny Images'",
            known_hash="md5:c58f30108f718f92721af3b95e74349a",
            size=170498071,
        ),
        _one(
            "fid-ref-cifar10",
            f"{EDM}/fid-refs/cifar10-32x32.npz",
            "EDM's CIFAR-10 Inception reference statistics (mu, sigma)",
            NVIDIA_LICENCE,
        ),
        _edm2_ref("fid-ref-img64", 64),
        _edm2_ref("fid-ref-img512", 512),
        _one(
            "fid-ref-imagenet256",
            "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz",
            "OpenAI ADM's ImageNet-256 reference batch (has mu, sigma)",
            "MIT (openai/guided-diffusion); computed from ImageNet, whose terms of access apply",
        ),
        _one(
            "inception",
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
            "torch-fidelity's Inception-v3 weights (the 2015-12-05 TensorFlow FID graph)",
            "Apache-2.0 (torch-fidelity; converted from TensorFlow's Inception graph, Apache-2.0)",
        ),
        _one(
            "var-vae",
            f"{HF_VAR}/vae_ch160v4096z32.pth",
            "VAR's multi-scale VQ-VAE tokenizer (state dict)",
            "MIT (FoundationVision/VAR)",
        ),
        _one("var-d16", f"{HF_VAR}/var_d16.pth", "VAR-d16 (310M) state dict", "MIT (FoundationVision/VAR)"),
        _one("var-d30", f"{HF_VAR}/var_d30.pth", "VAR-d30 (2.0B) state dict", "MIT (FoundationVision/VAR)"),
        Entry(
            "sd-vae-ft-mse",
            (
                RemoteFile(f"{HF_SD_VAE}/config.json", "config.json"),
                RemoteFile(f"{HF_SD_VAE}/diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors"),
            ),
            "MIT (stabilityai/sd-vae-ft-mse)",
            "Stability AI's VAE as a diffusers folder (EDM2's 512 px latents)",
            folder=True,
        ),
    ]
}
