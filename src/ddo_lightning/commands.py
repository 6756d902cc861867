"""``ddo sample``, ``ddo fid`` and ``ddo fetch``: sampling, FID and downloads outside a training run.

    ddo sample --config configs/digits.yaml --ckpt outputs/digits/best.pt --seeds 0-999 --out samples.npz
    ddo sample --config configs/toy2d.yaml --ckpt outputs/toy2d/best.pt --seeds 0-4999 --out points.npz
    ddo sample --config configs/tokens.yaml --ckpt outputs/tokens/best.pt --out tokens.npz
    ddo fid --config configs/digits.yaml --ckpt outputs/digits/best.pt --features digits --ref digits-ref.npz
    ddo fid --images samples/ --ref cifar10-32x32.npz               # a folder, a .zip or an .npz of images
    ddo fid --write-stats cifar10-32x32.npz --config configs/edm_cifar10.yaml   # the config's real data
    ddo fetch --config configs/edm_cifar10.yaml      # every "cache:NAME" file of a preset (docs/fetch.md)

The network comes from the config's ``model.init_args.network`` (and its sampler, any ``samplers.Sampler``),
the weights from ``--ckpt`` (default: the config's ``init_from``): our ``.ckpt``/``.pt`` files or an NVIDIA
``.pkl``. Nothing is trained and no data module is built; sample noise is seeded per sample
(``Sampler.from_seeds``), so a seed gives the same sample whatever the batch size; labels are
class-balanced (sample i gets class i mod K) unless ``--class`` fixes one.

What ``ddo sample`` writes follows the samples (``SampleKind``): images [C, H, W] as PNGs or an ``.npz``
(``images`` uint8 [N, H, W, C]); vectors such as the 2-D demo's points as an ``.npz`` (``points`` float32
[N, D]); token sequences as an ``.npz`` (``tokens`` int64 [N, L], and ``images`` when the network decodes
tokens, as VAR does). Every ``.npz`` also has ``labels`` (−1: unconditional) and ``seeds``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import ArchitectureMismatch, load_network_weights
from .errors import CommandError
from .fetch import FetchError, resolve, resolve_refs
from .networks import raw_network
from .pixels import model_to_uint8
from .protocols import DecodesTokens, Denoiser, HasImages, SampleSpec
from .samplers import HeunSampler, Sampler

WHICH = ("auto", "ema", "reference", "target", "net")


# ---- inputs ------------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a bad value is an argument error, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_seeds(text: str) -> list[int]:
    """EDM's seed lists: ``0-999``, ``1,5,9``, ``0-9,100-109`` (ranges inclusive). A seed listed twice is
    refused: a seed names one sample (and one PNG file), and labels follow list positions, so a repeat
    would either be written twice or overwrite its first image with another class."""
    out: list[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise CommandError(f"--seeds: cannot read {part!r} in {text!r} (use e.g. 0-999 or 1,5,9)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise CommandError(f"--seeds: range {part!r} runs backwards")
        out.extend(range(lo, hi + 1))
    repeated = sorted(s for s, n in Counter(out).items() if n > 1)
    if repeated:
        listed = ", ".join(map(str, repeated[:5])) + (", ..." if len(repeated) > 5 else "")
        raise CommandError(f"--seeds: {text!r} lists seed(s) {listed} more than once; each seed names one sample")
    return out


def read_configs(paths: list[str]) -> dict[str, Any]:
    """The YAML configs merged left to right (later keys win, nested dicts merged), as LightningCLI does;
    a preset that names a base (``config: BASE.yaml``, ``config_files.py``) is read after its base."""
    from .config_files import ConfigIncludeError, strip_include, with_bases

    merged: dict[str, Any] = {}

    def merge(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = merge(dict(a[k]), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise CommandError(f"config not found: {missing[0]}")
    try:
        paths = with_bases(paths)
    except ConfigIncludeError as err:
        raise CommandError(str(err)) from err
    for p in paths:
        with open(p) as f:
            cfg = strip_include(yaml.safe_load(f) or {})
        if not isinstance(cfg, dict):
            raise CommandError(f"{p} is not a YAML mapping")
        merge(merged, cfg)
    return merged


def _instantiate(spec: Any, base: type, what: str) -> Any:
    """A ``class_path``/``init_args`` spec (or a class path string) of a subclass of ``base``, via jsonargparse."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=base)
    try:
        ns = parser.parse_object({"obj": spec})
        return parser.instantiate_classes(ns).obj
    except Exception as err:  # jsonargparse reports the offending key; name the section too
        raise CommandError(f"cannot build {what} from the config: {err}") from err


