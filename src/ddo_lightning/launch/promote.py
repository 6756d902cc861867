"""``ddo promote``: the end of one round of a per-round search run as separate jobs (``ddo slurm --sweep``).

    ddo promote --run_dir runs/cifar --round 2 --monitor fid --mode min 'alpha=2,beta=0.02' 'alpha=4,beta=0.02'

Each candidate of round R trained in its own directory ``RUN/round-R/<label>`` (a ``ddo fit`` with one
SelfPlay round from the round's reference), which ends with ``summary.json`` (that round's best
evaluation and the reference's own step-0 evaluation) and ``best.pt`` (the weights of that best
evaluation; the reference's when nothing beat it). This command reads them all and picks the round's new
reference as SelfPlay does within one run: the best ``monitor`` value (``mode`` min or max) over every
evaluation of every candidate, the reference's own evaluation included — a candidate counts only if it
strictly beat the reference; when none did, the reference carries over.

A candidate without ``summary.json``, without a finished round R in it, without ``best.pt``, or with a
different monitor (the task failed, was cancelled, or ran out of time) is skipped with a warning; the
command fails (exit status 1, nothing written) only when no candidate is usable. It writes, each file
atomically and in this order:

* ``RUN/rounds/round-R.pt``: the winner's ``best.pt`` (the next round's ``init_from``);
* ``RUN/rounds/round-R.json``: the record of the round (winner, its overrides and curve, every candidate's
  status and score); its presence marks round R as done (a rerun of ``ddo slurm --sweep`` starts after it);
* ``RUN/summary.json``: the run over its rounds so far (same layout as a SelfPlay run's, plus the winners).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from ..files import atomic_path, atomic_write_text

CANDIDATE_FILE = "candidate.json"  # written by each array task: the overrides it trains with


class PromoteError(RuntimeError):
    """No candidate of the round is usable: nothing is written."""


def round_dir(run_dir: str, round_number: int) -> str:
    return os.path.join(run_dir, f"round-{round_number}")


def reference_file(run_dir: str, round_number: int) -> str:
    """The reference promoted at the end of round ``round_number`` (the next round's ``init_from``)."""
    return os.path.join(run_dir, "rounds", f"round-{round_number}.pt")


def record_file(run_dir: str, round_number: int) -> str:
    return os.path.join(run_dir, "rounds", f"round-{round_number}.json")


def completed_rounds(run_dir: str) -> int:
    """The number of rounds done in a row from round 1: those whose record and reference file both exist."""
    done = 0
    while os.path.isfile(record_file(run_dir, done + 1)) and os.path.isfile(reference_file(run_dir, done + 1)):
        done += 1
    return done


def _score(metrics: Any, monitor: str) -> float | None:
    value = metrics.get(monitor) if isinstance(metrics, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def read_candidate(directory: str, round_number: int, monitor: str) -> dict[str, Any]:
    """One candidate's outcome: ``{"status": "ok", "score", "reference_score", "improved", "metrics",
    "reference_metrics", "curve"}``, or ``{"status": "skipped", "reason"}``."""

    def skipped(reason: str) -> dict[str, Any]:
        return {"status": "skipped", "reason": reason}

    path = os.path.join(directory, "summary.json")
    if not os.path.isfile(path):
        return skipped("no summary.json (the task failed or was cancelled before its round ended)")
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError) as err:
        return skipped(f"summary.json unreadable ({err})")
    if not isinstance(summary, dict):
        return skipped("summary.json is not a JSON object")
    if summary.get("monitor") != monitor:
        return skipped(f"its summary monitors {summary.get('monitor')!r}, not {monitor!r}")
    entries = [r for r in summary.get("rounds") or [] if isinstance(r, dict) and r.get("round") == round_number]
    if not entries:
        return skipped(f"summary.json has no finished round {round_number} (the task stopped before the round's end)")
    entry = entries[-1]
    score, reference_score = _score(entry.get("metrics"), monitor), _score(summary.get("reference"), monitor)
    if score is None or reference_score is None:
        return skipped(f"no number for {monitor!r} in summary.json")
    if not os.path.isfile(os.path.join(directory, "best.pt")):
        return skipped("no best.pt")
    return {
        "status": "ok",
        "score": score,
        "reference_score": reference_score,
        "improved": bool(entry.get("improved")),
        "weights_changed": entry.get("weights_changed", True),
        "promoted_kimg_in_round": entry.get("promoted_kimg_in_round"),
        "metrics": entry.get("metrics"),
        "reference_metrics": summary.get("reference"),
        "curve": entry.get("curve", []),
    }


def _overrides(directory: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, CANDIDATE_FILE)) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def choose(outcomes: dict[str, dict[str, Any]], mode: str) -> tuple[str | None, float, dict[str, Any]]:
    """(winning label or None for the reference, its score, the first usable candidate's outcome).

    A candidate wins only if its best evaluation strictly beat the reference's own (the first usable
    candidate's step-0 evaluation of it; every candidate evaluates the same weights with the same fixed-seed
    evaluation); among those the best score wins, the first listed on a tie. Raises :class:`PromoteError` if no
    candidate is usable."""
    usable = {label: o for label, o in outcomes.items() if o["status"] == "ok"}
    if not usable:
        reasons = "; ".join(f"{label}: {o['reason']}" for label, o in outcomes.items())
        raise PromoteError(f"no candidate of the round is usable ({reasons})")
    first = next(iter(usable.values()))
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    winner, best = None, first["reference_score"]
    for label, o in usable.items():
        if o["improved"] and better(o["score"], best):
            winner, best = label, o["score"]
    return winner, best, first


