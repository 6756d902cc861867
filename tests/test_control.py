"""SelfPlay's MLE control and report seed sets (docs/search.md, "The MLE control", "Report seeds")."""

from __future__ import annotations

import json
import statistics

import lightning.pytorch as pl
import pytest
import torch
from conftest import make_trainer
from test_search import assert_same_summary, data
from test_search import module as search_module
from test_search import self_play as search_self_play

from ddo_lightning.objectives import DenoisingScoreMatching, DiffusionDDO, TokenDDO, TokenMLE, mle_counterpart
from ddo_lightning.protocols import PairedBatch, Samples
from ddo_lightning.samplers import mix_seed
from ddo_lightning.training.base import evaluation_seed
from ddo_lightning.training.report import claims, report_summary

pytestmark = pytest.mark.usefixtures("one_thread")
MONITOR = "energy_distance"
# two candidates, one of them changes lr: the control must train with the module's own lr (1e-3)
TWO = [{"lr": 4e-3}, {"objective.alpha": 4.0}]
STEPS_PER_CANDIDATE = 4  # 512 images per candidate at 128 per step


def module(mle_ckpt, **kw):
    objective = DiffusionDDO(alpha=1.0, beta=1.0, P_mean=-1.0, P_std=1.4)
    return search_module(mle_ckpt, objective=objective, sampler_steps=4, num_eval_samples=200, **kw)


def self_play(tmp_path, rounds=2, candidates=TWO, **kw):
    return search_self_play(tmp_path, candidates, rounds, **({"control": True, "report_seed_sets": 3} | kw))


