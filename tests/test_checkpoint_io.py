"""Atomic checkpoint writes, truncated checkpoints detected and the previous good one used, and the
DDP preset's settings."""

import os
import time

import pytest
import torch

from ddo_lightning.training.run_io import (
    AtomicCheckpointIO,
    CorruptCheckpoint,
    check_checkpoint,
    usable_checkpoint,
)


def test_atomic_save_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    good = path.read_bytes()

    def crash(obj, f, *a, **k):  # the process dies in the middle of writing the new checkpoint
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == good  # the previous checkpoint is intact
    assert torch.load(path, weights_only=True)["global_step"] == 1


def _disk_full_after(nbytes):
    """A write that puts ``nbytes`` into the file, then fails as a full disk does."""
    import errno

    def write(f):
        f.write(b"x" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def _torch_save_fails(monkeypatch):
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: _disk_full_after(100)(f))


def _json_fails(monkeypatch):
    import ddo_lightning.files as atomic

    real_open = open

    class Full:
        def __init__(self, path, mode):
            self.f = real_open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            _disk_full_after(len(data) // 2)(self.f)

        def flush(self):
            pass

        def fileno(self):
            return self.f.fileno()

    monkeypatch.setattr(atomic, "open", Full, raising=False)


def _savefig_fails(monkeypatch):
    from matplotlib.figure import Figure

    def savefig(self, fname, *a, **k):
        with open(fname, "wb") as f:
            _disk_full_after(100)(f)

    monkeypatch.setattr(Figure, "savefig", savefig)


@pytest.mark.parametrize("writer", ["checkpoint", "best.pt", "summary.json", "curve.png"])
def test_a_failed_write_leaves_no_temporary_file_and_names_the_path(writer, tmp_path, monkeypatch):
    """A full disk in the middle of a write: the previous file is intact, no temporary file is left, and the
    error (an OSError with errno ENOSPC) names the destination."""
    import errno

    from ddo_lightning.files import WriteError, atomic_torch_save
    from ddo_lightning.training import SelfPlay, report

    name = {"checkpoint": "last.ckpt", "curve.png": "curve.png"}.get(writer, writer)
    dest = tmp_path / name
    dest.write_bytes(b"the previous version")
    cb = SelfPlay(rounds=1, monitor="mmd", dirpath=str(tmp_path))
    cb.summary_path = str(tmp_path / "summary.json")
    cb.evaluations = [{"round": 0, "kimg_in_round": 0.0, "kimg": 0.0, "metrics": {"mmd": 1.0}}]

    class Trainer:  # curve.png goes to the file loggers' directories, else to dirpath
        loggers = []

    write, fail = {
        "checkpoint": (lambda: AtomicCheckpointIO().save_checkpoint({"global_step": 2}, dest), _torch_save_fails),
        "best.pt": (lambda: atomic_torch_save({"w": torch.ones(2)}, dest), _torch_save_fails),
        "summary.json": (lambda: report.write_summary(cb.summary_path, cb.summary()), _json_fails),
        "curve.png": (
            lambda: report.write_curve(
                report.logger_dirs(Trainer()) or [cb.dirpath], cb.evaluations, cb.promotions, cb.monitor
            ),
            _savefig_fails,
        ),
    }[writer]
    fail(monkeypatch)
    with pytest.raises(WriteError) as err:
        write()
    monkeypatch.undo()
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert str(dest) in str(err.value) and err.value.filename == str(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file
    assert dest.read_bytes() == b"the previous version"


def test_truncated_checkpoint_is_named_and_the_previous_good_one_is_used(tmp_path, recwarn):
    io = AtomicCheckpointIO()
    older, newer = tmp_path / "step=2.ckpt", tmp_path / "step=4.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, older)
    time.sleep(0.02)
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 4}, newer)
    data = newer.read_bytes()
    newer.write_bytes(data[: len(data) // 2])  # truncated (e.g. a copy interrupted, a full disk)
    with pytest.raises(CorruptCheckpoint, match="step=4.ckpt"):
        check_checkpoint(str(newer))
    with pytest.raises(CorruptCheckpoint, match="step=4.ckpt.*truncated or corrupt"):
        io.load_checkpoint(newer)
    assert usable_checkpoint(str(newer)) == str(older)
    assert any("step=4.ckpt" in str(w.message) and "step=2.ckpt" in str(w.message) for w in recwarn.list)
    older.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpoint, match="no other readable checkpoint"):
        usable_checkpoint(str(newer))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        usable_checkpoint(str(tmp_path / "missing.ckpt"))


def test_cli_resume_from_a_truncated_checkpoint_uses_the_previous_good_one(tmp_path, monkeypatch):
    """`ddo fit --ckpt_path <truncated>` warns, resumes from the newest readable checkpoint and finishes."""
    import pathlib

    import yaml

    from ddo_lightning.cli import main

    root = pathlib.Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["ddo"])
    cfg = tmp_path / "pre.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "max_steps": 4,
                    "val_check_interval": 4,
                    "enable_progress_bar": False,
                    "logger": False,
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {
                                "dirpath": "ck",
                                "filename": "{step}",
                                "save_top_k": -1,
                                "every_n_train_steps": 2,
                            },
                        }
                    ],
                },
                "model": {"init_args": {"num_eval_samples": 50}},
                "data": {
                    "init_args": {
                        "batch_size": 32,
                        "real": {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 512}},
                    }
                },
            }
        )
    )
    main(
        ["fit", "--config", str(root / "configs/toy2d_pretrain.yaml"), "--config", str(cfg), "--trainer.max_steps", "4"]
    )
    good, last = tmp_path / "ck/step=2.ckpt", tmp_path / "ck/step=4.ckpt"
    assert good.is_file() and last.is_file()
    os.utime(good, (time.time() - 10, time.time() - 10))
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="Resuming from the newest good checkpoint"):
        main(
            [
                "fit",
                "--config",
                str(root / "configs/toy2d_pretrain.yaml"),
                "--config",
                str(cfg),
                "--trainer.max_steps",
                "6",
                "--ckpt_path",
                str(last),
            ]
        )
    assert torch.load(tmp_path / "ck/step=6.ckpt", weights_only=True)["global_step"] == 6


def test_ddp_preset_settings():
    import pathlib

    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    preset = pathlib.Path(__file__).resolve().parents[1] / "configs/strategy/ddp.yaml"
    import yaml

    spec = yaml.safe_load(preset.read_text())["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": spec})).strategy
    assert (
        strategy._ddp_kwargs["broadcast_buffers"] is False and strategy._ddp_kwargs["find_unused_parameters"] is False
    )
