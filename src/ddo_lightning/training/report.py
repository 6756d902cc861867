"""What a run tells the outside world: evaluations to every logger and evaluation listener
(:func:`publish_evaluation`), and a self-play run's ``summary.json``, console table and ``curve.png``,
made from SelfPlay's two record lists:

* evaluations, one per evaluation: ``{"round", "kimg_in_round", "kimg", "metrics", "candidate",
  "candidate_label"}`` (``round`` and ``candidate`` 0-based; ``kimg_in_round`` counts in the candidate);
* promotions, one per finished round: ``{"round", "promoted_kimg_in_round", "improved", "best_score",
  "weights_changed"}``, and in a search ``"candidate"``, ``"candidate_label"`` (None when nothing beat the
  round's reference) and ``"candidates_moved"``.

With SelfPlay's ``control`` also the control's evaluations (``{"kimg_in_control", "kimg", "metrics"}``,
its 0-kimg point the starting reference's) and record; with ``report_seed_sets`` the report evaluations
(``{"model", "sets": [metrics per seed set]}``), summarised as mean ± std with ``claims``
(:func:`report_summary`, :func:`claims`).

Everything here reads those records; nothing here changes the training.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from ..files import atomic_path, atomic_write_text
from ..protocols import EvaluationListener
from .search import candidate_label

_LAID_OUT: set[tuple[int, str]] = set()  # (W&B logger, prefix) pairs whose metric layout is defined
# how a number was measured, not a result (``proxy``: 1.0 when an FID-like value is from < 50,000 samples)
COST_KEYS = ("num_samples", "eval_seconds", "nfe", "sampler_steps", "proxy")
CLAIM_STDS = 2.0  # an improvement is claimed only when the margin exceeds this many standard deviations
CONTROL_BUDGET = "every real image the DDO rounds of this fit consumed (all candidates of every round)"


def fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---- evaluations ------------------------------------------------------------------------------------------
def publish_evaluation(
    trainer: pl.Trainer,
    pl_module: Any,
    metrics: dict[str, float],
    prefix: str = "eval",
    round_index: int | None = None,
    kimg_in_round: float | None = None,
    log: bool = True,
    candidate: int | None = None,
) -> dict[str, float]:
    """Log ``metrics`` as ``<prefix>/<name>`` with ``<prefix>/kimg`` (and ``round``,
    ``<prefix>/kimg_in_round`` in self-play, ``candidate`` in a search: group by it) at the current step to
    every logger (unless ``log`` is False: the caller logged them itself); then call every callback's
    ``on_evaluation``. Returns the record."""
    record = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
    record[f"{prefix}/kimg"] = int(pl_module.images_seen) / 1000
    if round_index is not None:
        record["round"] = float(round_index)
        record[f"{prefix}/kimg_in_round"] = float(kimg_in_round or 0.0)
    if candidate is not None:
        record["candidate"] = float(candidate)
    for logger in trainer.loggers if log else []:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero and (id(logger), prefix) not in _LAID_OUT:
            # W&B: plot evaluations against images seen; `round` travels in the same row, so each
            # round is a segment of one curve (group or colour by `round`)
            logger.experiment.define_metric(f"{prefix}/kimg")
            logger.experiment.define_metric(f"{prefix}/*", step_metric=f"{prefix}/kimg")
            _LAID_OUT.add((id(logger), prefix))
        logger.log_metrics(record, step=trainer.global_step)
    for cb in trainer.callbacks:
        if isinstance(cb, EvaluationListener):
            cb.on_evaluation(trainer, pl_module, record)
    return record


def logger_dirs(trainer: pl.Trainer) -> list[str]:
    """The directories of the file-based loggers (CSV, TensorBoard); W&B gets media through its API."""
    out = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            continue
        d = logger.log_dir or logger.save_dir
        if d:
            out.append(str(d))
    return out


# ---- a self-play run's summary ----------------------------------------------------------------------------
def summary(
    evaluations: list[dict[str, Any]],
    promotions: list[dict[str, Any]],
    monitor: str,
    mode: str,
    warnings: list[str] = (),
    wall_seconds: float | None = None,
    candidates: list[dict[str, float]] | None = None,
    control: dict[str, Any] | None = None,
    reports: list[dict[str, Any]] | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The starting reference's metrics and, per finished round, the metrics of the promoted checkpoint (the
    previous one's when nothing beat the round's start) and the round's curve of ``monitor``.

    In a search (``candidates`` given) also: the candidates (``label``, ``overrides``) at the top, and per
    round ``promoted_candidate`` / ``promoted_candidate_label`` (None: the reference carried over) and
    ``candidates``: each candidate's curve and best evaluation. The round's ``curve`` lists every evaluation
    of the round, each point naming its candidate.

    Additive fields: ``control`` (:func:`control_summary`), ``report`` and ``claims`` (from ``reports``:
    :func:`report_summary`, :func:`claims`), ``provenance`` (how the evaluations were sampled)."""
    out: dict[str, Any] = {"monitor": monitor, "mode": mode, "reference": None, "rounds": []}
    if evaluations:
        out["reference"] = evaluations[0]["metrics"]
    for end in promotions:
        r = end["round"]
        cands = [
            h
            for h in evaluations
            if h["round"] == r
            and h["kimg_in_round"] == end["promoted_kimg_in_round"]
            and h.get("candidate", 0) == (end.get("candidate") or 0)
        ]
        best = cands[-1]["metrics"] if cands and end["improved"] else None
        if best is None:  # carried over: the previous promoted metrics
            best = out["rounds"][-1]["metrics"] if out["rounds"] else out["reference"]
        entry = {
            "round": r + 1,
            "improved": end["improved"],
            "weights_changed": end.get("weights_changed", True),
            "promoted_kimg_in_round": end["promoted_kimg_in_round"],
            "metrics": best,
            "curve": [
                {"kimg_in_round": h["kimg_in_round"], monitor: h["metrics"][monitor]}
                | ({"candidate": h.get("candidate", 0)} if candidates is not None else {})
                for h in evaluations
                if h["round"] == r
            ],
        }
        if candidates is not None:
            entry.update(_round_candidates(evaluations, end, candidates, monitor, mode))
        out["rounds"].append(entry)
    if candidates is not None:
        out["candidates"] = [{"label": candidate_label(c), "overrides": dict(c)} for c in candidates]
    if control is not None:
        out["control"] = control
    if reports:
        out["report"] = report_summary(reports)
        out["claims"] = claims(out["report"], monitor, mode)
    if provenance is not None:
        out["provenance"] = provenance
    if warnings:
        out["warnings"] = list(warnings)
    if wall_seconds is not None:
        out["wall_seconds_this_run"] = wall_seconds
    return out


