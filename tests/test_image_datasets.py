"""Image datasets: the embedded digits, CIFAR-10's python batches (through a restricted unpickler) and
EDM's dataset_tool folder/zip format, plus the uint8 <-> [-1, 1] preprocessing shared with fakes."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ddo_lightning.data import (
    Cifar10Dataset,
    DigitsDataset,
    ImageDataset,
    ImageFolderDataset,
    model_to_uint8,
    quantize,
    uint8_to_model,
)
from ddo_lightning.protocols import Samples

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# preprocessing


def test_uint8_model_round_trip_exact_on_all_values():
    v = torch.arange(256, dtype=torch.uint8)
    x = uint8_to_model(v)
    assert x.dtype == torch.float32
    assert x[0] == -1 and x[255] == 1 and x.min() >= -1 and x.max() <= 1
    assert torch.equal(model_to_uint8(x), v)
    assert torch.equal(quantize(x), x)  # idempotent on the grid
    # clipping and rounding, as fakes would need
    assert model_to_uint8(
        torch.tensor([-3.0, 3.0, float(uint8_to_model(torch.tensor(7, dtype=torch.uint8))) + 1e-3])
    ).tolist() == [0, 255, 7]
    with pytest.raises(TypeError, match="uint8"):
        uint8_to_model(torch.zeros(3))


def test_image_dataset_base_validation():
    imgs = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="expected 1"):
        ImageDataset(imgs, source="src.bin", channels=1)
    with pytest.raises(ValueError, match="src.bin.*expected 16x16"):
        ImageDataset(imgs, source="src.bin", resolution=16)
    with pytest.raises(ValueError, match="src.bin: conditional=True but the source has no labels"):
        ImageDataset(imgs, source="src.bin", conditional=True)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(imgs.float(), source="src.bin")
    d = ImageDataset(imgs, [0, 1, 2, 1], max_size=2, seed=0)
    assert len(d) == 2 and d.num_classes == 3 and d.label_dim == 0
    assert d.raw_indices.tolist() == sorted(d.raw_indices.tolist())
    with pytest.raises(IndexError):
        d[2]


# ---------------------------------------------------------------------------------------------------
# digits


def test_digits_asset_is_package_data():
    assert resources.files("ddo_lightning.data").joinpath("assets/digits.npz").is_file()
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "data/assets/*.npz" in cfg["tool"]["setuptools"]["package-data"]["ddo_lightning"]


def test_digits():
    d = DigitsDataset()
    assert len(d) == 1797 and d.num_classes == 10 and d.sample_shape == (1, 8, 8) and d.label_dim == 0
    assert d.images.dtype == torch.uint8
    assert torch.bincount(d.raw_labels, minlength=10).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # 17 grey levels 0..16 stored as round(v * 255 / 16)
    assert set(torch.unique(d.images).tolist()) == {round(v * 255 / 16) for v in range(17)}
    s = d[0]
    assert isinstance(s, Samples) and s.x.shape == (1, 8, 8) and s.labels.shape == (0,)
    x = uint8_to_model(d.images)
    assert x.min() == -1 and x.max() == 1
    assert d.raw_labels[:10].tolist() == list(range(10))  # sklearn's digits start 0, 1, ..., 9


def test_digits_conditional_xflip_and_loader():
    d = DigitsDataset(conditional=True, xflip=True)
    n = 1797
    assert len(d) == 2 * n and d.label_dim == 10 and d.num_images == n
    for i in (0, 5, n - 1):
        a, b = d[i], d[i + n]
        assert torch.equal(b.x, a.x.flip(-1)) and torch.equal(a.labels, b.labels)
        assert a.labels.sum() == 1 and int(a.labels.argmax()) == int(d.raw_labels[i])
    assert torch.equal(d[-1].x, d[2 * n - 1].x)
    batch = next(iter(DataLoader(d, batch_size=16)))
    assert isinstance(batch, Samples) and batch.x.shape == (16, 1, 8, 8) and batch.labels.shape == (16, 10)
    assert DigitsDataset(resolution=16).sample_shape == (1, 16, 16)
    assert torch.equal(DigitsDataset(resolution=16).images[0, 0, ::2, ::2], d.images[0, 0])
    with pytest.raises(ValueError, match="multiple of 8"):
        DigitsDataset(resolution=12)
    small = DigitsDataset(max_size=100, seed=1)
    assert len(small) == 100 and torch.equal(small.images, DigitsDataset().images[small.raw_indices])


def test_digits_plug_into_datamodule():
    from ddo_lightning.training import DDODataModule

    dm = DDODataModule(DigitsDataset(conditional=True), batch_size=32)
    assert dm.sample_shape == (1, 8, 8) and dm.label_dim == 10
    batch = next(iter(dm.train_dataloader()))
    assert batch.x.shape == (32, 1, 8, 8) and batch.labels.shape == (32, 10)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 python batches


def _batch(rng, n, protocol):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    d = {
        b"batch_label": b"fake batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [b"f%d.png" % i for i in range(n)],
    }
    return data, labels, pickle.dumps(d, protocol=protocol)


@pytest.fixture
def cifar_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    truth = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels, raw = _batch(rng, 4 if name != "test_batch" else 3, protocol=2 if i % 2 else 5)
        (root / name).write_bytes(raw)
        truth[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    return root, truth


def test_cifar_decodes_chw_and_labels(cifar_root):
    root, truth = cifar_root
    d = Cifar10Dataset(root.parent, conditional=True)  # the parent of cifar-10-batches-py also works
    assert len(d) == 20 and d.sample_shape == (3, 32, 32) and d.label_dim == 10 and d.num_classes == 10
    assert d.class_names[0] == "airplane" and d.class_names[9] == "truck"
    data = np.concatenate([truth[f"data_batch_{k}"][0] for k in range(1, 6)])
    labels = sum((truth[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    assert d.raw_labels.tolist() == labels
    for i in (0, 7, 19):
        img = d.images[i].numpy()
        for c, h, w in [(0, 0, 0), (0, 0, 31), (1, 5, 3), (2, 31, 30)]:
            assert img[c, h, w] == data[i, c * 1024 + h * 32 + w]
        s = d[i]
        assert torch.equal(s.x, torch.from_numpy(data[i].reshape(3, 32, 32)).float() / 127.5 - 1)
        assert int(s.labels.argmax()) == labels[i]
    t = Cifar10Dataset(root, split="test", xflip=True)
    assert len(t) == 6 and t.label_dim == 0
    assert torch.equal(t.images, torch.from_numpy(truth["test_batch"][0].reshape(3, 3, 32, 32)))
    assert torch.equal(t[3].x, t[0].x.flip(-1))


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 str (BINSTRING), as the official batches (cPickle) do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        b = obj if isinstance(obj, bytes) else obj.encode("latin1")
        op = pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256 else pickle.BINSTRING + struct.pack("<i", len(b))
        self.write(op + b)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def test_cifar_reads_python2_pickles(cifar_root):
    root, truth = cifar_root
    data = np.random.default_rng(1).integers(0, 256, size=(4, 3072), dtype=np.uint8)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(
        {
            "batch_label": "training batch 4 of 5",
            "labels": [9, 0, 3, 3],
            "data": data,
            "filenames": ["a.png", "b.png", "c.png", "d.png"],
        }
    )
    assert (
        b"numpy.core.multiarray\n_reconstruct" in buf.getvalue()
        or b"numpy._core.multiarray\n_reconstruct" in buf.getvalue()
    )
    (root / "data_batch_4").write_bytes(buf.getvalue())
    d = Cifar10Dataset(root)
    assert d.raw_labels[12:16].tolist() == [9, 0, 3, 3]
    assert torch.equal(d.images[12:16], torch.from_numpy(data.reshape(4, 3, 32, 32)))
    # numpy 1.x's module path, whichever numpy wrote it
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    (root / "data_batch_4").write_bytes(raw)
    assert torch.equal(Cifar10Dataset(root).images[12:16], d.images[12:16])


def test_cifar_refuses_forbidden_globals(cifar_root, tmp_path):
    root, _ = cifar_root
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_2.*refusing.*system"):
        Cifar10Dataset(root)
    assert not marker.exists()
    # hand-written GLOBAL opcodes: os.system and builtins.eval
    for mod, name in [("os", "system"), ("builtins", "eval")]:
        raw = b"\x80\x02c" + f"{mod}\n{name}\n".encode() + b"X\x04\x00\x00\x00truep\x00\x85R."
        (root / "data_batch_2").write_bytes(raw)
        with pytest.raises(pickle.UnpicklingError, match=rf"data_batch_2.*'{mod}\.{name}'"):
            Cifar10Dataset(root)


def test_cifar_errors_name_the_file(cifar_root):
    root, truth = cifar_root
    raw3 = (root / "data_batch_3").read_bytes()
    (root / "data_batch_3").write_bytes(raw3[: len(raw3) // 2])
    with pytest.raises(ValueError, match=r"data_batch_3.*truncated"):
        Cifar10Dataset(root)
    (root / "data_batch_3").write_bytes(raw3[:-1])  # only the STOP opcode missing
    with pytest.raises(ValueError, match=r"data_batch_3"):
        Cifar10Dataset(root)
    (root / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3.*missing"):
        Cifar10Dataset(root)
    Cifar10Dataset(root, split="test")  # the test split does not need it
    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(ValueError, match=r"data_batch_3.*\[N, 3072\]"):
        Cifar10Dataset(root)
    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}))
    with pytest.raises(ValueError, match=r"data_batch_3.*labels"):
        Cifar10Dataset(root)
    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}))
    with pytest.raises(ValueError, match=r"data_batch_3.*uint8"):
        Cifar10Dataset(root)
    (root / "data_batch_3").write_bytes(pickle.dumps({b"labels": [0] * 4}))
    with pytest.raises(ValueError, match=r"data_batch_3.*missing key b'data'"):
        Cifar10Dataset(root)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Cifar10Dataset(root.parent / "nowhere")


def _cifar_archive(root, path, skip=()):
    """A gzipped tar laid out as the official cifar-10-python.tar.gz: cifar-10-batches-py/ with the
    batches, batches.meta and readme.html."""
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname="cifar-10-batches-py", recursive=False)
        for f in sorted(root.iterdir()):
            if f.name not in skip:
                tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"<p/>\n"))
    return path


def test_cifar_reads_the_official_archive_in_place(cifar_root, tmp_path):
    root, truth = cifar_root
    archive = _cifar_archive(root, tmp_path / "cifar-10-python.tar.gz")
    d = Cifar10Dataset(archive, conditional=True)
    data = np.concatenate([truth[f"data_batch_{k}"][0] for k in range(1, 6)])
    assert torch.equal(d.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert d.raw_labels.tolist() == sum((truth[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    assert d.class_names[1] == "automobile"
    t = Cifar10Dataset(archive, split="test")
    assert torch.equal(t.images, torch.from_numpy(truth["test_batch"][0].reshape(3, 3, 32, 32)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]  # nothing extracted


def test_cifar_archive_errors_name_the_archive(cifar_root, tmp_path):
    root, _ = cifar_root
    short = _cifar_archive(root, tmp_path / "short.tar.gz", skip=("data_batch_5",))
    with pytest.raises(FileNotFoundError, match=r"short\.tar\.gz:cifar-10-batches-py/data_batch_5.*missing"):
        Cifar10Dataset(short)
    full = _cifar_archive(root, tmp_path / "full.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match=r"cut\.tar\.gz: not a readable CIFAR-10 archive"):
        Cifar10Dataset(tmp_path / "cut.tar.gz")
    (root / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}))
    bad = _cifar_archive(root, tmp_path / "bad.tar.gz")
    with pytest.raises(ValueError, match=r"bad\.tar\.gz:cifar-10-batches-py/data_batch_2.*\[N, 3072\]"):
        Cifar10Dataset(bad)


# ---------------------------------------------------------------------------------------------------
# EDM dataset_tool folder / zip


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(value: int, size: int = 4) -> np.ndarray:
    a = np.full((size, size, 3), value, dtype=np.uint8)
    a[0, 0] = (0, 128, 255)  # fixed corner: red 0, green 128, blue 255
    return a


# written in a shuffled order; EDM orders by sorted relative path
FILES = {"b/img1.png": 20, "img0.png": 30, "a/img2.png": 10, "a/img10.png": 40}
ORDER = ["a/img10.png", "a/img2.png", "b/img1.png", "img0.png"]
LABELS = {"b/img1.png": 1, "img0.png": 0, "a/img2.png": 2, "a/img10.png": 2}


def _members(labels: dict | None | str = "absent", extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    m = {name: _png(_rgb(v)) for name, v in FILES.items()}
    m["README.txt"] = b"not an image, ignored"
    if labels != "absent":
        m["dataset.json"] = json.dumps(
            {"labels": None if labels is None else [[k, v] for k, v in labels.items()]}
        ).encode()
    m.update(extra or {})
    return m


def _write_dir(path: Path, members: dict[str, bytes]) -> Path:
    for name, raw in members.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(raw)
    return path


def _write_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return path


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_image_folder_order_labels_values(tmp_path, kind):
    write = (
        (lambda m: _write_dir(tmp_path / "ds", m)) if kind == "dir" else (lambda m: _write_zip(tmp_path / "ds.zip", m))
    )
    src = write(_members(LABELS))
    d = ImageFolderDataset(src, conditional=True, resolution=4, channels=3)
    assert d.image_fnames == ORDER
    assert len(d) == 4 and d.sample_shape == (3, 4, 4) and d.label_dim == 3 and d.num_classes == 3
    assert d.raw_labels.tolist() == [LABELS[n] for n in ORDER]
    for i, name in enumerate(ORDER):
        s = d[i]
        assert s.x[:, 1:, 1:].unique().tolist() == [torch.tensor(FILES[name] / 127.5 - 1, dtype=torch.float32).item()]
        assert s.x[:, 0, 0].tolist() == uint8_to_model(torch.tensor([0, 128, 255], dtype=torch.uint8)).tolist()
        assert s.x[0, 0, 0] == -1 and s.x[2, 0, 0] == 1  # pixel 0 -> -1, 255 -> 1, CHW
        assert int(s.labels.argmax()) == LABELS[name] and s.labels.sum() == 1
    # without dataset.json, or with null labels: unconditional works, conditional names the source
    for labels in ("absent", None):
        src = write(_members(labels)) if kind == "zip" else _write_dir(tmp_path / f"ds_{labels}", _members(labels))
        d = ImageFolderDataset(src, xflip=True)
        assert d.label_dim == 0 and d.num_classes == 0 and len(d) == 8 and d.image_fnames == ORDER
        assert torch.equal(d[4].x, d[0].x.flip(-1))
        with pytest.raises(ValueError, match=rf"{src.name}: conditional=True but it has no labels"):
            ImageFolderDataset(src, conditional=True)


def test_image_folder_dir_and_zip_agree_and_subset(tmp_path):
    a = ImageFolderDataset(_write_dir(tmp_path / "ds", _members(LABELS)))
    b = ImageFolderDataset(_write_zip(tmp_path / "ds.zip", _members(LABELS)))
    assert torch.equal(a.images, b.images) and torch.equal(a.raw_labels, b.raw_labels)
    s = ImageFolderDataset(tmp_path / "ds.zip", max_size=2, seed=3)
    assert len(s) == 2 and s.image_fnames == [ORDER[i] for i in s.raw_indices.tolist()]
    assert torch.equal(s.images, b.images[s.raw_indices])


def test_image_folder_grey_and_jpeg(tmp_path):
    g = np.zeros((6, 6), np.uint8)
    g[:, 3:] = 255
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format="JPEG", quality=95)
    d = ImageFolderDataset(_write_dir(tmp_path / "g", {"x.png": _png(g), "y.jpg": buf.getvalue()}), channels=1)
    assert d.sample_shape == (1, 6, 6)
    assert torch.equal(d.images[0, 0], torch.from_numpy(g))
    assert (d.images[1, 0].int() - torch.from_numpy(g).int()).abs().max() < 40  # lossy but the same picture


def test_image_folder_errors_name_archive_and_member(tmp_path):
    def zip_err(extra, match, **kw):
        path = _write_zip(tmp_path / "bad.zip", _members(None, extra))
        with pytest.raises(ValueError, match=match):
            ImageFolderDataset(path, **kw)

    zip_err({"c/big.png": _png(_rgb(5, size=8))}, r"bad\.zip: member 'c/big\.png'.*8x8.*first image 'a/img10\.png'")
    zip_err(
        {"c/grey.png": _png(np.zeros((4, 4), np.uint8))},
        r"bad\.zip: member 'c/grey\.png': image has 1 channels, but the first image 'a/img10\.png' has 3",
    )
    zip_err({"c/junk.png": b"this is not a png"}, r"bad\.zip: member 'c/junk\.png': not a readable image")
    zip_err({}, r"bad\.zip: member 'a/img10\.png'.*expected 8x8", resolution=8)
    zip_err({}, r"bad\.zip: member 'a/img10\.png'.*expected 1", channels=1)
    zip_err({"dataset.json": b"{not json"}, r"bad\.zip: member 'dataset\.json': not valid JSON")
    zip_err(
        {"dataset.json": json.dumps({"labels": [["img0.png", 0]]}).encode()},
        r"dataset\.json.*no label for image 'a/img10\.png'",
    )
    zip_err({"dataset.json": json.dumps({"labels": [["img0.png", "cat"]]}).encode()}, r"dataset\.json.*bad label entry")

    # the same in a directory names the file
    _write_dir(tmp_path / "d", _members(None, {"c/big.png": _png(_rgb(5, size=8))}))
    with pytest.raises(ValueError, match=r"d/c/big\.png.*8x8"):
        ImageFolderDataset(tmp_path / "d")

    # a truncated zip (central directory cut off) and plain garbage
    good = _write_zip(tmp_path / "good.zip", _members(LABELS)).read_bytes()
    (tmp_path / "trunc.zip").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"trunc\.zip: not a readable zip archive"):
        ImageFolderDataset(tmp_path / "trunc.zip")
    (tmp_path / "garbage.zip").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"garbage\.zip: not a readable zip archive"):
        ImageFolderDataset(tmp_path / "garbage.zip")

    # a member whose stored bytes were damaged (CRC mismatch)
    payload = _png(_rgb(77)) + b"MARKER-PADDING"
    raw = _write_zip(tmp_path / "crc.zip", {"x.png": payload}, compression=zipfile.ZIP_STORED).read_bytes()
    assert raw.count(b"MARKER") == 1
    (tmp_path / "crc.zip").write_bytes(raw.replace(b"MARKER", b"MARKEX"))
    with pytest.raises(ValueError, match=r"crc\.zip: member 'x\.png' cannot be read"):
        ImageFolderDataset(tmp_path / "crc.zip")

    with pytest.raises(ValueError, match=r"empty\.zip: no images"):
        ImageFolderDataset(_write_zip(tmp_path / "empty.zip", {"a.txt": b"x"}))
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing")
