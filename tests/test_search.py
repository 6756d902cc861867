"""The per-round search: candidates (training/search.py) and SelfPlay trying them within one fit."""

from __future__ import annotations

import pathlib

import pytest

from ddo_lightning.errors import DDOError
from ddo_lightning.training.search import (
    MAX_CANDIDATES,
    ROUND_KEYS,
    SearchError,
    candidate_label,
    candidate_seed,
    canonical_key,
    check_candidates,
    expand_grid,
    parse_sweep,
)

# ---- search.py --------------------------------------------------------------------------------------


def test_round_keys_and_error_family():
    assert set(ROUND_KEYS) == {
        "model.objective.alpha",
        "model.objective.beta",
        "model.objective.P_mean",
        "model.objective.P_std",
        "model.lr",
        "model.ema_halflife_kimg",
        "model.ema_sigma_rel",
    }
    assert all(t is float for t in ROUND_KEYS.values())
    assert MAX_CANDIDATES == 16
    assert issubclass(SearchError, DDOError) and issubclass(SearchError, ValueError)


@pytest.mark.parametrize(
    "key",
    ["model.objective.alpha", "model.init_args.objective.init_args.alpha", "objective.alpha", " objective.alpha "],
)
def test_canonical_key_spellings(key):
    assert canonical_key(key) == "model.objective.alpha"


def test_canonical_key_module_level():
    assert canonical_key("lr") == "model.lr"
    assert canonical_key("model.init_args.ema_halflife_kimg") == "model.ema_halflife_kimg"


def test_canonical_key_unknown_lists_known_keys():
    with pytest.raises(SearchError, match=r"unknown round hyper-parameter 'model.objective.gamma'.*model\.lr"):
        canonical_key("model.objective.gamma")
    with pytest.raises(SearchError, match=r"did you mean model\.objective\.alpha"):
        canonical_key("alpha")


@pytest.mark.parametrize(
    "key, what",
    [
        ("model.network.init_args.model.init_args.hidden", "the network"),
        ("model.init_args.network", "the network"),
        ("data.init_args.batch_size", "the data"),
        ("data.batch_size", "the data"),
        ("trainer.max_steps", "the trainer"),
        ("model.sampler.init_args.num_steps", "the sampler"),
        ("sampler.num_steps", "the sampler"),
        ("model.evaluator", "the evaluator"),
        ("model.init_from", "the starting checkpoint"),
    ],
)
def test_canonical_key_not_a_round_hyperparameter(key, what):
    with pytest.raises(SearchError, match=f"{key} changes {what}, not a hyper-parameter of the round"):
        canonical_key(key)


def test_parse_sweep_and_grid_order():
    axes = parse_sweep(["objective.alpha=0.5,2", "model.init_args.objective.init_args.beta = 0.05, 0.1,1e-4"])
    assert axes == {"model.objective.alpha": [0.5, 2.0], "model.objective.beta": [0.05, 0.1, 1e-4]}
    grid = expand_grid(axes)
    assert grid == [
        {"model.objective.alpha": 0.5, "model.objective.beta": 0.05},
        {"model.objective.alpha": 0.5, "model.objective.beta": 0.1},
        {"model.objective.alpha": 0.5, "model.objective.beta": 1e-4},
        {"model.objective.alpha": 2.0, "model.objective.beta": 0.05},
        {"model.objective.alpha": 2.0, "model.objective.beta": 0.1},
        {"model.objective.alpha": 2.0, "model.objective.beta": 1e-4},
    ]
    assert check_candidates(grid) == grid


@pytest.mark.parametrize(
    "specs, match",
    [
        (["model.objective.alpha"], r"'model.objective.alpha'.*expected KEY=v1,v2"),
        (["model.objective.alpha="], r"'model.objective.alpha='.*empty value"),
        (["model.objective.alpha=1,,2"], r"empty value"),
        (["model.objective.alpha=1,two"], r"'model.objective.alpha=1,two'.*'two' is not a number"),
        (["model.objective.alpha=nan"], r"not a finite number"),
        (["objective.alpha=1", "model.init_args.objective.init_args.alpha=2"], r"alpha=2'.*given twice"),
        (["objective.gamma=1"], r"'objective.gamma=1'.*unknown round hyper-parameter"),
        (["data.batch_size=8,16"], r"'data.batch_size=8,16'.*changes the data"),
    ],
)
def test_parse_sweep_errors(specs, match):
    with pytest.raises(SearchError, match=match):
        parse_sweep(specs)