@dataclass(frozen=True)
class SampleKind:
    """What a network samples: ``shape`` of one sample, ``label_dim`` K, and ``kind``: ``"images"``
    ([C, H, W], model space), ``"points"`` (vectors [D]) or ``"tokens"`` (sequences [L] of int64)."""

    shape: tuple[int, ...]
    label_dim: int
    kind: Literal["images", "points", "tokens"]


def sample_kind_of(net: nn.Module) -> SampleKind:
    """The samples of a network (:class:`~ddo_lightning.protocols.SampleSpec`): its ``sample_shape`` and
    ``label_dim`` — the sizes ``training.base.check_data_fits_network`` checks against the data."""
    if not isinstance(net, SampleSpec):
        raise CommandError(f"cannot tell the sample shape of {type(net).__name__} (it has no sample_shape/label_dim)")
    shape, label_dim = tuple(int(d) for d in net.sample_shape), int(net.label_dim or 0)
    kind = "points" if isinstance(net, Denoiser) else "tokens"  # a diffusion denoiser samples vectors...
    kind = "images" if kind == "points" and len(shape) == 3 else kind  # ...or images
    return SampleKind(shape, label_dim, kind)


def sample_shape_of(net: nn.Module) -> tuple[tuple[int, ...], int]:
    """(sample shape, label width K) of a network (``sample_kind_of``)."""
    spec = sample_kind_of(net)
    return spec.shape, spec.label_dim


def load_denoiser(
    configs: list[str], ckpt: str | None, which: str = "auto", device: str = "cpu"
) -> tuple[nn.Module, Sampler, dict[str, Any]]:
    """The config's network with the checkpoint's weights (eval mode, fp32, on ``device``), the config's
    sampler (any ``samplers.Sampler``; none given: ``HeunSampler()``, the training modules' default), and
    a description of what was loaded."""
    cfg = resolve_refs(read_configs(configs), check=True)  # "cache:NAME" -> path (missing: the `ddo fetch` command)
    model = cfg.get("model")
    init = model.get("init_args", {}) if isinstance(model, dict) else {}
    if "network" not in init:
        raise CommandError(
            f"{', '.join(configs)}: no model.init_args.network (a DDOModule or MLEModule preset is needed)"
        )
    what = f"--ckpt {ckpt}" if ckpt else f"init_from {init.get('init_from')}"
    ckpt = resolve(ckpt or init.get("init_from") or "")
    if not ckpt:
        raise CommandError("no weights: pass --ckpt (the config has no model.init_args.init_from either)")
    if which not in WHICH:
        raise CommandError(f"--net must be one of {', '.join(WHICH)}, got {which!r}")
    net = _instantiate(copy.deepcopy(init["network"]), nn.Module, "model.init_args.network")
    sampler = (
        HeunSampler()
        if init.get("sampler") is None
        else _instantiate(copy.deepcopy(init["sampler"]), Sampler, "model.init_args.sampler")
    )
    try:
        load_network_weights(net, ckpt, what, None if which == "auto" else which)
    except ArchitectureMismatch:  # reported as it is (the recorded class / the differing tensors)
        raise
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(str(err)) from err
    net = net.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    return net, sampler, {"checkpoint": ckpt, "net": which, "network": type(raw_network(net)).__name__}


def with_steps(sampler: Sampler, steps: int | None) -> Sampler:
    """``--steps``: the sampler with that many steps (None: as configured)."""
    if steps is None:
        return sampler
    try:
        return sampler.with_steps(steps)
    except ValueError as err:
        raise CommandError(f"--steps {steps}: {err}") from err


