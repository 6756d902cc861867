"""Real image datasets: scikit-learn's digits (embedded), CIFAR-10 (official python batches) and EDM's
dataset_tool format (a folder or a .zip of PNG/JPEG images with an optional ``dataset.json``).

Every dataset holds its images as uint8 [N, C, H, W] and yields ``Samples(x, labels)`` with
``x = uint8_to_model(image)`` in [-1, 1]. Fake samples must go through the same quantisation
(docs/method.md §4): ``quantize(x) = uint8_to_model(model_to_uint8(x))``.
"""

from __future__ import annotations

import io
import json
import operator
import os
import pickle
import zipfile
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ..pixels import model_to_uint8, quantize, uint8_to_model
from ..protocols import Samples
from ..unpickle import RestrictedUnpickler, numpy_globals

__all__ = [
    "Cifar10Dataset",
    "DigitsDataset",
    "ImageDataset",
    "ImageFolderDataset",
    "model_to_uint8",
    "quantize",
    "uint8_to_model",
]


# ---------------------------------------------------------------------------------------------------
# Base class.


def subset_indices(n: int, max_size: int | None, seed: int = 0) -> np.ndarray:
    """The source items kept under ``max_size`` (EDM's rule): all of them, or a random subset drawn
    with ``seed``, in source order. int64 [min(n, max_size)]."""
    idx = np.arange(n, dtype=np.int64)
    if max_size is not None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1 or None, got {max_size}")
        if n > max_size:
            np.random.RandomState(seed % (1 << 31)).shuffle(idx)
            idx = np.sort(idx[:max_size])
    return idx


