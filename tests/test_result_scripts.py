"""The scripts behind docs/demos.md's figures and tables: scripts/sensitivity.py (α/β sensitivity of one
round), scripts/seeds_table.py (mean ± std over training seeds, the claims rule) and
scripts/digits_memorisation.py (nearest-neighbour distances to the training digits). Hand-computed cases,
and the sensitivity script end to end on the toy preset at a tiny size."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import pytest
import torch
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sensitivity, seeds_table, memorisation = (_script(n) for n in ("sensitivity", "seeds_table", "digits_memorisation"))


def test_sensitivity_points_sweep_one_factor_at_a_time():
    pts = sensitivity.points([0.5, 1, 4], [0.1, 1], alpha0=1, beta0=1)
    a, b = "model.objective.alpha", "model.objective.beta"
    assert [(p[a], p[b]) for p in pts] == [(0.5, 1), (1, 1), (4, 1), (1, 0.1)]  # (1, 1) once
    assert [(p[a], p[b]) for p in sensitivity.points([2], [0.1, 1], 1, 1)] == [(2, 1), (1, 0.1), (1, 1)]


def test_seeds_table_combines_runs_and_applies_the_claims_rule():
    def run(ref, r1, control):
        return {
            "report": {
                "seed_sets": 3,
                "models": [
                    {"model": "reference", "metrics": {"mmd": {"mean": ref, "std": 0.1}}},
                    {"model": "round 1", "metrics": {"mmd": {"mean": r1, "std": 0.1}}},
                    {"model": "control", "metrics": {"mmd": {"mean": control, "std": 0.1}}},
                ],
            }
        }

    models, table = seeds_table.combine([run(1.0, 0.2, 0.8), run(1.2, 0.4, 0.6)])
    assert models == ["reference", "round 1", "control"]
    assert table["reference"]["mmd"] == pytest.approx((1.1, math.sqrt(0.02)))  # std over runs, ddof 1
    ok, margin, thr = seeds_table.claim(table["round 1"]["mmd"], table["control"]["mmd"], "min")
    assert margin == pytest.approx(0.4) and thr == pytest.approx(2 * math.sqrt(0.02 + 0.02)) and not ok
    assert seeds_table.claim((0.9, 0.01), (0.5, 0.01), "max")[0]
    _, single = seeds_table.combine([run(1.0, 0.2, 0.8)])  # one run: its report seed sets' std
    assert single["round 1"]["mmd"] == (0.2, 0.1)


def test_nearest_neighbour_statistics_by_hand():
    train = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    s = memorisation.nn_stats(torch.tensor([[0.0, 1.0]]), train)
    assert s["d1"].item() == pytest.approx(1.0) and s["ratio"].item() == pytest.approx(1.0 / 3.0)
    loo = memorisation.nn_stats(train, train, leave_one_out=True)  # each point skips itself
    assert loo["d1"].tolist() == pytest.approx([3.0, 3.0, 4.0])
    assert loo["ratio"].tolist() == pytest.approx([3 / 4, 3 / 5, 4 / 5])
    summary = memorisation.summarise({"d1": torch.tensor([0.1, 1.0, 2.0]), "ratio": torch.tensor([0.2, 0.5, 0.9])}, 0.5)
    assert summary == pytest.approx({"d1_median": 1.0, "copies": 1 / 3, "below_p5": 1 / 3})


def test_sensitivity_end_to_end_on_the_toy_preset(tmp_path, monkeypatch):
    """configs/toy2d.yaml from a 20-step reference, 2 points of 2 steps each, 2 seeds: every point is a
    candidate of one round, and the table holds what each run's summary.json says."""
    from ddo_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    pre = tmp_path / "pre.yaml"
    small_data = {
        "batch_size": 64,
        "real": {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 512}},
    }
    pre.write_text(
        yaml.safe_dump(
            {
                "trainer": {"max_steps": 20, "val_check_interval": 20, "enable_progress_bar": False},
                "model": {"init_args": {"num_eval_samples": 100, "eval_batch_size": 100}},
                "data": {"init_args": small_data},
            }
        )
    )
    main(["fit", "--config", str(ROOT / "configs/toy2d_pretrain.yaml"), "--config", str(pre), "--run_dir", "pre"])
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "init_args": {
                        "num_eval_samples": 100,
                        "eval_batch_size": 100,
                        "init_from": "pre/checkpoints/last.ckpt",
                    }
                },
                "data": {
                    "init_args": {
                        **small_data,
                        "fake": {"class_path": "ddo_lightning.training.PoolFakeSource", "init_args": {"size": 256}},
                    }
                },
            }
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    args = ["--config", str(ROOT / "configs/toy2d.yaml"), "--out", "sens", "--alphas", "0.5", "2", "--betas", "1"]
    args += ["--kimg", "0.128", "--seeds", "0", "1", "--run_root", "runs", "--", "--config", str(tiny)]
    args += ["--trainer.enable_progress_bar", "false"]
    assert sensitivity.main(args) == 0
    record = json.loads((tmp_path / "sens.json").read_text())
    assert (tmp_path / "sens.png").stat().st_size > 5_000
    # the centre (alpha0, beta0) = (1, 1) is a point of both sweeps, run once
    assert record["monitor"] == "mmd" and [(p["sweep"], p["alpha"], p["beta"]) for p in record["points"]] == [
        ("alpha", 0.5, 1.0),
        ("alpha", 1.0, 1.0),
        ("alpha", 2.0, 1.0),
        ("beta", 1.0, 1.0),
    ]
    for seed in (0, 1):
        summary = json.loads((tmp_path / f"runs/toy2d-seed{seed}/summary.json").read_text())
        assert len(summary["rounds"]) == 1 and not summary.get("control")  # the script turns the control off
        cands = {c["label"]: c for c in summary["rounds"][0]["candidates"]}
        assert list(cands) == ["alpha=0.5,beta=1", "alpha=2,beta=1", "alpha=1,beta=1"]
        for point in record["points"]:
            cand = cands[f"alpha={point['alpha']:g},beta={point['beta']:g}"]
            trained = [e["mmd"] for e in cand["curve"] if e["kimg_in_round"] > 0]
            assert point["per_seed"][str(seed)] == {"best": min(trained), "last": trained[-1]}
    best = [record["points"][0]["per_seed"][s]["best"] for s in ("0", "1")]
    assert record["points"][0]["best"]["mean"] == pytest.approx(sum(best) / 2)