def generate(
    net: nn.Module,
    sampler: Sampler,
    seeds: list[int],
    batch_size: int,
    device: str,
    class_idx: int | None = None,
    progress: bool = True,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Batches of (seeds, integer labels [B] (−1: unconditional), samples [B, *D]: images and points in
    model space, tokens as int64), each sample a function of its seed (``Sampler.from_seeds``)."""
    shape, label_dim = sample_shape_of(net)
    if class_idx is not None and not 0 <= class_idx < label_dim:
        raise CommandError(f"--class {class_idx}: the network has {label_dim} classes")
    positions = torch.arange(len(seeds))
    with tqdm(total=len(seeds), desc="sampling", unit="img", disable=not progress) as bar:
        for start in range(0, len(seeds), batch_size):
            chunk, pos = seeds[start : start + batch_size], positions[start : start + batch_size]
            if label_dim:
                ints = torch.full_like(pos, class_idx) if class_idx is not None else pos % label_dim
                onehot = nn.functional.one_hot(ints, label_dim).float()
            else:
                ints, onehot = torch.full_like(pos, -1), torch.zeros(len(pos), 0)
            x = sampler.from_seeds(net, chunk, onehot, shape, device)
            x = x if not x.is_floating_point() else x.float()
            bar.update(len(chunk))
            yield chunk, ints, x


def _device(name: str | None) -> str:
    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise CommandError(f"--device {name}: CUDA is not available on this machine")
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _refuse_overwrite(path: str, overwrite: bool) -> None:
    if overwrite:
        return
    if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
        raise CommandError(f"{path} exists and is not empty: pass --overwrite, or choose another --out")


# ---- ddo sample --------------------------------------------------------------------------------------
def write_png_folder(out: str, seeds: list[int], labels: np.ndarray, images_nhwc: np.ndarray) -> None:
    """PNGs ``<seed:06d>.png`` plus EDM's ``dataset.json`` (labels) when conditional: the folder loads
    back with ``ImageFolderDataset``."""
    from PIL import Image

    os.makedirs(out, exist_ok=True)
    names = []
    for s, img in zip(seeds, images_nhwc):
        name = f"{s:06d}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(os.path.join(out, name))
        names.append(name)
    if (labels >= 0).all():
        with open(os.path.join(out, "dataset.json"), "w") as f:
            json.dump({"labels": [[n, int(c)] for n, c in zip(names, labels)]}, f)


def decoder_of(net: nn.Module):
    """The network's tokens → images map (``decode``: tokens [B, L] → images [B, C, H, W] in [−1, 1], as
    VAR's adapter has: :class:`~ddo_lightning.protocols.DecodesTokens`), or None."""
    return net.decode if isinstance(net, DecodesTokens) else None


def _write_npz(path: str, **arrays: np.ndarray) -> None:
    """``np.savez`` through a temporary file renamed into place (an interrupted run leaves no half file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def sample_main(argv: list[str]) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="ddo sample",
        description="Draw samples from a checkpoint (fixed seeds, class-balanced "
        "labels): images as PNGs or .npz, points and tokens as .npz.",
    )
    p.add_argument(
        "--config", action="append", required=True, help="preset(s) naming the network and sampler (repeatable)"
    )
    p.add_argument("--ckpt", help="weights: our .ckpt/.pt or an NVIDIA .pkl (default: the config's init_from)")
    p.add_argument(
        "--net",
        default="auto",
        choices=WHICH,
        help="which network of a training checkpoint (auto: reference, else EMA)",
    )
    p.add_argument(
        "--seeds", default="0-63", help="seed list, EDM style: 0-999 or 1,5,9 (default 0-63; each seed once)"
    )
    p.add_argument(
        "--class", dest="class_idx", type=int, help="one class for all samples (default: class-balanced, i mod K)"
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument(
        "--steps", type=positive_int, help="sampler steps, >= 1 (Heun: NFE = 2*steps-1; default: the config's sampler)"
    )
    p.add_argument("--out", required=True, help="a folder for PNGs (images only), or a file ending in .npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    seeds = parse_seeds(a.seeds)
    _refuse_overwrite(a.out, a.overwrite)
    device = _device(a.device)
    net, sampler, info = load_denoiser(a.config, a.ckpt, a.net, device)
    sampler = with_steps(sampler, a.steps)
    spec = sample_kind_of(net)
    if spec.kind != "images" and not a.out.endswith(".npz"):
        raise CommandError(
            f"{type(raw_network(net)).__name__} makes {spec.kind} of shape {list(spec.shape)}, "
            "not images: --out must be a file ending in .npz"
        )
    decode = decoder_of(net) if spec.kind == "tokens" else None
    t0 = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {"labels": []}
    for _, ints, x in generate(net, sampler, seeds, a.batch_size, device, a.class_idx, progress=not a.quiet):
        parts["labels"].append(ints.numpy())
        if spec.kind == "points":
            parts.setdefault("points", []).append(x.cpu().numpy().astype(np.float32))
            continue
        if spec.kind == "tokens":
            parts.setdefault("tokens", []).append(x.cpu().numpy().astype(np.int64))
            if decode is None:
                continue
            x = decode(x)
        parts.setdefault("images", []).append(model_to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    arrays["labels"] = arrays["labels"].astype(np.int64)
    written = len(arrays["labels"])
    if a.out.endswith(".npz"):
        _write_npz(a.out, **arrays, seeds=np.asarray(seeds, np.int64))
    else:
        write_png_folder(a.out, seeds, arrays["labels"], arrays["images"])
    result = {
        **info,
        "out": a.out,
        "kind": spec.kind,
        "num_samples": written,
        "num_images": len(arrays.get("images", ())),
        "nfe": sampler.nfe,
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(result))
    return result


# ---- ddo fid -----------------------------------------------------------------------------------------
def build_extractor(name: str, inception_weights: str | None) -> nn.Module:
    from .metrics import DigitsFeatures, InceptionFeatures

    if name == "inception":
        return InceptionFeatures(inception_weights)
    if name == "digits":
        return DigitsFeatures()
    raise CommandError(f"--features must be 'inception' or 'digits', got {name!r}")


def declared_decoder(configs: list[str], device: str) -> nn.Module | None:
    """The preset's ``model.init_args.evaluator.init_args.decoder`` (samples → uint8 images [B, C, H, W]:
    ``data.StabilityVAE`` for EDM2's latents, ``networks.var.VARImageDecoder`` for VAR's tokens), on
    ``device``, or None: what the training run's FID decodes with, so ``ddo fid`` measures the same images."""
    model = resolve_refs(read_configs(configs), check=True).get("model")
    evaluator = (model.get("init_args") or {}).get("evaluator") if isinstance(model, dict) else None
    spec = (evaluator.get("init_args") or {}).get("decoder") if isinstance(evaluator, dict) else None
    if spec is None:
        return None
    return _instantiate(copy.deepcopy(spec), nn.Module, "model.init_args.evaluator.init_args.decoder").to(device).eval()