class ControlProbe(pl.Callback):
    """At the control's first step: the weights it starts from, Adam's state, lr, the objective, the batch,
    and the loss an independent DenoisingScoreMatching gives on that batch with the step's noise."""

    def __init__(self, sp):
        self.sp, self.first, self.control_steps, self.ddo_steps = sp, None, 0, 0
        self.start_reference = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start_reference is None:
            self.start_reference = {k: v.clone() for k, v in pl_module.reference.state_dict().items()}
        if self.sp.phase != "control":
            self.ddo_steps += 1
            assert isinstance(batch, PairedBatch)
            return
        self.control_steps += 1
        if self.first is not None:
            return
        net = pl_module.target
        gen = torch.Generator().manual_seed(mix_seed(pl_module.seed, trainer.global_step))  # the run's stream
        with torch.no_grad():
            dsm = DenoisingScoreMatching(P_mean=-1.0, P_std=1.4)(net, Samples(*batch), generator=gen).loss
        self.first = {
            "batch": batch,
            "target": {k: v.clone() for k, v in net.state_dict().items()},
            "ema": {k: v.clone() for k, v in pl_module.ema.model.state_dict().items()},
            "adam_state": len(trainer.optimizers[0].state),
            "ema_images": int(pl_module.ema.images),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "objective": pl_module.control_objective,
            "dsm": float(dsm),
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.first is not None and "loss" not in self.first:
            self.first["loss"] = float(outputs["loss"])


def fit(tmp_path, real, mle_ckpt, ckpt_path=None, max_steps=1000, extra=(), **kw):
    sp = self_play(tmp_path, **kw)
    probe = ControlProbe(sp)
    trainer = make_trainer(
        tmp_path, max_steps=max_steps, callbacks=[sp, probe, *extra], enable_checkpointing=bool(extra)
    )
    mod = module(mle_ckpt)
    trainer.fit(mod, data(real), ckpt_path=ckpt_path)
    return sp, mod, trainer, probe


def test_control_is_mle_from_the_starting_reference_for_every_image_the_rounds_used(tmp_path, toy_real, mle_ckpt):
    sp, mod, trainer, probe = fit(tmp_path, toy_real, mle_ckpt)
    ddo_images = 2 * len(TWO) * STEPS_PER_CANDIDATE * 128  # rounds x candidates x steps x batch
    assert sp.control_images == ddo_images == 2048
    assert probe.ddo_steps == probe.control_steps == 2 * len(TWO) * STEPS_PER_CANDIDATE
    assert trainer.global_step == 2 * 2 * len(TWO) * STEPS_PER_CANDIDATE
    first = probe.first
    for k, v in probe.start_reference.items():  # the run's starting reference, not the last promoted one
        assert torch.equal(first["target"][k], v), k
        assert torch.equal(first["ema"][k], v), k
    assert first["adam_state"] == 0 and first["ema_images"] == 0 and first["lr"] == 1e-3
    assert not isinstance(first["batch"], PairedBatch)  # real images only: no fakes made
    obj = first["objective"]
    assert type(obj) is DenoisingScoreMatching and (obj.P_mean, obj.P_std) == (-1.0, 1.4)
    assert first["loss"] == pytest.approx(first["dsm"], rel=1e-6)
    assert mod.control_objective is None and not trainer.datamodule.real_only  # DDO again after the run

    s = json.loads((tmp_path / "sp" / "summary.json").read_text())
    c = s["control"]
    assert c["kimg"] == 2.048 and c["finished"]
    assert [p["kimg_in_control"] for p in c["curve"]] == [0.0, 0.256, 0.512, 0.768, 1.024, 1.28, 1.536, 1.792, 2.048]
    assert c["curve"][0][MONITOR] == s["reference"][MONITOR]  # its 0-kimg point is the starting reference
    scores = [p[MONITOR] for p in c["curve"]]
    assert c["selected_kimg"] == c["curve"][scores.index(min(scores))]["kimg_in_control"]
    assert c["metrics"][MONITOR] == min(scores)
    assert (tmp_path / "sp" / "rounds" / "control.ckpt").is_file()
    assert (tmp_path / "sp" / "reference-start.pt").is_file()
    # report: every reported model on 3 seed sets; mean and std (ddof 1) of the listed values
    rep = s["report"]
    assert rep["seed_sets"] == 3
    assert [m["model"] for m in rep["models"]] == ["reference", "round 1", "round 2", "control"]
    for m in rep["models"]:
        vals = m["metrics"][MONITOR]["values"]
        assert len(vals) == 3 and len(set(vals)) == 3  # different seeds, different numbers
        assert m["metrics"][MONITOR]["mean"] == pytest.approx(statistics.fmean(vals), rel=1e-12)
        assert m["metrics"][MONITOR]["std"] == pytest.approx(statistics.stdev(vals), rel=1e-9)
    assert [c["model"] for c in s["claims"]] == ["round 1", "round 2"]
    assert {"better_than_reference", "better_than_control"} <= set(s["claims"][0])
    prov = s["provenance"]
    assert prov["selection"]["seeds"]["rule"] == "mix_seed(seed, i, 3)"
    assert [p["seeds"]["set"] for p in prov["report"]] == ["report-0", "report-1", "report-2"]
    assert prov["selection"]["num_samples"] == 200 and prov["selection"]["class_balanced"] is None
    assert "MLE control (2.048 kimg)" in sp.table() and "report: mean ± std over 3 seed sets" in sp.table()


def test_control_stopped_and_resumed_equals_the_uninterrupted_run(tmp_path, toy_real, mle_ckpt):
    kw = {"rounds": 1, "candidates": None}  # 4 DDO steps, then 4 control steps
    full, full_mod, _, _ = fit(tmp_path / "full", toy_real, mle_ckpt, **kw)
    part = tmp_path / "part"
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=part / "ckpt", filename="{step}", every_n_train_steps=6, save_top_k=-1)
    sp, _, _, _ = fit(part, toy_real, mle_ckpt, max_steps=6, extra=[ckpt], **kw)
    assert sp.phase == "control" and sp.images_in_control == 256
    sp2, mod2, trainer, probe = fit(part, toy_real, mle_ckpt, ckpt_path=str(part / "ckpt" / "step=6.ckpt"), **kw)
    assert trainer.global_step == 8 and probe.control_steps == 2 and probe.ddo_steps == 0
    assert_same_summary(sp2.summary(), full.summary())
    for k, v in full_mod.ema.model.state_dict().items():  # the control's selected weights
        torch.testing.assert_close(mod2.ema.model.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    # the finished run resumed: nothing trained, nothing rewritten
    summary = (part / "sp" / "summary.json").read_text()
    _, _, trainer3, probe3 = fit(part, toy_real, mle_ckpt, ckpt_path=str(part / "sp" / "rounds" / "control.ckpt"), **kw)
    assert trainer3.global_step == 8 and probe3.control_steps == 0
    assert (part / "sp" / "summary.json").read_text() == summary


def test_round_checkpoint_of_the_last_round_starts_the_control_on_resume(tmp_path, toy_real, mle_ckpt):
    """Killed right after the last round's checkpoint: resuming from round-1.ckpt runs the whole control."""
    kw = {"rounds": 1, "candidates": None, "report_seed_sets": 0}
    full, _, _, _ = fit(tmp_path / "full", toy_real, mle_ckpt, **kw)
    part = tmp_path / "part"
    fit(part, toy_real, mle_ckpt, max_steps=4, **kw)
    sp2, _, trainer, probe = fit(part, toy_real, mle_ckpt, ckpt_path=str(part / "sp" / "rounds" / "round-1.ckpt"), **kw)
    assert probe.control_steps == 4 and trainer.global_step == 8
    assert_same_summary(sp2.summary(), full.summary())
    assert "report" not in sp2.summary() and "claims" not in sp2.summary()


def test_control_needs_the_runs_starting_weights(tmp_path, toy_real, mle_ckpt):
    kw = {"rounds": 1, "candidates": None, "report_seed_sets": 0}
    fit(tmp_path, toy_real, mle_ckpt, max_steps=4, control=False, **kw)
    with pytest.raises(FileNotFoundError, match="reference-start.pt"):
        fit(tmp_path, toy_real, mle_ckpt, ckpt_path=str(tmp_path / "sp" / "rounds" / "round-1.ckpt"), **kw)


@pytest.mark.parametrize("k", [1, 2, -1, True, 2.5])
def test_report_seed_sets_is_zero_or_at_least_three(tmp_path, k):
    with pytest.raises(ValueError, match="report_seed_sets"):
        self_play(tmp_path, report_seed_sets=k)


def test_mle_counterparts():
    dsm = mle_counterpart(DiffusionDDO(P_mean=-0.8, P_std=1.6))
    assert type(dsm) is DenoisingScoreMatching and (dsm.P_mean, dsm.P_std) == (-0.8, 1.6)
    tok = mle_counterpart(TokenDDO(label_drop=0.25))
    assert type(tok) is TokenMLE and tok.label_drop == 0.25
    with pytest.raises(TypeError, match="no MLE counterpart"):
        mle_counterpart(object())


def test_report_seed_sets_are_disjoint_from_the_selection_seeds_and_each_other():
    n = 50_000
    sets = [{evaluation_seed(0, i, s) for i in range(n)} for s in (None, 0, 1, 2)]
    assert all(len(x) == n for x in sets)
    assert len(set().union(*sets)) == 4 * n
    assert evaluation_seed(7, 5) == mix_seed(7, 5, 3)  # the selection seeds are the ones evaluations always used
    with pytest.raises(ValueError, match="seed_set"):
        evaluation_seed(0, 0, -1)


def test_claims_need_a_margin_above_two_std():
    def model(name, values):
        return {"model": name, "sets": [{"fid": v, "num_samples": 10.0} for v in values]}

    reports = [
        model("reference", [10.0, 10.2, 9.8]),  # std 0.2
        model("round 1", [9.0, 9.2, 8.8]),  # margin 1.0 > 2·√(0.04 + 0.04) = 0.566
        model("round 2", [9.6, 9.8, 9.4]),  # margin 0.4 < 0.566: not claimed
        model("control", [9.5, 9.5, 9.5]),  # std 0
    ]
    rep = report_summary(reports)
    assert rep["models"][0]["metrics"]["fid"]["std"] == pytest.approx(statistics.stdev([10.0, 10.2, 9.8]))
    assert "num_samples" not in rep["models"][0]["metrics"]
    c = claims(rep, "fid", "min")
    assert [x["model"] for x in c] == ["round 1", "round 2"]
    assert c[0]["better_than_reference"] and c[0]["better_than_control"]  # 0.5 > 2·0.2
    assert c[0]["vs_reference"]["margin"] == pytest.approx(1.0)
    assert c[0]["vs_reference"]["two_std"] == pytest.approx(2 * (0.04 + 0.04) ** 0.5)
    assert not c[1]["better_than_reference"] and not c[1]["better_than_control"]  # 0.4 < 0.566; -0.1
    hi = claims(rep, "fid", "max")  # higher is better: the reference beats the rounds, no claims
    assert not any(x["better_than_reference"] for x in hi)
    # an exact metric: every seed set gives the same value, so no margin, however small or large, is a claim
    exact = report_summary([model("reference", [2.0] * 3), model("round 1", [1.0] * 3), model("control", [3.0] * 3)])
    (c,) = claims(exact, "fid", "min")
    assert not c["better_than_reference"] and c["vs_reference"] == {"margin": 1.0, "two_std": 0.0, "no_spread": True}
    assert not c["better_than_control"] and c["vs_control"]["no_spread"]
    assert "vs_reference" in c and "no_spread" not in claims(rep, "fid", "min")[0]["vs_reference"]


def test_more_rounds_after_the_control_continue_ddo_and_rerun_the_control(tmp_path, toy_real, mle_ckpt):
    kw = {"candidates": None, "report_seed_sets": 0}
    sp1, mod1, _, _ = fit(tmp_path, toy_real, mle_ckpt, rounds=1, **kw)
    promoted = {k: v.clone() for k, v in mod1.reference.state_dict().items()}
    sp, _, trainer, probe = fit(
        tmp_path, toy_real, mle_ckpt, rounds=2, ckpt_path=str(tmp_path / "sp" / "rounds" / "control.ckpt"), **kw
    )
    assert probe.ddo_steps == 4 and probe.control_steps == 8 and trainer.global_step == 8 + 12
    assert sp.control_images == 2 * 512 and sp.phase == "done" and len(sp.promotions) == 2
    assert probe.first["adam_state"] == 0
    for k, v in probe.start_reference.items():  # round 2 started from round 1's promoted weights
        assert torch.equal(v, promoted[k]), k
    assert [p["kimg_in_control"] for p in sp.summary()["control"]["curve"]][-1] == 1.024


def test_control_uses_the_first_rounds_p_std_and_keeps_the_round_index(tmp_path, toy_real, mle_ckpt):
    """With a P_std schedule the control's DSM takes round 1's P_std; the module still names the last round."""
    sp = self_play(tmp_path, rounds=2, candidates=None, report_seed_sets=0)
    probe = ControlProbe(sp)
    mod = module(mle_ckpt)
    mod.objective.P_std_schedule = [1.4, 2.5]
    make_trainer(tmp_path, max_steps=1000, callbacks=[sp, probe]).fit(mod, data(toy_real))
    assert probe.first["objective"].P_std == 1.4 and mod.objective.P_std == 2.5
    assert mod.round_index == 2 and probe.first["loss"] == pytest.approx(probe.first["dsm"], rel=1e-6)
