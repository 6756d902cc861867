"""The per-round search: the α/β (and other round hyper-parameter) candidates one self-play round tries.

The paper picks each round's new reference as the best checkpoint over the round's training iterations
*and* over the configurations tried. A *candidate* is a dict of overrides of the round's hyper-parameters,
keyed by canonical config keys (:data:`ROUND_KEYS`); ``{}`` is the preset's own settings. ``SelfPlay``
trains the candidates of a round one after another from the same reference (``candidates``), and
``ddo slurm --sweep`` runs them as separate jobs; both build and check candidates here, so a candidate
has the same label and the same seed stream either way (:func:`candidate_seed` depends on the base seed,
the round and the overrides, not on the candidate's position in a list).

Plain Python (no Lightning): the launcher imports it too.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import SearchError

__all__ = [
    "MAX_CANDIDATES",
    "ROUND_KEYS",
    "SearchError",
    "canonical_key",
    "candidate_label",
    "candidate_seed",
    "check_candidates",
    "expand_grid",
    "parse_sweep",
]

# The hyper-parameters a round may change (canonical key -> type). Everything else (network, data,
# trainer, sampler, evaluator, starting checkpoint) is the run's, shared by every candidate.
ROUND_KEYS: dict[str, type] = {
    "model.objective.alpha": float,
    "model.objective.beta": float,
    "model.objective.P_mean": float,
    "model.objective.P_std": float,
    "model.lr": float,
    "model.ema_halflife_kimg": float,
    "model.ema_sigma_rel": float,
}

# One in-process search trains this many rounds' worth of images per round at most, unless allowed.
MAX_CANDIDATES = 16

# Keys that name a part of the run rather than a round hyper-parameter: prefix -> what it changes.
_NOT_ROUND = {
    "model.network": "the network",
    "model.init_from": "the starting checkpoint",
    "model.sampler": "the sampler",
    "model.evaluator": "the evaluator",
    "data": "the data",
    "trainer": "the trainer",
    "seed_everything": "the run's seed",
}

ALLOW_LARGE_HINT = (
    "set `allow_large_search: true` on SelfPlay (--selfplay.allow_large_search true) or pass the sweep's "
    "allow-large option to ddo slurm"
)


def _known() -> str:
    return ", ".join(ROUND_KEYS)


def canonical_key(key: str) -> str:
    """The canonical form of a round hyper-parameter's config key.

    Accepts ``model.objective.alpha``, the config's full path ``model.init_args.objective.init_args.alpha``
    and the short ``objective.alpha`` (``model.`` implied). Raises :class:`SearchError` for any other key,
    with a specific message for keys of the network, data, trainer, sampler, evaluator or ``init_from``.
    """
    if not isinstance(key, str) or not key.strip():
        raise SearchError(f"a candidate key must be a non-empty string, got {key!r}; known keys: {_known()}")
    raw = key.strip()
    parts = [p for p in raw.split(".") if p != "init_args"]
    if not parts or "" in parts:
        raise SearchError(f"{raw!r} is not a config key; known keys: {_known()}")
    if parts[0] not in ("model", "data", "trainer", "seed_everything"):
        parts = ["model", *parts]
    dotted = ".".join(parts)
    for prefix, what in _NOT_ROUND.items():
        if dotted == prefix or dotted.startswith(prefix + "."):
            raise SearchError(
                f"{raw} changes {what}, not a hyper-parameter of the round: every candidate of a round shares "
                f"it. A candidate may set: {_known()}"
            )
    if dotted not in ROUND_KEYS:
        hint = [k for k in ROUND_KEYS if k.rsplit(".", 1)[-1] == parts[-1]]
        did = f" (did you mean {hint[0]}?)" if hint else ""
        raise SearchError(f"unknown round hyper-parameter {raw!r}{did}; known keys: {_known()}")
    return dotted


def _number(value: Any, where: str) -> float:
    """``value`` as a finite float; a bool, a non-number or NaN/inf is a :class:`SearchError`."""
    if isinstance(value, bool):
        raise SearchError(f"{where}: {value!r} is a bool, not a number")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            out = float(value.strip())
        except ValueError:
            raise SearchError(f"{where}: {value!r} is not a number") from None
    else:
        try:
            out = float(value)  # numpy / 0-d tensor scalars
        except (TypeError, ValueError):
            raise SearchError(f"{where}: {value!r} ({type(value).__name__}) is not a number") from None
    if not math.isfinite(out):
        raise SearchError(f"{where}: {value!r} is not a finite number")
    return out


def parse_sweep(specs: Sequence[str]) -> dict[str, list[float]]:
    """``["KEY=v1,v2,...", ...]`` -> ``{canonical key: [v1, v2, ...]}`` in the given order.

    Raises :class:`SearchError` naming the spec for: no ``=``, an empty value list, a value that is not a
    number, an unknown or non-round key, or a key given twice (in any of its spellings)."""
    if isinstance(specs, str):
        specs = [specs]
    axes: dict[str, list[float]] = {}
    for spec in specs:
        if not isinstance(spec, str) or "=" not in spec:
            raise SearchError(f"sweep {spec!r}: expected KEY=v1,v2,... (e.g. model.objective.alpha=0.5,2)")
        key, _, values = spec.partition("=")
        try:
            canon = canonical_key(key)
        except SearchError as e:
            raise SearchError(f"sweep {spec!r}: {e}") from None
        items = [v.strip() for v in values.split(",")]
        if not values.strip() or any(v == "" for v in items):
            raise SearchError(f"sweep {spec!r}: empty value in the list (expected KEY=v1,v2,...)")
        if canon in axes:
            raise SearchError(f"sweep {spec!r}: {canon} is given twice; give all its values in one KEY=v1,v2,...")
        axes[canon] = [_number(v, f"sweep {spec!r}") for v in items]
    return axes


def expand_grid(axes: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every combination of the axes' values (cartesian product, the first key varying slowest)."""
    if not axes:
        raise SearchError("the sweep grid is empty: give at least one KEY=v1,v2,...")
    for key, values in axes.items():
        if len(values) == 0:
            raise SearchError(f"the sweep grid's axis {key} has no values")
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def check_candidates(candidates: Sequence[Mapping[str, Any]], allow_large: bool = False) -> list[dict[str, float]]:
    """The candidates with canonical keys (in :data:`ROUND_KEYS` order) and float values.

    Raises :class:`SearchError` for: an empty list, a candidate that is not a mapping, an unknown or
    non-round key (or one key in two spellings), a value that is not a number (a bool is not), two
    candidates with the same overrides, more than :data:`MAX_CANDIDATES` candidates without ``allow_large``.
    """
    if isinstance(candidates, Mapping) or isinstance(candidates, str):
        raise SearchError(f"candidates must be a list of dicts, got {type(candidates).__name__}")
    candidates = list(candidates)
    if not candidates:
        raise SearchError("the candidate list is empty: give at least one candidate ({} is the preset's settings)")
    if len(candidates) > MAX_CANDIDATES and not allow_large:
        raise SearchError(
            f"{len(candidates)} candidates is more than {MAX_CANDIDATES} (each trains a whole round's images): "
            f"shrink the grid, or {ALLOW_LARGE_HINT}"
        )
    out: list[dict[str, float]] = []
    seen: dict[tuple, int] = {}
    for i, cand in enumerate(candidates, 1):
        if not isinstance(cand, Mapping):
            raise SearchError(f"candidate {i}: expected a dict of KEY: value, got {cand!r}")
        canon: dict[str, float] = {}
        for key, value in cand.items():
            try:
                k = canonical_key(key)
            except SearchError as e:
                raise SearchError(f"candidate {i}: {e}") from None
            if k in canon:
                raise SearchError(f"candidate {i}: {k} is given twice ({key!r} and another spelling)")
            canon[k] = _number(value, f"candidate {i} {key}")
        canon = {k: canon[k] for k in ROUND_KEYS if k in canon}
        ident = tuple(canon.items())
        if ident in seen:
            raise SearchError(
                f"candidates {seen[ident]} and {i} are the same ({candidate_label(canon)}): each candidate once"
            )
        seen[ident] = i
        out.append(canon)
    return out