class ImageDataset(Dataset):
    """uint8 images [N, C, H, W] with optional integer labels, yielding ``Samples`` in model space.

    Args:
        images: uint8 [N, C, H, W] (tensor or array).
        labels: int [N] class indices, or None when the source has none.
        source: what the images came from (a path), named in errors.
        conditional: labels are one-hot of width ``num_classes``; otherwise width 0. Needs labels.
        xflip: double the dataset EDM-style: index i >= N is image i - N flipped horizontally.
        max_size: keep at most this many source images (a random subset drawn with ``seed``, kept in
            source order), before the xflip doubling.
        seed: seed of the ``max_size`` subset.
        resolution: expected H = W (None: not checked).
        channels: expected C (None: not checked).
        num_classes: number of classes (None: max label + 1).
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
        *,
        source: str = "<in-memory images>",
        conditional: bool = False,
        xflip: bool = False,
        max_size: int | None = None,
        seed: int = 0,
        resolution: int | None = None,
        channels: int | None = None,
        num_classes: int | None = None,
    ):
        self.source = str(source)
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{self.source}: images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) == 0:
            raise ValueError(f"{self.source}: no images")
        _, c, h, w = images.shape
        if channels is not None and c != channels:
            raise ValueError(f"{self.source}: images have {c} channels, expected {channels}")
        if resolution is not None and (h, w) != (resolution, resolution):
            raise ValueError(f"{self.source}: images are {h}x{w}, expected {resolution}x{resolution}")

        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels))
            if labels.shape != (len(images),) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(
                    f"{self.source}: labels must be integers [{len(images)}], got {labels.dtype} {tuple(labels.shape)}"
                )
            labels = labels.to(torch.int64)
            if (labels < 0).any():
                raise ValueError(f"{self.source}: negative label {int(labels.min())}")
            top = int(labels.max()) + 1
            if num_classes is None:
                num_classes = top
            elif top > num_classes:
                raise ValueError(f"{self.source}: label {top - 1} is out of range for num_classes={num_classes}")
        if conditional and labels is None:
            raise ValueError(f"{self.source}: conditional=True but the source has no labels")

        keep = torch.from_numpy(subset_indices(len(images), max_size, seed))
        self.raw_indices = keep  # [N] positions in the source
        self.images = images[keep].contiguous()  # [N, C, H, W] uint8
        self.raw_labels = None if labels is None else labels[keep]  # [N] int64 or None
        self._num_classes = int(num_classes or 0) if labels is not None else 0
        self.conditional, self.xflip, self.max_size, self.seed = bool(conditional), bool(xflip), max_size, seed
        if self.conditional:
            self._onehot = torch.nn.functional.one_hot(self.raw_labels, self._num_classes).float()
        else:
            self._onehot = torch.zeros(len(self.images), 0)

    @property
    def num_images(self) -> int:
        """Distinct images held (before the xflip doubling)."""
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Classes of the source (0 when it has no labels), whether or not the dataset is conditional."""
        return self._num_classes

    @property
    def label_dim(self) -> int:
        return int(self._onehot.shape[1])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return self.num_images * (2 if self.xflip else 1)

    def get_uint8(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item i as stored: uint8 [C, H, W] (flipped for the xflip half) and its float label [K]."""
        n = len(self)
        i = operator.index(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n}")
        j = i % self.num_images
        img = self.images[j]
        if i >= self.num_images:
            img = img.flip(-1)
        return img, self._onehot[j]

    def __getitem__(self, i: int) -> Samples:
        img, label = self.get_uint8(i)
        return Samples(uint8_to_model(img), label)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, images={self.num_images}, shape={self.sample_shape}, "
            f"num_classes={self.num_classes}, conditional={self.conditional}, xflip={self.xflip})"
        )


# ---------------------------------------------------------------------------------------------------
# scikit-learn's digits, embedded.


class DigitsDataset(ImageDataset):
    """The 1,797 8x8 grey handwritten digits of scikit-learn (UCI, CC BY 4.0), 10 classes, embedded in
    the package (``data/assets/digits.npz``; values 0..16 stored as round(v * 255 / 16)).

    Args:
        resolution: None or 8 for the native 8x8; a multiple of 8 upscales by nearest neighbour.
        conditional, xflip, max_size, seed: as ``ImageDataset``.
    """

    ASSET = "assets/digits.npz"

    def __init__(
        self,
        conditional: bool = False,
        xflip: bool = False,
        max_size: int | None = None,
        seed: int = 0,
        resolution: int | None = None,
    ):
        ref = resources.files("ddo_lightning.data").joinpath(self.ASSET)
        with ref.open("rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
        factor = 1
        if resolution is not None:
            if resolution < 8 or resolution % 8:
                raise ValueError(f"DigitsDataset: resolution must be a multiple of 8, got {resolution}")
            factor = resolution // 8
        images = torch.from_numpy(images)
        if factor > 1:
            images = images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
        super().__init__(
            images,
            labels,
            source=str(ref),
            conditional=conditional,
            xflip=xflip,
            max_size=max_size,
            seed=seed,
            resolution=resolution,
            channels=1,
            num_classes=10,
        )


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 python batches, through a restricted unpickler.


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Plain containers and numpy arrays: all a CIFAR-10 batch holds."""
    return {**numpy_globals(), ("builtins", "bytearray"): bytearray, ("__builtin__", "bytearray"): bytearray}


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may hold only builtins containers and numpy arrays. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        return _safe_unpickle(f, str(path))


def safe_loads_pickle(data: bytes, source: str) -> Any:
    """``safe_load_pickle`` of bytes (e.g. a member of an archive); ``source`` names them in errors."""
    return _safe_unpickle(io.BytesIO(data), source)


def _safe_unpickle(f: Any, source: str) -> Any:
    try:
        return RestrictedUnpickler(
            f,
            source,
            _allowed_globals(),
            encoding="bytes",  # Python 2 pickles
            hint="only numpy arrays and plain containers are allowed in CIFAR-10 batches",
        ).load()
    except pickle.UnpicklingError as e:
        if source in str(e):
            raise
        raise ValueError(f"{source}: not a valid pickle (truncated or corrupt?): {e}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError) as e:
        raise ValueError(f"{source}: not a valid pickle (truncated or corrupt?): {type(e).__name__}: {e}") from e


def _key(d: dict, name: str, path: Path) -> Any:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise ValueError(f"{path}: missing key {name.encode()!r} (keys: {sorted(map(repr, d))})")


DIR = "cifar-10-batches-py"  # the folder inside the official archive


def _read_tar_members(archive: Path, wanted: Sequence[str]) -> dict[str, bytes]:
    """The bytes of the regular files ``cifar-10-batches-py/<name>`` of a (gzipped) tar, in one pass;
    nothing is extracted to disk. A damaged archive is a ValueError naming it."""
    import tarfile

    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                folder, _, name = member.name.rpartition("/")
                if member.isfile() and name in wanted and folder.endswith(DIR):
                    out[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(
            f"{archive}: not a readable CIFAR-10 archive (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    return out


class Cifar10Dataset(ImageDataset):
    """CIFAR-10 from the official python batches: 3x32x32, 10 classes; 50,000 train / 10,000 test.

    Args:
        root: the official ``cifar-10-python.tar.gz`` (read in place, ``cache:cifar10``), its
            ``cifar-10-batches-py`` directory, or a directory containing that.
        split: 'train' (``data_batch_1`` .. ``data_batch_5``) or 'test' (``test_batch``).
        conditional, xflip, max_size, seed: as ``ImageDataset``.

    The batches are pickles; they are read with an unpickler that allows only numpy arrays and plain
    containers, so a tampered file cannot run code.
    """

    TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
    TEST = ("test_batch",)
    META = "batches.meta"
    CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def __init__(
        self,
        root: str | os.PathLike,
        split: Literal["train", "test"] = "train",
        conditional: bool = False,
        xflip: bool = False,
        max_size: int | None = None,
        seed: int = 0,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        names = self.TRAIN if split == "train" else self.TEST
        root = Path(root)
        if root.is_file():  # the downloaded cifar-10-python.tar.gz itself, read without extracting
            found = _read_tar_members(root, (*names, self.META))
            where = {n: f"{root}:{DIR}/{n}" for n in (*names, self.META)}
            load = {n: (lambda n=n: safe_loads_pickle(found[n], where[n])) for n in found}
        else:
            if (root / DIR).is_dir():
                root = root / DIR
            if not root.is_dir():
                raise FileNotFoundError(
                    f"{root}: CIFAR-10 not found (expected the cifar-10-python.tar.gz archive or "
                    "its cifar-10-batches-py directory)"
                )
            where = {n: str(root / n) for n in (*names, self.META)}
            load = {n: (lambda n=n: safe_load_pickle(root / n)) for n in where if (root / n).is_file()}
        images, labels = [], []
        for name in names:
            if name not in load:
                raise FileNotFoundError(f"{where[name]}: CIFAR-10 batch missing")
            x, y = self._read_batch(load[name](), where[name])
            images.append(x)
            labels.append(y)
        self.class_names = (
            self._read_meta(load[self.META](), where[self.META]) if self.META in load else self.CLASS_NAMES
        )
        self.split = split
        super().__init__(
            np.concatenate(images),
            np.concatenate(labels),
            source=str(root),
            conditional=conditional,
            xflip=xflip,
            max_size=max_size,
            seed=seed,
            resolution=32,
            channels=3,
            num_classes=10,
        )

    @staticmethod
    def _read_batch(d: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
        data, labels = _key(d, "data", path), _key(d, "labels", path)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise ValueError(
                f"{path}: b'data' must be a uint8 array, got {type(data).__name__} {getattr(data, 'dtype', '')}"
            )
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: b'data' must be [N, 3072], got {list(data.shape)}")
        try:
            labels = np.asarray(labels)
        except Exception as e:  # ragged or odd objects
            raise ValueError(f"{path}: b'labels' is not a list of integers: {e}") from e
        if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: b'labels' must be {len(data)} integers, got {labels.dtype} {list(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"{path}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
        # Each row is 1024 red, 1024 green, 1024 blue values, each channel row-major 32x32: CHW.
        return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)

    def _read_meta(self, d: Any, path: str) -> tuple[str, ...]:
        names = d.get(b"label_names", d.get("label_names")) if isinstance(d, dict) else None
        if not isinstance(names, (list, tuple)) or len(names) != 10:
            raise ValueError(f"{path}: expected b'label_names' with 10 entries")
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


# ---------------------------------------------------------------------------------------------------
# EDM dataset_tool format.

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_PROGRESS_THRESHOLD = 1000


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded PNG/JPEG bytes -> uint8 [C, H, W]; ``where`` names the file in errors."""
    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr"):
                im = im.convert("RGB")
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                raise ValueError(f"unsupported image mode {im.mode!r} (need 8-bit L, LA, RGB or RGBA)")
            arr = np.asarray(im, dtype=np.uint8)
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{where}: not a readable image: {e}") from e
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1)


def read_dataset_json_labels(
    names: list[str], fnames: list[str], read: Any, num_classes: int | None, where: str
) -> np.ndarray | None:
    """The labels [N] int64 of ``fnames`` from the folder's ``dataset.json`` (EDM's dataset_tool format:
    ``{"labels": [[relative_path, int], ...]}``), or None without one (or with ``"labels": null``).

    names: every member of the folder/zip; read(name) -> bytes; where: names ``dataset.json`` in errors.
    Shared by image folders and EDM2 latent folders."""
    if "dataset.json" not in names:
        return None
    try:
        meta = json.loads(read("dataset.json"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(meta, dict) or "labels" not in meta:
        raise ValueError(f"{where}: expected an object with a 'labels' entry")
    entries = meta["labels"]
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise ValueError(f"{where}: 'labels' must be a list of [relative_path, int_label] or null")
    table: dict[str, int] = {}
    for e in entries:
        if (
            not isinstance(e, (list, tuple))
            or len(e) != 2
            or not isinstance(e[0], str)
            or not isinstance(e[1], int)
            or isinstance(e[1], bool)
            or e[1] < 0
        ):
            raise ValueError(f"{where}: bad label entry {e!r} (need [relative_path, non-negative int])")
        table[e[0].replace("\\", "/")] = e[1]
    out = np.empty(len(fnames), dtype=np.int64)
    for i, name in enumerate(fnames):
        if name not in table:
            raise ValueError(f"{where}: no label for image {name!r}")
        out[i] = table[name]
        if num_classes is not None and out[i] >= num_classes:
            raise ValueError(f"{where}: label {out[i]} of {name!r} is out of range for num_classes={num_classes}")
    return out


class ImageFolderDataset(ImageDataset):
    """Images in EDM's dataset_tool format: a directory or a .zip of PNG/JPEG files (other files are
    ignored), ordered by sorted relative path, with an optional ``dataset.json`` at the top holding
    ``{"labels": [[relative_path, int_label], ...]}`` (or ``{"labels": null}``).

    Args:
        path: the directory or .zip.
        resolution: expected H = W of every image (None: all must match the first).
        channels: expected channel count (None: all must match the first).
        num_classes: number of classes (None: max label + 1).
        conditional, xflip, max_size, seed: as ``ImageDataset``.

    Images are decoded eagerly into uint8 memory (a progress bar above 1,000 images). Errors name the
    archive and the member.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        conditional: bool = False,
        xflip: bool = False,
        max_size: int | None = None,
        seed: int = 0,
        resolution: int | None = None,
        channels: int | None = None,
        num_classes: int | None = None,
    ):
        self.path = Path(path)
        zf = None
        if self.path.is_dir():
            names = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
            read = lambda name: (self.path / name).read_bytes()  # noqa: E731
        elif self.path.is_file():
            try:
                zf = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ValueError(f"{self.path}: not a readable zip archive (truncated or corrupt?): {e}") from e
            names = sorted(i.filename for i in zf.infolist() if not i.is_dir())

            def read(name: str) -> bytes:
                try:
                    return zf.read(name)
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as e:
                    raise ValueError(f"{self.path}: member {name!r} cannot be read (corrupt archive?): {e}") from e
        else:
            raise FileNotFoundError(f"{path}: no such directory or zip file")

        try:
            fnames = [n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
            if not fnames:
                raise ValueError(f"{self.path}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
            labels = self._read_labels(names, fnames, read, num_classes)
            if conditional and labels is None:
                raise ValueError(
                    f"{self.path}: conditional=True but it has no labels (no dataset.json, or its 'labels' is null)"
                )
            keep = subset_indices(len(fnames), max_size, seed)
            self.image_fnames = [fnames[i] for i in keep]
            images = self._read_images(self.image_fnames, read, resolution, channels)
        finally:
            if zf is not None:
                zf.close()
        super().__init__(
            images,
            None if labels is None else labels[keep],
            source=str(self.path),
            conditional=conditional,
            xflip=xflip,
            max_size=None,
            seed=seed,
            resolution=resolution,
            channels=channels,
            num_classes=num_classes,
        )
        self.raw_indices = torch.from_numpy(keep)
        self.max_size = max_size

    def _where(self, name: str) -> str:
        return f"{self.path}: member {name!r}" if self.path.is_file() else str(self.path / name)

    def _read_labels(
        self, names: list[str], fnames: list[str], read: Any, num_classes: int | None
    ) -> np.ndarray | None:
        return read_dataset_json_labels(names, fnames, read, num_classes, self._where("dataset.json"))

    def _read_images(self, fnames: list[str], read: Any, resolution: int | None, channels: int | None) -> np.ndarray:
        from tqdm.auto import tqdm

        out: np.ndarray | None = None
        first = None
        bar = tqdm(fnames, desc=f"loading {self.path.name}", unit="img", disable=len(fnames) <= _PROGRESS_THRESHOLD)
        for i, name in enumerate(bar):
            where = self._where(name)
            img = _decode_image(read(name), where)
            c, h, w = img.shape
            if channels is not None and c != channels:
                raise ValueError(f"{where}: image has {c} channels, expected {channels}")
            if resolution is not None and (h, w) != (resolution, resolution):
                raise ValueError(f"{where}: image is {h}x{w}, expected {resolution}x{resolution}")
            if out is None:
                out, first = np.empty((len(fnames), c, h, w), dtype=np.uint8), name
            elif c != out.shape[1]:
                raise ValueError(f"{where}: image has {c} channels, but the first image {first!r} has {out.shape[1]}")
            elif (h, w) != out.shape[2:]:
                raise ValueError(
                    f"{where}: image is {h}x{w}, but the first image {first!r} is {out.shape[2]}x{out.shape[3]}"
                )
            out[i] = img
        return out