def control_summary(
    evaluations: list[dict[str, Any]], record: dict[str, Any] | None, budget_images: int, monitor: str, mode: str
) -> dict[str, Any]:
    """The MLE control: its budget (``kimg``, and what it counts), its curve of ``monitor`` (the 0-kimg point
    is the starting reference) and, once finished (``record``), the selected evaluation and its metrics."""
    out: dict[str, Any] = {
        "kimg": budget_images / 1000,
        "budget": CONTROL_BUDGET,
        "finished": record is not None,
        "curve": [{"kimg_in_control": h["kimg_in_control"], monitor: h["metrics"][monitor]} for h in evaluations],
    }
    if record is not None:
        chosen = [h for h in evaluations if h["kimg_in_control"] == record["selected_kimg"]]
        out |= {
            "selected_kimg": record["selected_kimg"],
            "improved": record["improved"],
            "metrics": chosen[-1]["metrics"] if chosen else None,
        }
    return out


def mean_std(values: list[float]) -> dict[str, Any]:
    """``mean``, ``std`` (the sample standard deviation, ddof = 1, of the per-seed-set values) and the
    ``values`` themselves."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "values": [float(v) for v in a],
    }


def report_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per reported model, each metric's mean ± std over the report seed sets (:func:`mean_std`)."""
    models = []
    for r in reports:
        keys = [k for k in r["sets"][0] if k not in COST_KEYS]
        models.append({"model": r["model"], "metrics": {k: mean_std([m[k] for m in r["sets"]]) for k in keys}})
    return {"seed_sets": len(reports[0]["sets"]), "models": models}