def uint8_images_of(net: nn.Module, decoder: nn.Module | None):
    """What turns ``net``'s samples into uint8 images [B, C, H, W] for a feature extractor: the preset's
    evaluator ``decoder`` when it declares one; else pixel quantisation of image samples, or of the
    network's own ``decode`` of token samples (VAR). Points, and tokens with neither decoder, have no
    images: a ``CommandError`` says so, before anything is sampled."""
    if decoder is not None:
        return decoder
    spec = sample_kind_of(net)
    if spec.kind == "images":
        return model_to_uint8
    decode = decoder_of(net) if spec.kind == "tokens" else None
    if decode is not None:
        return lambda x: model_to_uint8(decode(x))
    name = type(raw_network(net)).__name__
    why = "has no decode() to turn its tokens into images" if spec.kind == "tokens" else "makes no images"
    raise CommandError(
        f"ddo fid measures images; {name} makes {spec.kind} of shape {list(spec.shape)}, {why}, and the "
        "preset's evaluator declares no decoder: use the preset's evaluator (`ddo validate`), or "
        "`ddo sample` to export the samples"
    )


def image_batches(path: str, batch_size: int) -> tuple[int, Iterator[torch.Tensor]]:
    """uint8 [B, C, H, W] batches of an image folder or .zip (EDM's dataset format) or an .npz
    (``images`` or ``arr_0``, [N, H, W, C] or [N, C, H, W])."""
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise CommandError(f"--images: {path} not found")
        with np.load(path) as z:
            key = "images" if "images" in z.files else "arr_0" if "arr_0" in z.files else None
            if key is None:
                raise CommandError(f"{path} has no 'images' or 'arr_0' array (keys: {z.files})")
            arr = z[key]
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise CommandError(
                f"{path}: expected uint8 images [N, H, W, C] or [N, C, H, W], got {arr.dtype} {arr.shape}"
            )
        t = torch.from_numpy(arr)
        if t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
            t = t.permute(0, 3, 1, 2)
    else:
        from .data import ImageFolderDataset

        try:
            t = ImageFolderDataset(path).images
        except (FileNotFoundError, ValueError) as err:
            raise CommandError(f"--images: {err}") from err
    return len(t), iter(t.split(batch_size))


