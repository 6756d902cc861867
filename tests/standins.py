"""Stand-in files in the exact formats of the files the paper presets read (tests only).

Nothing here is downloaded or copied: every file is written from random numbers (or from a freshly
initialised network of the size the rehearsal overlay asks for) in the layout of the real file:

* CIFAR-10: the python batches of ``cifar-10-python.tar.gz`` (pickled dicts with ``b'batch_label'``,
  ``b'labels'``, ``b'data'`` uint8 [N, 3072], ``b'filenames'``; ``batches.meta`` with ``b'label_names'``),
  as the folder ``cifar-10-batches-py`` or as the archive that holds it;
* EDM's snapshot pickle (``edm-cifar10-32x32-*.pkl``): ``dict(ema=EDMPrecond, loss_fn, augment_pipe,
  dataset_kwargs)`` and EDM2's (``edm2-img*.pkl``): ``EasyDict(dataset_kwargs, encoder, loss_fn, ema=fp16
  Precond)``, objects of NVIDIA's persistent classes pickled as ``torch_utils.persistence.
  _reconstruct_persistent_obj(meta)`` with the constructor kwargs in their state; the stored module source
  raises if anything ever executes it (the helpers of ``test_nvidia_pickle.py``);
* torch-fidelity's Inception weights (``weights-inception-2015-12-05-6726825d.pth``): its state-dict
  names and shapes, random values (``test_fid.write_random_inception_weights``; needs torch-fidelity);
* reference statistics in EDM's ``.npz`` format (``mu`` [d], ``sigma`` [d, d], float64);
* VAR's released ``.pth`` files: plain state dicts of the VQ-VAE and of the VAR (VAR's own names);
* VAR token data (``ddo_lightning.data.var_tokens``' ``.npz``);
* EDM2's datasets: a ``dataset_tool`` zip of PNGs with ``dataset.json`` labels (img64), a zip of encoded
  latents ``img-mean-std-*.npy`` (img512), and a diffusers ``AutoencoderKL`` folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``) shaped like ``sd-vae-ft-mse`` (4 levels, 8x upsampling).

``place(value, root)`` says where a preset's file setting points: a plain path (relative to the run's
working directory ``root``) or a ``cache:NAME`` reference (``$DDO_CACHE/NAME/<file>``, the shared cache's
layout), so the same writers serve both spellings.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

# The cache's entries: NAME -> the file it holds (None: a folder of several files).
CACHE_FILES: dict[str, str | None] = {
    "edm-cifar10-uncond-vp": "edm-cifar10-32x32-uncond-vp.pkl",
    "edm-cifar10-cond-vp": "edm-cifar10-32x32-cond-vp.pkl",
    "edm2-img64-s": "edm2-img64-s-1073741-0.075.pkl",
    "edm2-img512-l": "edm2-img512-l-1879048-0.085.pkl",
    "cifar10": "cifar-10-python.tar.gz",
    "fid-ref-cifar10": "cifar10-32x32.npz",
    "fid-ref-img64": "img64.npz",
    "fid-ref-img512": "img512.npz",
    "fid-ref-imagenet256": "VIRTUAL_imagenet256_labeled.npz",
    "inception": "weights-inception-2015-12-05-6726825d.pth",
    "var-vae": "vae_ch160v4096z32.pth",
    "var-d16": "var_d16.pth",
    "var-d30": "var_d30.pth",
    "sd-vae-ft-mse": None,
}


def place(value: str, root: str | os.PathLike) -> Path:
    """Where the file a preset names by ``value`` must be: ``root / value`` for a relative path, the path
    itself when absolute, ``$DDO_CACHE/NAME/<file>`` (or the folder ``$DDO_CACHE/NAME``) for ``cache:NAME``.
    Parent folders are created."""
    if value.startswith("cache:"):
        name = value[len("cache:") :]
        if name not in CACHE_FILES:
            raise KeyError(f"unknown cache entry {name!r} (known: {sorted(CACHE_FILES)})")
        folder = Path(os.environ["DDO_CACHE"]) / name
        path = folder if CACHE_FILES[name] is None else folder / CACHE_FILES[name]
    else:
        path = Path(value) if os.path.isabs(value) else Path(root) / value
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ---- CIFAR-10 ---------------------------------------------------------------------------------------
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_members(per_batch: int = 16, seed: int = 0) -> dict[str, bytes]:
    """The files of ``cifar-10-batches-py`` (name -> bytes), pickled as the official ones (protocol 2,
    bytes keys), with ``per_batch`` random images per batch."""
    rng = np.random.default_rng(seed)
    files = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {
            b"batch_label": f"{'testing' if name == 'test_batch' else 'training'} batch {i + 1} of 5".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"standin_{i}_{j}.png".encode() for j in range(per_batch)],
        }
        files[name] = pickle.dumps(batch, protocol=2)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
    files["batches.meta"] = pickle.dumps(meta, protocol=2)
    files["readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=http://www.cs.toronto.edu/~kriz/cifar.html'>\n"
    return files


def write_cifar10(dest: Path, per_batch: int = 16, seed: int = 0) -> Path:
    """``dest`` ending in ``.tar.gz``: the archive (members under ``cifar-10-batches-py/``); otherwise the
    folder ``dest`` itself holds the batches (a preset naming ``.../cifar-10-batches-py``)."""
    files = cifar10_members(per_batch, seed)
    if dest.name.endswith(".tar.gz"):
        with tarfile.open(dest, "w:gz") as tar:
            top = tarfile.TarInfo("cifar-10-batches-py")
            top.type, top.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(top)
            for name, data in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        dest.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (dest / name).write_bytes(data)
    return dest


# ---- NVIDIA snapshot pickles ------------------------------------------------------------------------
STORED_SOURCE = "raise RuntimeError('the module source stored in a stand-in NVIDIA pickle was executed')\n"


def _persistent_type(source: str = STORED_SOURCE):
    """The class whose objects pickle as persistent objects storing the module source ``source``."""
    from test_nvidia_pickle import _reconstruct_persistent_obj

    class Persistent:
        """What pickling an object of a ``persistent_class`` records (persistence.py version 6)."""

        def __init__(self, class_name: str, state: dict):
            self.class_name, self.state = class_name, state

        def __reduce__(self):
            meta = dict(type="class", version=6, module_src=source, class_name=self.class_name, state=self.state)
            return _reconstruct_persistent_obj, (meta,), None

    return Persistent


def _as_nvidia(module: nn.Module, names: dict[str, str], init_kwargs: dict | None = None, source: str = STORED_SOURCE):
    """The object tree NVIDIA's code pickles for ``module``: persistent objects named by ``names`` (our
    class name -> NVIDIA's), plain ``ModuleDict`` containers, no ``Dropout`` modules (NVIDIA's networks
    call ``functional.dropout``); only the top records constructor kwargs (the loader reads those)."""
    Persistent = _persistent_type(source)
    children = {
        n: _as_nvidia(c, names, source=source) for n, c in module._modules.items() if not isinstance(c, nn.Dropout)
    }
    state = dict(
        training=module.training,
        _parameters=dict(module._parameters),
        _buffers=dict(module._buffers),
        _non_persistent_buffers_set=set(),
        _modules=children,
    )
    if isinstance(module, nn.ModuleDict):
        md = nn.ModuleDict.__new__(nn.ModuleDict)
        md.__dict__.update(state)
        return md
    if type(module).__name__ not in names:
        raise TypeError(f"no NVIDIA class name for {type(module).__name__} (known: {sorted(names)})")
    state.update(_init_args=(), _init_kwargs=copy.deepcopy(init_kwargs or {}))
    return Persistent(names[type(module).__name__], state)


def _dump_nvidia(path: Path, data) -> Path:
    from test_nvidia_pickle import nvidia_names, nvidia_names_absent

    with nvidia_names():
        blob = pickle.dumps(data, protocol=4)
    assert nvidia_names_absent()
    path.write_bytes(blob)
    return path


EDM_NAMES = {
    n: n
    for n in (
        "EDMPrecond",
        "SongUNet",
        "UNetBlock",
        "Conv2d",
        "Linear",
        "GroupNorm",
        "PositionalEmbedding",
        "FourierEmbedding",
    )
}
EDM2_NAMES = {
    "EDM2Precond": "Precond",
    "Precond": "Precond",
    "UNet": "UNet",
    "Block": "Block",
    "MPConv": "MPConv",
    "MPFourier": "MPFourier",
}


def edm_init_kwargs(unet: dict, sigma_data: float = 0.5) -> dict:
    """EDMPrecond's recorded kwargs as EDM's train.py builds them (interface kwargs + the DDPM++ network
    kwargs + augment_dim, dropout, use_fp16), from the SongUNet init_args of a config."""
    kw = {k: v for k, v in unet.items() if k not in ("in_channels", "out_channels", "img_resolution", "label_dim")}
    return dict(
        img_resolution=unet["img_resolution"],
        img_channels=unet["in_channels"],
        label_dim=unet.get("label_dim", 0),
        use_fp16=False,
        sigma_data=sigma_data,
        model_type="SongUNet",
        **kw,
    )


def write_edm_pickle(path: Path, net: nn.Module, init_kwargs: dict) -> dict[str, torch.Tensor]:
    """EDM's ``network-snapshot-*.pkl`` / released ``edm-*.pkl``: ``dict(ema=<fp32 EDMPrecond, eval>,
    loss_fn=EDMLoss, augment_pipe=AugmentPipe, dataset_kwargs=dict)``. Returns the ema's state dict."""
    Persistent = _persistent_type()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    data = dict(
        ema=_as_nvidia(ema, EDM_NAMES, init_kwargs),
        loss_fn=Persistent("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5, _init_args=(), _init_kwargs={})),
        augment_pipe=Persistent(
            "AugmentPipe",
            dict(
                p=0.12,
                xflip=1e8,
                yflip=1,
                scale=1,
                rotate_frac=1,
                aniso=1,
                translate_frac=1,
                _init_args=(),
                _init_kwargs=dict(p=0.12),
            ),
        ),
        dataset_kwargs=dict(
            class_name="training.dataset.ImageFolderDataset",
            path="datasets/cifar10-32x32.zip",
            use_labels=bool(init_kwargs.get("label_dim")),
            xflip=False,
            cache=True,
            resolution=32,
            max_size=50000,
        ),
    )
    _dump_nvidia(path, data)
    return ema.state_dict()


def edm2_init_kwargs(net_args: dict) -> dict:
    """EDM2 Precond's recorded kwargs (train_edm2.py: interface kwargs + the preset's network kwargs +
    use_fp16), from the EDM2Precond init_args of a config."""
    return {**{k: v for k, v in net_args.items() if k not in ("use_fp16",)}, "use_fp16": True}


def write_edm2_pickle(
    path: Path, net: nn.Module, init_kwargs: dict, latent: bool, source: str = STORED_SOURCE
) -> dict[str, torch.Tensor]:
    """EDM2's ``network-snapshot-*.pkl`` / released ``edm2-img*.pkl``: ``EasyDict(dataset_kwargs, encoder,
    loss_fn, ema=<fp16 Precond, eval>)``, every persistent object storing the module source ``source``.
    Returns the ema's (fp16) state dict."""
    from test_nvidia_pickle import FakeEasyDict

    Persistent = _persistent_type(source)
    ema = copy.deepcopy(net).eval().requires_grad_(False).to(torch.float16)
    if latent:
        encoder = Persistent(
            "StabilityVAEEncoder",
            dict(
                vae_name="stabilityai/sd-vae-ft-mse",
                raw_mean=np.array([5.81, 3.25, 0.12, -2.15], np.float32),
                raw_std=np.array([4.17, 4.62, 3.71, 3.28], np.float32),
                final_mean=np.float32(0),
                final_std=np.float32(0.5),
                batch_size=8,
                _vae=None,
                _init_args=(),
                _init_kwargs={},
            ),
        )
    else:
        encoder = Persistent("StandardRGBEncoder", dict(_init_args=(), _init_kwargs={}))
    data = FakeEasyDict(
        dataset_kwargs=FakeEasyDict(
            class_name="training.dataset.ImageFolderDataset",
            path="datasets/img512-sd.zip" if latent else "datasets/img64.zip",
            use_labels=True,
        ),
        encoder=encoder,
        loss_fn=Persistent("EDM2Loss", dict(P_mean=-0.4, P_std=1.0, sigma_data=0.5, _init_args=(), _init_kwargs={})),
    )
    data.ema = _as_nvidia(ema, EDM2_NAMES, FakeEasyDict(init_kwargs), source)
    _dump_nvidia(path, data)
    return ema.state_dict()


# ---- FID ------------------------------------------------------------------------------------------
def write_reference_stats(path: Path, dim: int, seed: int = 0) -> Path:
    """EDM's reference statistics: ``mu`` [dim] and a symmetric positive-definite ``sigma`` [dim, dim]."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    np.savez(path, mu=rng.normal(size=dim), sigma=a @ a.T + 0.1 * np.eye(dim))
    return path


def write_inception_weights(path: Path) -> Path:
    """torch-fidelity's Inception weights file: its names and shapes, random values (needs torch-fidelity)."""
    from test_fid import write_random_inception_weights

    write_random_inception_weights(path)
    return path


# ---- VAR ------------------------------------------------------------------------------------------
def write_var_checkpoints(vae_path: Path, var_path: Path, network: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """The released ``vae_ch160v4096z32.pth`` and ``var_d*.pth`` formats (plain state dicts, VAR's names) for
    the VARNetwork init_args ``network`` of a config. Returns the VAR state dict."""
    from ddo_lightning.networks.var.build import build_vae, build_var

    torch.manual_seed(seed)
    vae = build_vae(
        network["vocab_size"],
        network["z_channels"],
        network["vae_ch"],
        network.get("share_quant_resi", 4),
        tuple(network["patch_nums"]),
    )
    var = build_var(
        vae,
        network["depth"],
        num_classes=network["num_classes"],
        embed_dim=network.get("embed_dim"),
        num_heads=network.get("num_heads"),
        attn_l2_norm=network.get("attn_l2_norm", True),
        shared_aln=network.get("shared_aln", False),
    )
    torch.save(vae.state_dict(), vae_path)
    state = var.state_dict()
    torch.save(state, var_path)
    return state


def write_var_tokens(
    path: Path, n: int, patch_nums: list[int], vocab_size: int, num_classes: int, seed: int = 0
) -> Path:
    """``ddo_lightning.data.encode_dataset``'s ``.npz``: tokens int16 [N, sum(p^2)], labels, num_classes, vocab_size."""
    rng = np.random.default_rng(seed)
    length = sum(p * p for p in patch_nums)
    np.savez(
        path,
        tokens=rng.integers(0, vocab_size, (n, length)).astype(np.int16),
        labels=rng.integers(0, num_classes, n).astype(np.int64),
        num_classes=np.int64(num_classes),
        vocab_size=np.int64(vocab_size),
    )
    return path


# ---- EDM2 datasets and the SD VAE -----------------------------------------------------------------
def write_image_zip(path: Path, n: int, resolution: int, num_classes: int, seed: int = 0) -> Path:
    """EDM's ``dataset_tool.py`` zip: ``00000/img00000000.png`` ... and ``dataset.json`` with labels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = []
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n):
            name = f"{i // 1000:05d}/img{i:08d}.png"
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(buf, format="png")
            z.writestr(name, buf.getvalue())
            labels.append([name, int(rng.integers(0, num_classes))])
        z.writestr("dataset.json", json.dumps({"labels": labels}))
    return path


def write_latent_zip(path: Path, n: int, hw: int, seed: int = 0) -> Path:
    """EDM2's ``dataset_tool.py encode`` zip: ``00000/img-mean-std-00000000.npy`` float32 [8, hw, hw] (VAE
    posterior mean and std of 4 channels) and ``dataset.json`` labels (``test_edm2.write_latents``)."""
    from test_edm2 import write_latents

    return Path(write_latents(path, n=n, hw=hw, zip_it=True, seed=seed))


def write_sd_vae(folder: Path, seed: int = 0) -> Path:
    """A diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) with
    sd-vae-ft-mse's structure (4 latent channels, 4 levels: 8x between latents and pixels, its scaling
    factor), narrow widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    )
    vae.save_pretrained(folder, safe_serialization=True)
    return folder
