"""Experiment tracking: an offline W&B run holds the config, the per-round evaluation curve, per-step
diagnostics and the sample grids (read back from its .wandb file); without W&B the same curve and grids
land in the CSV logger's directory."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml
from conftest import fit_in, write_yaml

from ddo_lightning.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = {
    "num_eval_samples": 40,
    "eval_batch_size": 40,
    "sampler": {"class_path": "ddo_lightning.samplers.HeunSampler", "init_args": {"num_steps": 3}},
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 2-step MLE digits reference (the digits demo's first stage, tiny)."""
    root = tmp_path_factory.mktemp("tracking")
    pre = write_yaml(
        root / "pre.yaml",
        {
            "trainer": {
                "max_steps": 2,
                "val_check_interval": 2,
                "enable_progress_bar": False,
                "logger": False,
                "callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"save_last": True, "every_n_train_steps": 2},
                    }
                ],
            },
            "model": {"init_args": SMALL},
            "data": {"init_args": {"batch_size": 16}},
        },
    )
    fit_in(root, ["--config", str(ROOT / "configs/digits_pretrain.yaml"), "--config", pre])
    return root


def _ddo_override(root, name, pretrained):
    """Two rounds of 4 steps, evaluated every 2 steps; grids of 16 samples; the preset's logger kept."""
    return write_yaml(
        root / name,
        {
            "trainer": {
                "enable_progress_bar": False,
                "log_every_n_steps": 1,
                "callbacks": [
                    {
                        "class_path": "ddo_lightning.training.SelfPlay",
                        "init_args": {
                            "rounds": 2,
                            "kimg_per_round": 0.064,
                            "eval_every_kimg": 0.032,
                            "monitor": "digits_fid",
                        },
                    },
                    {
                        "class_path": "ddo_lightning.training.SampleGrids",
                        "init_args": {"num_samples": 16, "columns": 4},
                    },
                ],
            },
            "model": {
                "init_args": SMALL | {"init_from": str(pretrained / "outputs/digits_pretrain/checkpoints/last.ckpt")}
            },
            "data": {
                "init_args": {
                    "batch_size": 16,
                    "fake": {
                        "class_path": "ddo_lightning.training.PoolFakeSource",
                        "init_args": {"size": 64, "quantize": True},
                    },
                }
            },
        },
    )


def _evaluations(summary):
    return [(r["round"], p["kimg_in_round"], p["digits_fid"]) for r in summary["rounds"] for p in r["curve"]]


def test_wandb_offline_run_holds_config_curve_diagnostics_and_grids(pretrained, tmp_path):
    from wandb_records import read_run

    override = _ddo_override(tmp_path, "ddo.yaml", pretrained)
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CACHE_DIR=str(tmp_path / "cache"),
        WANDB_CONFIG_DIR=str(tmp_path / "wcfg"),
    )
    cmd = [
        sys.executable,
        "-m",
        "ddo_lightning.cli",
        "fit",
        "--config",
        str(ROOT / "configs/digits.yaml"),
        "--config",
        str(ROOT / "configs/trainer/wandb.yaml"),
        "--config",
        override,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = read_run(str(tmp_path / "outputs/digits/wandb"))  # W&B's save_dir: the run directory
    # the full resolved config
    assert run.config["model"]["class_path"] == "ddo_lightning.training.DDOModule"
    assert run.config["model"]["init_args"]["lr"] == 5e-4 and run.config["trainer"]["precision"] == "32-true"
    assert run.config["model"]["init_args"]["objective"]["init_args"]["alpha"] == 1.0
    # every evaluation, with the round in the same row, equal to SelfPlay's own record
    summary = json.loads((tmp_path / "outputs/digits/summary.json").read_text())
    rows = [row for row, _ in run.series("eval/digits_fid")]
    logged = [(int(r["round"]), round(r["eval/kimg_in_round"], 6), r["eval/digits_fid"]) for r in rows]
    assert logged[0][:2] == (1, 0.0)  # the starting reference, evaluated as round 1 begins
    assert logged == [(r, round(k, 6), v) for r, k, v in _evaluations(summary)]
    assert {r for r, _, _ in logged} == {
        1,
        2,
    }  # both rounds (numbered from 1, as in summary.json) are segments of the one curve
    assert all(r["eval/nfe"] == 5 and r["eval/num_samples"] == 40 and r["eval/eval_seconds"] > 0 for r in rows)
    assert all(r["eval/proxy"] == 1.0 for r in rows)  # 40 samples: the digits-FID is labelled a proxy
    assert [r["eval/kimg"] for r in rows] == sorted(r["eval/kimg"] for r in rows)
    # per-step diagnostics
    steps = [row for row, _ in run.series("train/loss")]
    assert len(steps) >= 8 and all("train/disc_acc" in r and "train/delta_real_mean" in r for r in steps)
    # one sample grid per evaluation, stored as media files of the run
    grids = run.series("samples/_type")
    assert len(grids) == len(rows)
    media = list(pathlib.Path(run.path).parent.glob("files/media/images/samples_*.png"))
    assert len(media) == len(rows)


def test_without_wandb_curve_and_grids_land_in_the_csv_logger_directory(pretrained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/digits.yaml"),
            "--config",
            _ddo_override(tmp_path, "ddo.yaml", pretrained),
        ]
    )
    log_dir = tmp_path / "outputs/digits/logs"
    with open(log_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval/digits_fid")]
    summary = json.loads((tmp_path / "outputs/digits/summary.json").read_text())
    evaluations = _evaluations(summary)
    assert len(rows) == len(evaluations) == 5  # the start, then every 2 steps over 2 rounds of 4 steps
    assert [(int(float(r["round"])), float(r["eval/digits_fid"])) for r in rows] == [(r, v) for r, _, v in evaluations]
    grids = sorted((log_dir / "samples").glob("step-*.png"))
    assert len(grids) == len(rows)
    from PIL import Image

    with Image.open(grids[0]) as im:  # 4x4 grid of 8x8 digits with 1-pixel gaps, enlarged 4x
        assert im.size == ((4 * 9 + 1) * 4, (4 * 9 + 1) * 4)
    assert (log_dir / "curve.png").stat().st_size > 5000
    config = yaml.safe_load((log_dir / "hparams.yaml").read_text())  # the full config, logged as hyperparameters
    assert config["model"]["init_args"]["lr"] == 5e-4