def fid_main(argv: list[str]) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="ddo fid",
        description="FID of a checkpoint's samples or of an image set against reference statistics (EDM's .npz: mu, sigma); "
        "or, with --write-stats, reference statistics of a dataset.",
    )
    p.add_argument("--ref", help="reference statistics .npz (mu, sigma)")
    p.add_argument(
        "--write-stats", metavar="OUT.npz", help="write the statistics of --images or the config's real data instead"
    )
    p.add_argument("--images", help="a folder or .zip of images (EDM's dataset format) or an .npz of uint8 images")
    p.add_argument(
        "--config", action="append", help="preset(s): the network (with --ckpt) or, with --write-stats, the real data"
    )
    p.add_argument("--ckpt", help="weights to sample from (default: the config's init_from)")
    p.add_argument("--net", default="auto", choices=WHICH)
    p.add_argument(
        "--num", type=positive_int, default=50000, help="samples to generate (seeds 0..num-1; default 50000)"
    )
    p.add_argument("--seeds", help="explicit seed list instead of --num")
    p.add_argument("--steps", type=positive_int, help="sampler steps, >= 1 (default: the config's sampler)")
    p.add_argument("--batch-size", type=positive_int, default=250)
    p.add_argument("--features", default="inception", choices=("inception", "digits"))
    p.add_argument("--inception-weights", help="torch-fidelity's Inception weights file (default: torch hub cache)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--json", help="also write the result to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --write-stats file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if (a.ref is None) == (a.write_stats is None):
        raise CommandError("give exactly one of --ref (compute FID) and --write-stats (write reference statistics)")
    if a.write_stats:
        _refuse_overwrite(a.write_stats, a.overwrite)
    device = _device(a.device)
    from .metrics import FrechetDistance
    from .metrics.fid import FULL_FID_SAMPLES, class_balanced, sample_provenance, sha256_file

    weights, ref = (resolve(x) if x else x for x in (a.inception_weights, a.ref))  # "cache:NAME" works here too
    metric = FrechetDistance(build_extractor(a.features, weights), name="fid", reference_stats=ref).to(device)
    t0 = time.perf_counter()
    sampler: Sampler | None = None
    result: dict[str, Any] = {"features": a.features}
    seed_info: dict[str, Any] | None = None  # provenance: the seeds sampled from (None: images given)
    balanced: bool | None = None  # provenance: class balance of the sampled labels (None: unconditional/unknown)
    if a.images:
        total, batches = image_batches(a.images, a.batch_size)
        result["images"] = a.images
    elif a.config and a.write_stats:  # the config's real data
        cfg = resolve_refs(read_configs(a.config), check=True)
        real = ((cfg.get("data") or {}).get("init_args") or {}).get("real")
        if real is None:
            raise CommandError(f"{', '.join(a.config)}: no data.init_args.real to take statistics of")
        ds = _instantiate(real, torch.utils.data.Dataset, "data.init_args.real")
        if not isinstance(ds, HasImages):
            raise CommandError(f"{type(ds).__name__} has no uint8 images")
        total, batches = len(ds.images), iter(ds.images.split(a.batch_size))
        result["dataset"] = repr(ds)
    elif a.config:
        net, sampler, info = load_denoiser(a.config, a.ckpt, a.net, device)
        sampler = with_steps(sampler, a.steps)
        to_uint8 = uint8_images_of(net, declared_decoder(a.config, device))
        seeds = parse_seeds(a.seeds) if a.seeds else list(range(a.num))
        total = len(seeds)
        seed_info = {
            "first": seeds[0],
            "last": seeds[-1],
            "contiguous": seeds == list(range(seeds[0], seeds[0] + total)),
        }
        label_dim = sample_shape_of(net)[1]  # sample i has class i mod K (generate)
        balanced = class_balanced(torch.arange(total) % max(label_dim, 1), label_dim)
        batches = (to_uint8(x) for _, _, x in generate(net, sampler, seeds, a.batch_size, device, progress=not a.quiet))
        result |= info
        if a.write_stats is None:
            result["note"] = "samples streamed to features (nothing written)"
    else:
        raise CommandError("nothing to measure: give --images, or --config (with --ckpt or the config's init_from)")
    if a.write_stats:
        mu, sigma = metric.statistics_of(batches, total=total if not a.quiet else None, desc="features")
        from .metrics.fid import save_reference_stats

        save_reference_stats(a.write_stats, mu, sigma, count=np.int64(total))
        result |= {"wrote": a.write_stats, "num_images": total, "feature_dim": int(mu.shape[0])}
        result |= {"wrote_sha256": sha256_file(a.write_stats)} | {
            k: v for k, v in metric.provenance().items() if k.startswith("feature_")
        }
    else:
        with tqdm(total=total, desc="features", unit="img", disable=a.quiet or not a.images) as bar:
            for b in batches:
                metric.update(b)
                bar.update(len(b))
        result |= {"fid": metric.compute()["fid"], "num_images": int(metric.count), "reference": a.ref}
        seeds_field = seed_info if seed_info is not None else {"first": None, "last": None, "note": "images given"}
        result |= sample_provenance(int(metric.count), seeds_field, balanced, metric)
        if result["proxy"]:
            result["note_proxy"] = f"{int(metric.count)} samples, fewer than {FULL_FID_SAMPLES}: a proxy of the FID"
    if sampler is not None:  # after sampling: a token sampler knows its cost once it has run
        result |= {"nfe": sampler.nfe, "sampler_steps": sampler.num_steps}
    result["seconds"] = time.perf_counter() - t0
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))
    return result