def test_expand_grid_errors():
    with pytest.raises(SearchError, match="grid is empty"):
        expand_grid({})
    with pytest.raises(SearchError, match="model.lr has no values"):
        expand_grid({"model.lr": []})


def test_check_candidates_canonicalises():
    got = check_candidates([{"objective.beta": 1, "objective.alpha": "1e-4"}, {}])
    assert got == [{"model.objective.alpha": 1e-4, "model.objective.beta": 1.0}, {}]
    assert list(got[0]) == ["model.objective.alpha", "model.objective.beta"]  # ROUND_KEYS order
    assert all(type(v) is float for v in got[0].values())


@pytest.mark.parametrize(
    "candidates, match",
    [
        ([], "candidate list is empty"),
        ([{"objective.gamma": 1.0}], r"candidate 1: unknown round hyper-parameter"),
        ([{}, {"model.network.init_args.sigma_data": 1.0}], r"candidate 2: model.network.* changes the network"),
        ([{"objective.alpha": True}], r"candidate 1 objective.alpha: True is a bool, not a number"),
        ([{"objective.alpha": "big"}], r"'big' is not a number"),
        ([{"objective.alpha": [1, 2]}], r"is not a number"),
        ([{"objective.alpha": 1}, {"model.objective.alpha": 1.0}], r"candidates 1 and 2 are the same \(alpha=1\)"),
        ([{"objective.alpha": 1, "model.objective.alpha": 2}], r"given twice"),
        (["alpha=1"], r"expected a dict"),
        ({"objective.alpha": 1}, r"must be a list"),
    ],
)
def test_check_candidates_errors(candidates, match):
    with pytest.raises(SearchError, match=match):
        check_candidates(candidates)


def test_too_many_candidates_needs_the_flag():
    grid = expand_grid({"model.objective.alpha": [0.5, 1, 2, 4, 8], "model.objective.beta": [0.01, 0.1, 1, 10]})
    assert len(grid) == 20 > MAX_CANDIDATES
    with pytest.raises(SearchError, match=r"20 candidates is more than 16.*allow_large_search"):
        check_candidates(grid)
    assert len(check_candidates(grid, allow_large=True)) == 20
    assert len(check_candidates(grid[:MAX_CANDIDATES])) == MAX_CANDIDATES


def test_candidate_label():
    assert candidate_label({}) == "reference"
    assert candidate_label({"model.objective.beta": 0.05, "objective.alpha": 2.0}) == "alpha=2,beta=0.05"
    assert candidate_label({"model.lr": 1e-4, "model.ema_sigma_rel": 0.05}) == "lr=0.0001,ema_sigma_rel=0.05"


def test_candidate_seed_depends_on_seed_round_and_overrides_only():
    a = {"model.objective.alpha": 2.0, "model.objective.beta": 0.05}
    same = {"objective.beta": 0.05, "model.init_args.objective.init_args.alpha": 2}  # other spelling, order, int
    s = candidate_seed(0, 1, a)
    assert s == candidate_seed(0, 1, same)
    assert 0 <= s < 2**63
    others = {
        candidate_seed(1, 1, a),
        candidate_seed(0, 2, a),
        candidate_seed(0, 1, {"model.objective.alpha": 2.0}),
        candidate_seed(0, 1, {"model.objective.alpha": 2.0, "model.objective.beta": 0.0500001}),
        candidate_seed(0, 1, {}),
    }
    assert s not in others and len(others) == 5
    # position in a list does not matter: the seeds of a grid are those of its candidates one by one
    grid = check_candidates([a, {}])
    assert [candidate_seed(0, 3, c) for c in reversed(grid)] == [candidate_seed(0, 3, {}), candidate_seed(0, 3, a)]


# ---- SelfPlay with candidates, in process -------------------------------------------------------------
import json  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from conftest import make_trainer, tiny_net  # noqa: E402