def claims(report: dict[str, Any], monitor: str, mode: str) -> list[dict[str, Any]]:
    """Per round, whether it is better than the starting reference and than the control on ``monitor``:
    only when the margin (difference of the means, in the better direction) exceeds ``CLAIM_STDS`` times
    the standard deviation of that difference, √(std_a² + std_b²) of the two models' per-seed-set stds.
    Where both stds are 0 (a metric that is exact given the weights) nothing is claimed: ``no_spread``."""
    by_name = {m["model"]: m["metrics"][monitor] for m in report["models"] if monitor in m["metrics"]}
    out = []
    for name, mine in by_name.items():
        if not name.startswith("round "):
            continue
        entry: dict[str, Any] = {"model": name, "metric": monitor}
        for other in ("reference", "control"):
            if other not in by_name:
                continue
            theirs = by_name[other]
            margin = theirs["mean"] - mine["mean"] if mode == "min" else mine["mean"] - theirs["mean"]
            two_std = CLAIM_STDS * math.hypot(mine["std"], theirs["std"])
            # no spread at all (an exact metric of fixed weights): the seed sets measure no noise, so they
            # decide nothing; the spread over training seeds must (scripts/seeds_table.py)
            entry[f"better_than_{other}"] = bool(margin > two_std > 0)
            entry[f"vs_{other}"] = {"margin": margin, "two_std": two_std} | (
                {"no_spread": True} if two_std == 0 else {}
            )
        out.append(entry)
    return out


def mean_std_line(sets: list[dict[str, float]], monitor: str) -> str:
    """``fid=3.12 ± 0.05 (3 seed sets)``: one model's report evaluations of ``monitor``, for the console."""
    ms = mean_std([m[monitor] for m in sets])
    return f"{monitor}={fmt(ms['mean'])} ± {fmt(ms['std'])} ({len(sets)} seed sets)"


def _round_candidates(
    evaluations: list[dict[str, Any]], end: dict[str, Any], candidates: list[dict[str, float]], monitor: str, mode: str
) -> dict[str, Any]:
    """A search round's candidates: each one's curve (its evaluations; the round's reference at 0 kimg is
    the first candidate's first point) and best point, and which one was promoted."""
    per = []
    for i, cand in enumerate(candidates):
        pts = [h for h in evaluations if h["round"] == end["round"] and h.get("candidate", 0) == i]
        curve = [{"kimg_in_round": h["kimg_in_round"], monitor: h["metrics"][monitor]} for h in pts]
        trained = [p for p in curve if p["kimg_in_round"] > 0]
        pick = min if mode == "min" else max
        best = pick(trained, key=lambda p: p[monitor]) if trained else None
        per.append(
            {"candidate": i, "label": candidate_label(cand), "overrides": dict(cand), "curve": curve, "best": best}
        )
    chosen = end.get("candidate")
    return {
        "promoted_candidate": chosen,
        "promoted_candidate_label": None if chosen is None else candidate_label(candidates[chosen]),
        "candidates": per,
    }


def table(s: dict[str, Any]) -> str:
    """A :func:`summary` as a console table: the reference and each round's promoted metrics."""
    if s["reference"] is None:
        return "(no evaluation yet)"
    keys = [k for k in s["reference"] if k not in COST_KEYS]
    rows = [["reference (start)", "-"] + [fmt(s["reference"][k]) for k in keys]]
    for r in s["rounds"]:
        tag = (
            f"round {r['round']}"
            + ("" if r["improved"] else " (carried over)")
            + ("" if r["weights_changed"] else " (weights never changed)")
            + (f" {r['promoted_candidate_label']}" if r.get("promoted_candidate_label") else "")
        )
        rows.append([tag, fmt(r["promoted_kimg_in_round"])] + [fmt(r["metrics"][k]) for k in keys])
    control = s.get("control")
    if control and control.get("metrics"):
        tag = f"MLE control ({fmt(control['kimg'])} kimg)"
        rows.append([tag, fmt(control["selected_kimg"])] + [fmt(control["metrics"].get(k, float("nan"))) for k in keys])
    text = _grid(["model", "best@kimg"] + keys, rows)
    rep = s.get("report")
    if rep:
        keys = [k for k in rep["models"][0]["metrics"]]
        rows = [
            [m["model"]] + [f"{fmt(m['metrics'][k]['mean'])} ± {fmt(m['metrics'][k]['std'])}" for k in keys]
            for m in rep["models"]
        ]
        text += f"\n\nreport: mean ± std over {rep['seed_sets']} seed sets disjoint from the selection seeds\n"
        text += _grid(["model"] + keys, rows)
        for c in s.get("claims", []):
            said = [
                f"not decided against the {o} (margin {fmt(c[f'vs_{o}']['margin'])}; no spread over the seed "
                "sets: an exact metric, compare training seeds)"
                if c[f"vs_{o}"].get("no_spread")
                else f"{'better' if c[f'better_than_{o}'] else 'not shown better'} than the {o} "
                f"(margin {fmt(c[f'vs_{o}']['margin'])}, 2 std {fmt(c[f'vs_{o}']['two_std'])})"
                for o in ("reference", "control")
                if f"better_than_{o}" in c
            ]
            text += f"\n{c['model']}: " + "; ".join(said)
    return text