def _ordered(candidate: Mapping[str, Any]) -> list[tuple[str, float]]:
    """A candidate's (canonical key, value) pairs in :data:`ROUND_KEYS` order (labels and seeds read this)."""
    canon = {canonical_key(k): _number(v, f"candidate {k}") for k, v in candidate.items()}
    return [(k, canon[k]) for k in ROUND_KEYS if k in canon]


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def candidate_label(candidate: Mapping[str, Any]) -> str:
    """A short readable label: ``alpha=2,beta=0.05`` (keys' last part, values as ``%g``, in
    :data:`ROUND_KEYS` order); ``reference`` for ``{}`` (the preset's own settings). Safe in file names."""
    if not candidate:
        return "reference"
    return ",".join(f"{_short(k)}={v:g}" for k, v in _ordered(candidate))


def candidate_seed(base_seed: int, round_number: int, candidate: Mapping[str, Any]) -> int:
    """The seed of a candidate's training noise in round ``round_number`` (1-based): a stable 63-bit
    function of the base seed, the round and the candidate's canonical overrides (``repr`` of each float,
    exact), never of its position in a list, so it is the same in-process and as a separate job."""
    text = ";".join(f"{k}={v!r}" for k, v in _ordered(candidate))
    digest = hashlib.blake2b(f"{int(base_seed)}|{int(round_number)}|{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