from ddo_lightning.metrics import MixtureMetrics  # noqa: E402
from ddo_lightning.objectives import DiffusionDDO, TokenDDO  # noqa: E402
from ddo_lightning.samplers import HeunSampler  # noqa: E402
from ddo_lightning.training import DDODataModule, DDOModule, PoolFakeSource, SelfPlay  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
MONITOR = "energy_distance"
# three candidates: two of α/β, one of lr and the EMA length; the module's own α = β = 1, lr = 1e-3
THREE = [
    {"objective.alpha": 0.5, "objective.beta": 2.0},
    {"objective.alpha": 4.0},
    {"lr": 4e-3, "ema_halflife_kimg": 1.0},
]


def module(mle_ckpt, objective=None, sampler_steps: int = 6, num_eval_samples: int = 300, **kw):
    """The tiny toy DDO module of these tests (and of test_control.py): α = β = 1, lr 1e-3 unless given."""
    return DDOModule(
        tiny_net(),
        init_from=mle_ckpt,
        objective=objective or DiffusionDDO(alpha=1.0, beta=1.0),
        lr=1e-3,
        ema_halflife_kimg=5,
        sampler=HeunSampler(num_steps=sampler_steps),
        evaluator=MixtureMetrics(),
        num_eval_samples=num_eval_samples,
        eval_batch_size=num_eval_samples,
        **kw,
    )


def data(real):
    return DDODataModule(
        real, batch_size=128, fake=PoolFakeSource(size=512, generation_batch_size=512, seed=1, progress=False)
    )


def self_play(tmp_path, candidates=None, rounds=1, **kw):
    """4 steps of 128 per candidate, evaluations after steps 2 and 4 (test_control.py's too)."""
    return SelfPlay(
        rounds=rounds,
        kimg_per_round=0.512,
        eval_every_kimg=0.256,
        monitor=MONITOR,
        mode="min",
        dirpath=str(tmp_path / "sp"),
        candidates=candidates,
        **kw,
    )


class Probe(pl.Callback):
    """What each step trains with (before it): round, candidate, the objective's α/β, Adam's lr, the EMA
    length, the noise seed; at a candidate's first step also the weights, Adam's state, the pool and the
    fake batch; and the EMA at every evaluation (SelfPlay calls ``on_evaluation``)."""

    def __init__(self, sp):
        self.sp, self.steps, self.starts, self.ema_at = sp, [], [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sp = self.sp
        step = {
            "round": sp.round,
            "candidate": sp.candidate,
            "alpha": pl_module.objective.alpha,
            "beta": pl_module.objective.beta,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "halflife_kimg": pl_module.ema.halflife_images / 1000,
            "stream": pl_module.step_stream,
            "global_step": trainer.global_step,
        }
        if sp.images_in_round == 0:
            step.update(
                target={k: v.clone() for k, v in pl_module.target.state_dict().items()},
                ema={k: v.clone() for k, v in pl_module.ema.model.state_dict().items()},
                reference={k: v.clone() for k, v in pl_module.reference.state_dict().items()},
                adam_state=len(trainer.optimizers[0].state),
                ema_images=int(pl_module.ema.images),
                pool=trainer.datamodule.fake.x,
                fake=batch.fake.x.clone(),
            )
            self.starts.append(step)
        self.steps.append(step)

    def on_evaluation(self, trainer, pl_module, record):
        key = (self.sp.round, self.sp.candidate, self.sp.images_in_round)
        self.ema_at[key] = {k: v.clone() for k, v in pl_module.ema.model.state_dict().items()}


def fit(tmp_path, real, mle_ckpt, candidates=None, rounds=1, probe=False, **kw):
    sp = self_play(tmp_path, candidates, rounds)
    callbacks = [sp] + ([Probe(sp)] if probe else [])
    trainer = make_trainer(tmp_path, max_steps=1000, callbacks=callbacks, **kw)
    mod = module(mle_ckpt)
    trainer.fit(mod, data(real))
    return sp, mod, trainer, (callbacks[1] if probe else None)


def _no_wall(summary):
    """The summary without what the clock measured (the run's and each evaluation's wall time)."""
    if isinstance(summary, dict):
        return {k: _no_wall(v) for k, v in summary.items() if k not in ("wall_seconds_this_run", "eval_seconds")}
    if isinstance(summary, list):
        return [_no_wall(v) for v in summary]
    return summary


def assert_same_summary(got, want, rel=1e-6):
    """Two summaries agree: the same structure and labels, every number within ``rel`` (float32 training
    resumed on the same machine: the same operations, so only summation order could differ)."""
    got, want = _no_wall(got), _no_wall(want)
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), (got, want)
        for k in want:
            assert_same_summary(got[k], want[k], rel)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for a, b in zip(got, want):
            assert_same_summary(a, b, rel)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=rel, abs=1e-9)
    else:
        assert got == want


