"""DDODataModule: real batches paired 1:1 with fake batches of the same size.

The real dataset is an ordinary map-style dataset yielding ``Samples``; the fake source is attached
after the batch reaches the device (``on_after_batch_transfer``), so online generation runs on the
device and a pool sits in host memory. Without a fake source (MLE pretraining) it yields real batches.

The data module is the one owner of the fakes: the first batch of a round (and of a fit) points the fake
source at the training module's reference of that round (``round_index``, ``sample_reference``), which
regenerates a pool. Nobody else refreshes fakes, so no hook order matters: SelfPlay promotes a new
reference between two steps and the next batch's fakes come from it.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..protocols import HasGroundTruth, PairedBatch, RealDataset, SampleFn, Samples
from .fake_sources import FakeSource


class DDODataModule(pl.LightningDataModule):
    """Real data plus (for DDO) a fake source.

    Args:
        real: the real dataset (yields ``Samples``; exposes ``sample_shape`` and ``label_dim``).
        batch_size: real samples per device per step; each step also takes as many fake samples.
        fake: where fake samples come from (``PoolFakeSource`` or ``OnlineFakeSource``); None for MLE.
        num_workers: DataLoader worker processes for the real data.
        shuffle_seed: seed of the real data's order.
    """

    def __init__(
        self,
        real: Dataset,
        batch_size: int = 512,
        fake: FakeSource | None = None,
        num_workers: int = 0,
        shuffle_seed: int = 0,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(real, RealDataset):
            raise TypeError(
                f"the real dataset {type(real).__name__} must expose `sample_shape` and `label_dim` "
                "(and be a map-style dataset of Samples: ddo_lightning.protocols.RealDataset)"
            )
        if len(real) < batch_size:
            raise ValueError(f"the real dataset has {len(real)} samples, fewer than one batch of {batch_size}")
        self.real, self.batch_size, self.fake = real, batch_size, fake
        self.num_workers, self.shuffle_seed = num_workers, shuffle_seed
        self._real_position = (0, 0)  # (epoch, real batches this rank consumed in it)
        self._resume: tuple[int, int] | None = None
        self._sampler: ResumableDistributedSampler | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.real.sample_shape)

    @property
    def label_dim(self) -> int:
        return int(self.real.label_dim)

    @property
    def ground_truth(self) -> Any:
        """The real data's known distribution, where it has one (the toy mixture)."""
        return self.real.ground_truth if isinstance(self.real, HasGroundTruth) else None

    def setup(self, stage: str) -> None:
        if self.fake is not None:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            self.fake.setup(self.sample_shape, self.label_dim, rank, world)

    def fakes_for(self, real: Samples) -> Samples:
        """As many fakes as ``real`` holds, on its device, from the training module's reference of its current
        round: a new round (or a fresh fit, or a resumed one) first points the fake source at that reference
        (a pool is generated then; a resumed round keeps its stream position)."""
        module = self.trainer.lightning_module
        sample_fn: SampleFn | None = getattr(module, "sample_reference", None)
        if sample_fn is None:
            raise TypeError(
                f"a fake source needs a DDO module (its reference makes the fakes); "
                f"{type(module).__name__} has no `sample_reference`"
            )
        if not self.fake.ready or self.fake.round != module.round_index:
            self.fake.refresh(sample_fn, module.round_index)
        fake = self.fake.next(len(real), real.x.device)
        if len(fake) != len(real):
            raise ValueError(
                f"the fake source {type(self.fake).__name__} returned {len(fake)} samples for a real batch of "
                f"{len(real)}: DDO pairs real and fake 1:1"
            )
        return fake

    def restart_fakes(self) -> None:
        """The next batch takes the round's fakes from the start of the round's stream again, from the
        same pool (nothing is regenerated): SelfPlay's candidates of one round train on the same fakes."""
        if self.fake is not None:
            self.fake.position = 0

    @property
    def global_batch_size(self) -> int:
        """Real samples per optimizer step over all ranks (every batch is full: ``drop_last``)."""
        trainer = self.trainer
        return self.batch_size * (trainer.world_size * trainer.accumulate_grad_batches if trainer else 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self._sampler = ResumableDistributedSampler(self.real, world, rank, self.shuffle_seed)
        if self._resume is not None:  # a run resumed mid-epoch: skip what this rank already trained on
            epoch, batches = self._resume
            self._sampler.set_epoch(epoch)
            self._sampler.skip = batches * self.batch_size
            self._real_position = (epoch, batches)
            self._resume = None
        return DataLoader(
            self.real,
            batch_size=self.batch_size,
            sampler=self._sampler,
            drop_last=True,  # every step pairs exactly batch_size real with batch_size fake samples
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        """One item, which triggers one evaluation (the model samples with fixed seeds itself).

        While DDO is fitting (there is a fake source), evaluation is SelfPlay's, at kimg intervals, so
        the validation loop gets nothing; ``ddo validate``/``ddo test`` evaluate a checkpoint."""
        if self.fake is not None and self.trainer is not None and self.trainer.state.fn == "fit":
            return []
        return self.test_dataloader()

    def test_dataloader(self) -> DataLoader:
        return DataLoader(range(1), batch_size=1)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is None or not self.trainer.training:
            return batch
        epoch, batches = self._real_position
        epoch_now = self.trainer.current_epoch
        self._real_position = (epoch_now, batches + 1 if epoch_now == epoch else 1)
        if self.fake is None:
            return batch
        real = Samples(*batch)
        return PairedBatch(real, self.fakes_for(real))

    def state_dict(self) -> dict[str, Any]:
        """The fake stream's position and the real stream's (epoch, batches this rank consumed in it)."""
        state: dict[str, Any] = {"real": {"epoch": self._real_position[0], "batches": self._real_position[1]}}
        if self.fake is not None:
            state["fake"] = self.fake.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.fake is not None and "fake" in state_dict:
            self.fake.load_state_dict(state_dict["fake"])
        if "real" in state_dict:
            self._resume = (int(state_dict["real"]["epoch"]), int(state_dict["real"]["batches"]))


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (rank r takes positions r, r + world, … of a per-epoch permutation
    seeded by seed + epoch; the tail is dropped so ranks get equal shares), used for every world size —
    one process is world = 1 — so one process with batch B·world sees the same samples per step as
    ``world`` processes with batch B. ``skip`` drops the first samples of the next pass (a run resumed
    mid-epoch continues where it stopped instead of repeating the epoch's first batches). Being a
    DistributedSampler, Lightning leaves it in place and calls ``set_epoch``."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return iter(list(super().__iter__())[skip:])
