import os
import warnings

import lightning.pytorch as pl
import pytest
import torch

from ddo_lightning.data import Toy2DDataset
from ddo_lightning.networks import EDMPrecond, ToyMLP
from ddo_lightning.samplers import HeunSampler
from ddo_lightning.training import DDODataModule, MLEModule

torch.set_num_threads(2)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def tiny_net(hidden: int = 32, dropout: float = 0.0, label_dim: int = 0) -> EDMPrecond:
    return EDMPrecond(ToyMLP(data_dim=2, hidden=hidden, depth=2, label_dim=label_dim, dropout=dropout), sigma_data=0.5)


def make_trainer(tmp_path, **kw) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        max_epochs=-1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    defaults.update(kw)
    return pl.Trainer(**defaults)


@pytest.fixture(scope="module")
def one_thread():
    """Many small ops or big cdists: on a loaded 2-core machine intra-op threading only costs time."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def toy_real() -> Toy2DDataset:
    return Toy2DDataset("ring8", num_samples=4096, seed=0)


@pytest.fixture(scope="session")
def mle_ckpt(tmp_path_factory, toy_real) -> str:
    """A quickly pretrained (200-step) MLE reference checkpoint of tiny_net()."""
    tmp = tmp_path_factory.mktemp("mle")
    pl.seed_everything(0)
    module = MLEModule(tiny_net(), lr=2e-3, ema_halflife_kimg=20, sampler=HeunSampler(num_steps=8))
    trainer = make_trainer(tmp, max_steps=200)
    trainer.fit(module, DDODataModule(toy_real, batch_size=256))
    path = os.path.join(tmp, "mle.ckpt")
    trainer.save_checkpoint(path)
    return path


class RandomFeatures(torch.nn.Module):
    """A fixed random feature extractor for FID plumbing tests (uint8 images -> 16-d features)."""

    feature_dim = 16

    def __init__(self, channels: int = 3):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(channels, self.feature_dim, generator=gen), requires_grad=False)

    def forward(self, images_uint8):
        x = images_uint8.float() / 127.5 - 1
        return torch.tanh(x.mean(dim=(2, 3)) @ self.proj + x.std(dim=(2, 3)) @ self.proj)


def write_fake_cifar(root, per_batch: int = 16, seed: int = 0) -> str:
    """Official-format CIFAR-10 python batches with random images (tests only)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def write_yaml(path, data) -> str:
    """Write ``data`` as YAML to ``path``; return the path as a string (for ``--config``)."""
    import yaml

    path.write_text(yaml.safe_dump(data))
    return str(path)


def fit_in(directory, args: list[str]) -> None:
    """``ddo fit`` in-process with ``directory`` as the working directory (LightningCLI writes
    config.yaml into the working directory when there is no logger)."""
    from ddo_lightning.cli import main

    cwd = os.getcwd()
    os.chdir(directory)
    try:
        main(["fit", *args])
    finally:
        os.chdir(cwd)