def test_one_candidate_without_overrides_is_the_plain_round(tmp_path, toy_real, mle_ckpt):
    plain, plain_mod, _, _ = fit(tmp_path / "plain", toy_real, mle_ckpt)
    one, one_mod, _, _ = fit(tmp_path / "one", toy_real, mle_ckpt, candidates=[{}])
    assert not one.searching and one.candidates == [{}]
    assert _no_wall(one.summary()) == _no_wall(plain.summary())  # the same numbers, bit for bit
    for k, v in plain_mod.reference.state_dict().items():
        assert torch.equal(one_mod.reference.state_dict()[k], v), k
    assert "promoted_candidate" not in plain.summary()["rounds"][0]  # a plain summary keeps its fields


def _argbest(sp, r, start_score):
    """(candidate, kimg) of round r's lowest evaluation, from the records; None when the round's reference
    (its own evaluation, or the score it was promoted with) is not beaten."""
    best, where = start_score, None
    for h in sp.evaluations:
        if h["round"] == r and h["kimg_in_round"] > 0 and h["metrics"][MONITOR] < best:
            best, where = h["metrics"][MONITOR], (h["candidate"], h["kimg_in_round"])
    return where


def test_candidates_start_from_the_reference_on_the_same_fakes_with_their_settings(tmp_path, toy_real, mle_ckpt):
    sp, mod, trainer, probe = fit(tmp_path, toy_real, mle_ckpt, candidates=THREE, rounds=2, probe=True)
    assert trainer.global_step == 2 * 3 * 4  # 2 rounds x 3 candidates x 4 steps
    labels = ["alpha=0.5,beta=2", "alpha=4", "lr=0.004,ema_halflife_kimg=1"]
    assert sp.labels == labels
    for r in (0, 1):
        starts = [s for s in probe.starts if s["round"] == r]
        assert [s["candidate"] for s in starts] == [0, 1, 2]
        for s in starts:  # every candidate from the round's reference, fresh Adam and EMA, the same fakes
            for k, v in starts[0]["reference"].items():
                assert torch.equal(s["reference"][k], v) and torch.equal(s["target"][k], v), k
                assert torch.equal(s["ema"][k], v), k
            assert s["adam_state"] == 0 and s["ema_images"] == 0
            assert s["pool"] is starts[0]["pool"]  # one pool per round, not regenerated
            assert torch.equal(s["fake"], starts[0]["fake"])  # and from its start again
    # each step trains with its candidate's settings (the module's own where the candidate says nothing)
    own = {"alpha": 1.0, "beta": 1.0, "lr": 1e-3, "halflife_kimg": 5.0}
    for s in probe.steps:
        cand = check_candidates(THREE)[s["candidate"]]
        want = {
            "alpha": cand.get("model.objective.alpha", own["alpha"]),
            "beta": cand.get("model.objective.beta", own["beta"]),
            "lr": cand.get("model.lr", own["lr"]),
            "halflife_kimg": cand.get("model.ema_halflife_kimg", own["halflife_kimg"]),
        }
        assert {k: s[k] for k in want} == want, s["candidate"]
        first = min(
            t["global_step"] for t in probe.steps if (t["round"], t["candidate"]) == (s["round"], s["candidate"])
        )
        assert s["stream"] == (candidate_seed(mod.seed, s["round"] + 1, cand), first)
    # the promoted (candidate, evaluation) is the best of all the round's, the reference's own included
    start_score = sp.evaluations[0]["metrics"][MONITOR]
    assert sp.evaluations[0]["kimg_in_round"] == 0 and sp.evaluations[0]["candidate"] == 0
    summary = json.loads((tmp_path / "sp" / "summary.json").read_text())
    for r in (0, 1):
        where = _argbest(sp, r, start_score)
        promo = sp.promotions[r]
        got = (promo["candidate"], promo["promoted_kimg_in_round"]) if promo["improved"] else None
        assert got == where
        rnd = summary["rounds"][r]
        assert rnd["promoted_candidate"] == (where[0] if where else None)
        if where:
            assert rnd["promoted_candidate_label"] == labels[where[0]]
            start_score = rnd["metrics"][MONITOR]
            # the next round's reference is that evaluation's EMA
            nxt = [s for s in probe.starts if s["round"] == r + 1] or [None]
            promoted_ema = probe.ema_at[(r, where[0], int(round(where[1] * 1000)))]
            weights = nxt[0]["reference"] if nxt[0] else mod.reference.state_dict()
            for k, v in promoted_ema.items():
                assert torch.equal(weights[k], v), k
        # every candidate's curve: its evaluations at 0.256 and 0.512 kimg (the reference at 0 in the first's)
        curves = rnd["candidates"]
        assert [c["label"] for c in curves] == labels
        for i, c in enumerate(curves):
            mine = [h for h in sp.evaluations if h["round"] == r and h["candidate"] == i]
            assert [p["kimg_in_round"] for p in c["curve"]] == [h["kimg_in_round"] for h in mine]
            assert [p["kimg_in_round"] for p in c["curve"] if p["kimg_in_round"] > 0] == [0.256, 0.512]
            assert all(h["candidate_label"] == labels[i] for h in mine)
    assert summary["candidates"][1] == {"label": "alpha=4", "overrides": {"model.objective.alpha": 4.0}}
    assert (tmp_path / "sp" / "candidates-round-1.png").is_file() and (
        tmp_path / "sp" / "candidates-round-2.png"
    ).is_file()