def _grid(header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: list) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_summary(path: str, s: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(s, indent=2))


def write_curve(
    dirs: list[str],
    evaluations: list[dict[str, Any]],
    promotions: list[dict[str, Any]],
    monitor: str,
    control: list[dict[str, Any]] | None = None,
) -> None:
    """``curve.png`` in each of ``dirs``: ``monitor`` against kimg, one segment per round, promoted
    evaluations circled; the MLE control (``control``: its evaluations) dashed, on the same axis of real
    images from the run's start. Nothing without evaluations."""
    if not evaluations:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    promoted = {
        (h["round"], h.get("candidate") or 0, h["promoted_kimg_in_round"]) for h in promotions if h.get("improved")
    }
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for r in sorted({h["round"] for h in evaluations}):
        pts = [h for h in evaluations if h["round"] == r]
        ax.plot([h["kimg"] for h in pts], [h["metrics"][monitor] for h in pts], "o-", ms=3, label=f"round {r + 1}")
        best = [h for h in pts if (r, h.get("candidate", 0), h["kimg_in_round"]) in promoted]
        if best:
            ax.plot([best[-1]["kimg"]], [best[-1]["metrics"][monitor]], "o", ms=10, mfc="none", mec="k")
    if control:
        x0 = evaluations[0]["kimg"]  # the control from the run's start: same real images, same x
        ax.plot(
            [x0 + h["kimg_in_control"] for h in control],
            [h["metrics"][monitor] for h in control],
            "s--",
            ms=3,
            color="0.4",
            label="MLE control",
        )
    ax.set_xlabel("kimg (real images seen, DDO)")
    _save_figure(
        plt, fig, ax, monitor, f"{monitor} per evaluation; circled: promoted to reference", 8, dirs, "curve.png"
    )


def _save_figure(
    plt: Any, fig: Any, ax: Any, ylabel: str, title: str, fontsize: int, dirs: list[str], name: str
) -> None:
    """Finish a curve figure (labels, legend, grid) and write it as ``name`` in each of ``dirs``, atomically."""
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=fontsize)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        for d in dirs:
            with atomic_path(os.path.join(d, name), suffix=".png") as tmp:
                fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def write_candidate_curves(
    dirs: list[str],
    evaluations: list[dict[str, Any]],
    promotions: list[dict[str, Any]],
    monitor: str,
    labels: list[str],
) -> None:
    """``candidates-round-N.png`` per round with evaluations, in each of ``dirs``: ``monitor`` against kimg
    in the candidate, one line per candidate (each from the round's reference at 0 kimg, when it was
    evaluated), the promoted evaluation circled."""
    if not evaluations:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    promoted = {(h["round"], h.get("candidate"), h["promoted_kimg_in_round"]) for h in promotions if h.get("improved")}
    for r in sorted({h["round"] for h in evaluations}):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        start = [h for h in evaluations if h["round"] == r and h["kimg_in_round"] == 0]
        for i, label in enumerate(labels):
            pts = [h for h in evaluations if h["round"] == r and h.get("candidate", 0) == i and h["kimg_in_round"] > 0]
            if not pts:
                continue
            pts = start[:1] + pts
            ax.plot([h["kimg_in_round"] for h in pts], [h["metrics"][monitor] for h in pts], "o-", ms=3, label=label)
            best = [h for h in pts if (r, i, h["kimg_in_round"]) in promoted and h["kimg_in_round"] > 0]
            if best:
                ax.plot([best[-1]["kimg_in_round"]], [best[-1]["metrics"][monitor]], "o", ms=10, mfc="none", mec="k")
        ax.set_xlabel("kimg in the candidate (real images seen)")
        title = f"round {r + 1}: {monitor} per candidate; circled: promoted"
        _save_figure(plt, fig, ax, monitor, title, 7, dirs, f"candidates-round-{r + 1}.png")