# ---- ddo fetch ---------------------------------------------------------------------------------------
def fetch_main(argv: list[str]) -> dict[str, Any]:
    """``ddo fetch NAME... | --config PRESET... | --list`` (docs/fetch.md)."""
    from .fetch import MANIFEST, cache_refs, cache_root, entry, entry_path, fetch_entry, find_problems
    from .fetch.download import entry_status

    p = argparse.ArgumentParser(
        prog="ddo fetch",
        description="Download checkpoints, datasets and statistics into the "
        "cache ($DDO_CACHE, default ~/.cache/ddo_lightning): resumable, atomic, checked by hash.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="manifest entries (see --list)")
    p.add_argument(
        "--config", action="append", help="every cache:NAME of these presets, merged as `ddo fit` merges them"
    )
    p.add_argument("--list", action="store_true", help="the manifest: entries, status, files, sources, licences")
    p.add_argument(
        "--retries", type=int, default=3, help="tries after a broken transfer that made progress (default 3)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.list:
        for e in MANIFEST.values():
            print(
                f"{e.name:22} {entry_status(e):8} {entry_path(e)}\n{'':31}{e.description}; {e.licence}\n"
                + "".join(f"{'':31}{f.url}\n" for f in e.files),
                end="",
            )
        return {"cache": str(cache_root()), "entries": list(MANIFEST)}
    cfg = read_configs(a.config) if a.config else None
    names = list(dict.fromkeys([*a.names, *(cache_refs(cfg) if cfg else [])]))
    if not names:
        raise CommandError("nothing to fetch: give entry names (`ddo fetch --list`) or --config PRESET")
    entries = [entry(n) for n in names]  # an unknown name fails before any download
    failed = []
    for e in entries:
        try:
            for path, how in fetch_entry(e, retries=a.retries, progress=not a.quiet):
                print(f"{e.name}: {path} ({how})")
        except FetchError as err:
            failed.append(e.name)
            print(f"ddo fetch: {err}", file=sys.stderr)
    by_hand = [q for q in find_problems(cfg) if not q.fetchable] if cfg else []
    for q in by_hand:
        print(f"not downloadable: {q.key}: {q.value}: {q.origin}", file=sys.stderr)
    if failed:
        raise CommandError(f"{len(failed)} of {len(entries)} entries not fetched: {', '.join(failed)} (messages above)")
    return {"fetched": names, "by_hand": [q.value for q in by_hand]}


def run_command(name: str, argv: list[str]) -> dict[str, Any]:
    """Run ``ddo <name>``; bad input exits with status 2 and one line naming the problem."""
    main = {"sample": sample_main, "fid": fid_main, "fetch": fetch_main}[name]
    try:
        return main(argv)
    except (CommandError, ArchitectureMismatch, FileNotFoundError, ImportError, FetchError) as err:
        print(f"ddo {name}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