def test_candidate_column_in_the_csv_log(tmp_path, toy_real, mle_ckpt):
    import csv

    from ddo_lightning.training import RunCSVLogger

    logger = RunCSVLogger(str(tmp_path / "logs"))
    cands = [{"objective.alpha": 0.5}, {"objective.alpha": 2.0}]
    sp, *_ = fit(tmp_path, toy_real, mle_ckpt, candidates=cands, logger=logger, log_every_n_steps=1)
    with open(logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(f"eval/{MONITOR}")]
    assert [(float(r["candidate"]), float(r["eval/kimg_in_round"])) for r in rows] == [
        (0.0, 0.0),
        (0.0, 0.256),
        (0.0, 0.512),
        (1.0, 0.256),
        (1.0, 0.512),
    ]
    assert [float(r[f"eval/{MONITOR}"]) for r in rows] == pytest.approx([h["metrics"][MONITOR] for h in sp.evaluations])


def test_candidate_keys_the_module_lacks_fail_before_training(tmp_path, toy_real, mle_ckpt):
    sp = self_play(tmp_path, candidates=[{"objective.alpha": 2.0}, {"model.ema_sigma_rel": 0.05}])
    trainer = make_trainer(tmp_path, max_steps=100, callbacks=[sp])
    with pytest.raises(SearchError, match=r"model.ema_sigma_rel.*half-life EMA") as err:
        trainer.fit(module(mle_ckpt), data(toy_real))
    assert trainer.global_step == 0 and not (tmp_path / "sp" / "best.pt").exists(), err.value
    bad_alpha = self_play(tmp_path, candidates=[{"objective.alpha": -1.0}])
    with pytest.raises(SearchError, match=r"candidate 1 \(alpha=-1\): model.objective.alpha=-1: DDO alpha must be"):
        make_trainer(tmp_path, max_steps=100, callbacks=[bad_alpha]).fit(module(mle_ckpt), data(toy_real))
    # a key the objective does not have (TokenDDO has no σ distribution)
    token = SimpleNamespace(objective=TokenDDO(), lr=1e-3, ema=None)
    with pytest.raises(SearchError, match=r"model.objective.P_mean, but this run's objective TokenDDO has no `P_mean`"):
        self_play(tmp_path, candidates=[{"objective.P_mean": -1.0}]).check_candidates_against(token)


