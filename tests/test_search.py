"""The per-round search: candidates (training/search.py) and SelfPlay trying them within one fit."""

from __future__ import annotations

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
