"""Real data for VAR DDO: images encoded once by VAR's VQ-VAE into token sequences.

File format (``.npz``, or ``.pt`` read with ``torch.load(weights_only=True)``):
    tokens       [N, L] int16 (int32 when V > 32767): the concatenated per-scale index maps, coarse to fine;
    labels       [N] int64 class indices (all 0 and ``num_classes = 0`` for unconditional data);
    num_classes  scalar: K, the width of the one-hot labels;
    vocab_size   scalar: V (optional; checked against the tokens when present).

``VARTokenDataset`` yields ``Samples(tokens int64 [L], one-hot float [K])`` like ``MarkovTokenDataset``;
``encode_dataset`` writes such a file from any image dataset of this package (``Samples(x in [−1, 1],
one-hot labels)``), e.g. ``ImageFolderDataset`` of ImageNet at 256 px.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..files import atomic_path, read_tensor_file
from ..protocols import Labelled, Samples


def _read(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".pt":
        obj = read_tensor_file(path, what="token file")
        if not isinstance(obj, dict):
            raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
        return {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in obj.items()}
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


class VARTokenDataset(Dataset):
    """Args:
    path: the ``.npz``/``.pt`` file (module docstring).
    num_classes: K when the file does not store it (a stored value must agree).
    """

    def __init__(self, path: str | os.PathLike, num_classes: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"token dataset not found: {self.path}")
        data = _read(self.path)
        for key in ("tokens", "labels"):
            if key not in data:
                raise ValueError(f"{self.path} has no '{key}' array (found {sorted(data)})")
        tokens, labels = data["tokens"], data["labels"]
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"{self.path}: tokens must be an integer array [N, L], got {tokens.dtype} {tokens.shape}")
        if labels.shape != (len(tokens),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{self.path}: labels must be integers [N={len(tokens)}], got {labels.dtype} {labels.shape}"
            )
        stored = int(data["num_classes"]) if "num_classes" in data else None
        if stored is not None and num_classes is not None and stored != num_classes:
            raise ValueError(f"{self.path} stores num_classes={stored}, but num_classes={num_classes} was given")
        k = stored if stored is not None else num_classes
        if k is None:
            raise ValueError(f"{self.path} does not store num_classes: pass it")
        if len(labels) and k and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"{self.path}: labels outside [0, {k})")
        if len(tokens) and tokens.min() < 0:
            raise ValueError(f"{self.path}: negative token ids")
        if "vocab_size" in data and len(tokens) and tokens.max() >= int(data["vocab_size"]):
            raise ValueError(f"{self.path}: token ids beyond vocab_size={int(data['vocab_size'])}")
        self.num_classes = k
        self.vocab_size = int(data["vocab_size"]) if "vocab_size" in data else None
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.classes = torch.from_numpy(labels.astype(np.int64))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (int(self.tokens.shape[1]),)

    @property
    def label_dim(self) -> int:
        return self.num_classes

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> Samples:
        if self.num_classes:
            label = torch.nn.functional.one_hot(self.classes[i], self.num_classes).float()
        else:
            label = torch.zeros(0)
        return Samples(self.tokens[i], label)

    def __repr__(self) -> str:
        return f"VARTokenDataset(path={str(self.path)!r}, sequences={len(self)}, length={self.sample_shape[0]}, classes={self.num_classes})"


@torch.no_grad()
def encode_dataset(
    images_dataset: Dataset,
    adapter: Any,
    out_path: str | os.PathLike,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Encode every image of ``images_dataset`` (``Samples(x [3, H, W] in [−1, 1], one-hot labels [K])``)
    with ``adapter.encode`` (a ``VARTokenModel``) and write a token file (``.npz``, or ``.pt`` by suffix)
    atomically: to a temporary file in the same folder, then renamed. Returns the path."""
    out_path = Path(out_path)
    if out_path.suffix not in (".npz", ".pt"):
        raise ValueError(f"out_path must end in .npz or .pt, got {out_path}")
    from tqdm.auto import tqdm

    k = int(images_dataset.label_dim) if isinstance(images_dataset, Labelled) else 0
    vocab = int(adapter.vocab_size)
    dtype = np.int16 if vocab <= np.iinfo(np.int16).max + 1 else np.int32
    loader = DataLoader(images_dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    tokens, labels = [], []
    for x, lab in tqdm(loader, desc=f"encoding {out_path.name}", unit="batch", disable=not progress):
        if device is not None:
            x = x.to(device)
        tokens.append(adapter.encode(x).cpu().numpy().astype(dtype))
        labels.append(lab.argmax(1).numpy().astype(np.int64) if k else np.zeros(len(x), np.int64))
    L = int(adapter.length)
    data = {
        "tokens": np.concatenate(tokens) if tokens else np.zeros((0, L), dtype),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
        "num_classes": np.int64(k),
        "vocab_size": np.int64(vocab),
    }
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        if out_path.suffix == ".npz":
            np.savez(f, **data)
        else:
            torch.save({key: torch.from_numpy(np.asarray(v)) for key, v in data.items()}, f)
    return out_path