def test_bad_candidates_and_start_round_fail_at_construction(tmp_path):
    with pytest.raises(SearchError, match="changes the data"):
        self_play(tmp_path, candidates=[{"data.batch_size": 64}])
    many = [{"objective.alpha": 0.1 * (i + 1)} for i in range(MAX_CANDIDATES + 1)]
    with pytest.raises(SearchError, match="allow_large_search"):
        self_play(tmp_path, candidates=many)
    assert len(self_play(tmp_path, candidates=many, allow_large_search=True).candidates) == MAX_CANDIDATES + 1
    with pytest.raises(ValueError, match="start_round must be a round number from 1 to rounds=2"):
        self_play(tmp_path, rounds=2, start_round=3)


def test_a_round_alone_from_start_round_counts_from_there(tmp_path, toy_real, mle_ckpt):
    """``start_round: 2, rounds: 2`` plays round 2 alone: its fakes, seeds and file names are round 2's."""
    sp = self_play(tmp_path, candidates=[{"objective.alpha": 2.0}], rounds=2, start_round=2)
    probe = Probe(sp)
    trainer = make_trainer(tmp_path, max_steps=100, callbacks=[sp, probe])
    mod = module(mle_ckpt)
    trainer.fit(mod, data(toy_real))
    assert trainer.global_step == 4 and [p["round"] for p in sp.promotions] == [1]
    assert (tmp_path / "sp" / "rounds" / "round-2.ckpt").is_file()
    assert trainer.datamodule.fake.round == 1  # the pool of round 2 (0-based 1)
    assert probe.steps[0]["stream"] == (candidate_seed(mod.seed, 2, {"model.objective.alpha": 2.0}), 0)
    assert json.loads((tmp_path / "sp" / "summary.json").read_text())["rounds"][0]["round"] == 2


def test_resume_mid_candidate_reapplies_its_overrides(tmp_path, toy_real, mle_ckpt):
    """Stopped inside the second candidate and resumed in a fresh process-like setup (new module: its
    objective has the preset's α): the rest trains with the candidate's α, and the run ends as the
    uninterrupted one."""
    full, full_mod, _, _ = fit(tmp_path / "full", toy_real, mle_ckpt, candidates=THREE[:2])
    part = tmp_path / "part"
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=part / "ckpt", filename="{step}", every_n_train_steps=6, save_top_k=-1)
    sp = self_play(part, THREE[:2])
    make_trainer(part, max_steps=6, enable_checkpointing=True, callbacks=[sp, ckpt]).fit(
        module(mle_ckpt), data(toy_real)
    )
    assert (sp.candidate, sp.images_in_round) == (1, 256)
    sp2 = self_play(part, THREE[:2])
    probe = Probe(sp2)
    mod2 = module(mle_ckpt)
    trainer = make_trainer(part, max_steps=1000, callbacks=[sp2, probe])
    trainer.fit(mod2, data(toy_real), ckpt_path=str(part / "ckpt" / "step=6.ckpt"))
    assert [s["alpha"] for s in probe.steps] == [4.0, 4.0] and trainer.global_step == 8
    assert_same_summary(sp2.summary(), full.summary())
    for k, v in full_mod.reference.state_dict().items():
        torch.testing.assert_close(mod2.reference.state_dict()[k], v, rtol=1e-6, atol=1e-7)


# ---- the preset through `ddo fit`: a SIGKILL mid-candidate, then the same command again ------------------
def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if k == "init_args":
            out.update(_flatten(v, prefix))
        elif k == "callbacks":
            for cb in v:
                out.update(
                    _flatten(cb.get("init_args", {}), f"{prefix}callbacks[{cb['class_path'].rsplit('.', 1)[-1]}].")
                )
        elif isinstance(v, dict) and k != "class_path":
            out.update(_flatten(v, f"{prefix}{k}."))
        elif k != "class_path":
            out[prefix + k] = v
    return out


SIZES = {  # the only settings the overlay may change: lengths, cadences and sample counts
    "trainer.callbacks[SelfPlay].rounds",
    "trainer.callbacks[SelfPlay].kimg_per_round",
    "trainer.callbacks[SelfPlay].eval_every_kimg",
    "trainer.callbacks[ModelCheckpoint].every_n_train_steps",
    "trainer.callbacks[ScatterFigure].num_samples",
    "trainer.enable_progress_bar",
    "model.num_eval_samples",
    "model.eval_batch_size",
    "data.batch_size",
    "data.real.num_samples",
    "data.fake.size",
    "data.fake.generation_batch_size",
}


