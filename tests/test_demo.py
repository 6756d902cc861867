"""The main job end to end, exactly as `make demo` runs it: MLE pretraining then 3 DDO rounds.

Asserts the claims the README makes: DDO beats its MLE reference on precision and on the two-sample
distance (MMD) without losing recall, and the outputs exist."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_beats_mle_reference(tmp_path):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    ddo = [os.path.join(os.path.dirname(sys.executable), "ddo")]  # the installed console script, as make runs it
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for config in ("configs/toy2d_pretrain.yaml", "configs/toy2d.yaml"):
        proc = subprocess.run([*ddo, "fit", "--config", config, "--trainer.enable_progress_bar", "false"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs/demo/summary.json").read_text())
    assert (tmp_path / "outputs/demo/samples.png").stat().st_size > 10_000
    mle, final = summary["reference"], summary["rounds"][-1]["metrics"]
    assert len(summary["rounds"]) == 3 and summary["monitor"] == "mmd"
    assert final["precision"] >= mle["precision"] + 0.02, (mle, final)
    assert final["mmd"] <= 0.75 * mle["mmd"], (mle, final)
    assert final["recall"] >= mle["recall"] - 0.005, (mle, final)
    assert final["mean_log_density"] > mle["mean_log_density"], (mle, final)