def promote(
    run_dir: str, round_number: int, labels: Sequence[str], monitor: str, mode: str, *, log=print
) -> dict[str, Any]:
    """Pick round ``round_number``'s new reference among ``labels`` and write the three files (module
    docstring); return the round's record. Warnings (skipped candidates) go to ``log``."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode {mode!r}: expected 'min' or 'max'")
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 1:
        raise ValueError(f"round {round_number!r}: expected an integer >= 1")
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"candidates {list(labels)!r}: expected one or more distinct labels")
    for label in labels:
        if not label or os.sep in label or label in (".", ".."):
            raise ValueError(f"candidate {label!r}: expected a directory name under round-{round_number}/")
    base = round_dir(run_dir, round_number)
    outcomes = {label: read_candidate(os.path.join(base, label), round_number, monitor) for label in labels}
    for label, o in outcomes.items():
        if o["status"] != "ok":
            log(f"ddo promote: warning: round {round_number}, candidate {label} skipped: {o['reason']}")
    overrides = {label: _overrides(os.path.join(base, label)) for label in labels}
    winner, score, first = choose(outcomes, mode)
    source_label = winner if winner is not None else next(k for k, o in outcomes.items() if o["status"] == "ok")
    source = os.path.join(base, source_label, "best.pt")
    won = outcomes[winner] if winner is not None else None
    record = {
        "round": round_number,
        "monitor": monitor,
        "mode": mode,
        "winner": winner if winner is not None else "reference",
        "improved": winner is not None,
        "candidate": overrides[winner] if winner is not None else {},
        "score": score,
        "reference_score": first["reference_score"],
        "metrics": won["metrics"] if won else first["reference_metrics"],
        "reference_metrics": first["reference_metrics"],
        "promoted_kimg_in_round": won["promoted_kimg_in_round"] if won else 0.0,
        "curve": won["curve"] if won else [],
        "reference": os.path.relpath(reference_file(run_dir, round_number), run_dir),
        "source": os.path.relpath(source, run_dir),
        "candidates": [
            {
                "label": label,
                "overrides": overrides[label],
                **(
                    {k: o[k] for k in ("status", "score", "improved", "weights_changed", "curve")}
                    if o["status"] == "ok"
                    else o
                ),
            }
            for label, o in outcomes.items()
        ],
    }
    with atomic_path(reference_file(run_dir, round_number)) as tmp:
        shutil.copyfile(source, tmp)
    atomic_write_text(record_file(run_dir, round_number), json.dumps(record, indent=2))
    atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(run_summary(run_dir), indent=2))
    what = f"candidate {winner} ({monitor}={score:.6g})" if winner else f"the reference ({monitor}={score:.6g})"
    log(f"ddo promote: round {round_number}: {what} is the new reference: {reference_file(run_dir, round_number)}")
    return record


def run_summary(run_dir: str) -> dict[str, Any]:
    """The run over its completed rounds: the starting reference's metrics and, per round, the winner."""
    records = []
    for n in range(1, completed_rounds(run_dir) + 1):
        with open(record_file(run_dir, n)) as f:
            records.append(json.load(f))
    out: dict[str, Any] = {
        "monitor": records[0]["monitor"] if records else None,
        "mode": records[0]["mode"] if records else None,
        "reference": records[0]["reference_metrics"] if records else None,
        "rounds": [],
    }
    for r in records:
        out["rounds"].append(
            {
                "round": r["round"],
                "winner": r["winner"],
                "candidate": r["candidate"],
                "improved": r["improved"],
                "promoted_kimg_in_round": r["promoted_kimg_in_round"],
                "metrics": r["metrics"],
                "curve": r["curve"],
                "candidates": {c["label"]: c.get("score") for c in r["candidates"]},
            }
        )
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddo promote",
        description="Pick a round's new reference among the candidates trained as separate jobs "
        "(ddo slurm --sweep) and write RUN/rounds/round-R.pt, its record round-R.json and RUN/summary.json.",
    )
    p.add_argument("--run_dir", required=True, help="the search's run directory")
    p.add_argument("--round", type=int, required=True, help="the round (1-based)")
    p.add_argument("--monitor", required=True, help="the metric that picks the best checkpoint (SelfPlay's)")
    p.add_argument("--mode", choices=("min", "max"), required=True, help="whether lower or higher is better")
    p.add_argument("candidates", nargs="+", help="the candidates' directory names under RUN/round-R/")
    return p


def main(argv: Sequence[str]) -> int:
    """``ddo promote``: 0 when a reference was written, 1 when no candidate is usable, 2 on bad arguments."""
    parser = _parser()
    ns = parser.parse_args(list(argv))
    if ns.round < 1:
        parser.error(f"--round {ns.round}: expected an integer >= 1")
    if not os.path.isdir(ns.run_dir):
        parser.error(f"--run_dir {ns.run_dir}: no such directory")
    try:
        promote(ns.run_dir, ns.round, ns.candidates, ns.monitor, ns.mode, log=lambda m: print(m, file=sys.stderr))
    except ValueError as err:
        parser.error(str(err))
    except PromoteError as err:
        print(f"ddo promote: error: round {ns.round}: {err}; nothing written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