@pytest.mark.slow  # three `ddo fit` launches; mid-candidate resume stays fast (test_resume_mid_candidate_…)
def test_search_preset_killed_mid_candidate_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """configs/toy2d.yaml (its per-round search) as shipped, shrunk by a sizes-and-paths overlay (1 round,
    4 candidates of 4
    steps at batch 64, a checkpoint every step): a `ddo fit` killed with SIGKILL inside candidate 2 or later,
    then run again with the same command (it resumes from the run directory's last.ckpt), ends with the
    summary of a run that was never interrupted: the same curves, the same promoted candidate."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from ddo_lightning.cli import main

    root = pathlib.Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    real = {"class_path": "ddo_lightning.data.Toy2DDataset", "init_args": {"num_samples": 1024}}
    pre = tmp_path / "pre.yaml"
    pre.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "max_steps": 2,
                    "val_check_interval": 2,
                    "enable_progress_bar": False,
                    "callbacks": [
                        {
                            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                            "init_args": {"save_last": True, "every_n_train_steps": 2},
                        }
                    ],
                },
                "model": {"init_args": {"num_eval_samples": 100}},
                "data": {"init_args": {"batch_size": 64, "real": real}},
            }
        )
    )
    main(["fit", "--config", str(root / "configs/toy2d_pretrain.yaml"), "--config", str(pre)])
    overlay = {
        "trainer": {
            "enable_progress_bar": False,
            "callbacks": [
                {
                    "class_path": "ddo_lightning.training.SelfPlay",
                    "init_args": {"rounds": 1, "kimg_per_round": 0.256, "eval_every_kimg": 0.128},
                },
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"every_n_train_steps": 1}},
                {"class_path": "ddo_lightning.training.ScatterFigure", "init_args": {"num_samples": 200}},
            ],
        },
        "model": {
            "init_args": {
                "num_eval_samples": 200,
                "eval_batch_size": 200,
                "init_from": str(tmp_path / "outputs/toy2d_pretrain/checkpoints/last.ckpt"),
            }
        },
        "data": {
            "init_args": {
                "batch_size": 64,
                "real": real,
                "fake": {"class_path": "ddo_lightning.training.PoolFakeSource", "init_args": {"size": 256}},
            }
        },
    }
    assert set(_flatten(overlay)) <= SIZES | {"model.init_from"}, set(_flatten(overlay)) - SIZES
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(overlay))
    shipped = yaml.safe_load((root / "configs/toy2d.yaml").read_text())
    candidates = shipped["trainer"]["callbacks"][0]["init_args"]["candidates"]
    assert len(candidates) == 4
    env = dict(
        os.environ,
        PYTHONPATH=str(root / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )

    def command(run_dir):
        base = [sys.executable, "-m", "ddo_lightning.cli", "fit", "--config", str(root / "configs/toy2d.yaml")]
        return base + ["--config", str(small), "--run_dir", run_dir]

    full = subprocess.run(command("outputs/full"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "round 1 · candidate 2/4 alpha=1" in full.stderr + full.stdout
    killed = tmp_path / "outputs/killed"
    proc = subprocess.Popen(
        command("outputs/killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    t0 = time.time()
    while not (killed / "checkpoints/step=6.ckpt").exists():  # steps 5-8 are candidate 2's
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(killed / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    play = next(v for k, v in state["callbacks"].items() if k.startswith("SelfPlay"))
    assert play["round"] == 0 and play["candidate"] >= 1 and state["global_step"] < 16, (play, state["global_step"])
    assert play["candidate_overrides"] == check_candidates(candidates)[play["candidate"]]
    again = subprocess.run(command("outputs/killed"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[run_dir] resuming outputs/killed from" in again.stdout + again.stderr
    got = json.loads((killed / "summary.json").read_text())
    want = json.loads((tmp_path / "outputs/full/summary.json").read_text())
    assert got["rounds"][0]["promoted_candidate"] == want["rounds"][0]["promoted_candidate"]
    assert [c["label"] for c in got["rounds"][0]["candidates"]] == [
        "alpha=0.5",
        "alpha=1",
        "alpha=0.5,beta=0.5",
        "alpha=0.5,lr=0.0001",
    ]
    assert_same_summary(got, want, rel=1e-5)
    assert (killed / "logs/candidates-round-1.png").is_file()
