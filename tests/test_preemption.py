"""The Preemption callback's requeue rule, in one process with a stand-in `scontrol` on PATH: SIGUSR1 (SLURM's
time-limit warning) checkpoints, stops and requeues the job; SIGTERM (`scancel`) checkpoints and stops, and
the job is not requeued (a requeue there would bring back a job its owner cancelled)."""

import os
import signal
import stat

import lightning.pytorch as pl
import pytest
import torch

from ddo_lightning.training import Preemption


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def training_step(self, batch, batch_idx):
        return ((self.w - batch[0]) ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(64, 3)), batch_size=4)


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process after step ``step`` (its handler only sets a flag)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize(("signame", "requeued"), [("SIGUSR1", True), ("SIGTERM", False)])
def test_only_the_time_limit_signal_requeues(tmp_path, monkeypatch, caplog, signame, requeued):
    calls = tmp_path / "scontrol.calls"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "resume.ckpt"
    trainer = pl.Trainer(
        max_steps=10,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[SignalAt(3, getattr(signal, signame)), Preemption(path=str(path))],
    )
    with caplog.at_level("INFO"):
        trainer.fit(Tiny())
    assert trainer.global_step == 3  # stopped at the step boundary after the signal
    assert torch.load(path, map_location="cpu", weights_only=True)["global_step"] == 3
    if requeued:
        assert calls.read_text().split() == ["requeue", "4242"]
    else:
        assert not calls.exists(), calls.read_text()
        assert "SLURM job 4242 stopped without a requeue" in caplog.text
