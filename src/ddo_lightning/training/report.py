"""What a run tells the outside world: evaluations to every logger and evaluation listener
(:func:`publish_evaluation`), and a self-play run's ``summary.json``, console table and ``curve.png``,
made from SelfPlay's two record lists:

* evaluations, one per evaluation: ``{"round", "kimg_in_round", "kimg", "metrics"}`` (``round`` 0-based);
* promotions, one per finished round: ``{"round", "promoted_kimg_in_round", "improved", "best_score",
  "weights_changed"}``.

Everything here reads those records; nothing here changes the training.
"""

from __future__ import annotations

import json
import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

from ..files import atomic_path, atomic_write_text
from ..protocols import EvaluationListener

_LAID_OUT: set[tuple[int, str]] = set()  # (W&B logger, prefix) pairs whose metric layout is defined
COST_KEYS = ("num_samples", "eval_seconds", "nfe", "sampler_steps")  # how a number was measured, not a result


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
) -> dict[str, float]:
    """Log ``metrics`` as ``<prefix>/<name>`` with ``<prefix>/kimg`` (and ``round``,
    ``<prefix>/kimg_in_round`` in self-play) at the current step to every logger (unless ``log`` is
    False: the caller logged them itself); then call every callback's ``on_evaluation``. Returns the record."""
    record = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
    record[f"{prefix}/kimg"] = int(pl_module.images_seen) / 1000
    if round_index is not None:
        record["round"] = float(round_index)
        record[f"{prefix}/kimg_in_round"] = float(kimg_in_round or 0.0)
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
) -> dict[str, Any]:
    """The starting reference's metrics and, per finished round, the metrics of the promoted checkpoint (the
    previous one's when nothing beat the round's start) and the round's curve of ``monitor``."""
    out: dict[str, Any] = {"monitor": monitor, "mode": mode, "reference": None, "rounds": []}
    if evaluations:
        out["reference"] = evaluations[0]["metrics"]
    for end in promotions:
        r = end["round"]
        cands = [h for h in evaluations if h["round"] == r and h["kimg_in_round"] == end["promoted_kimg_in_round"]]
        best = cands[-1]["metrics"] if cands and end["improved"] else None
        if best is None:  # carried over: the previous promoted metrics
            best = out["rounds"][-1]["metrics"] if out["rounds"] else out["reference"]
        out["rounds"].append(
            {
                "round": r + 1,
                "improved": end["improved"],
                "weights_changed": end.get("weights_changed", True),
                "promoted_kimg_in_round": end["promoted_kimg_in_round"],
                "metrics": best,
                "curve": [
                    {"kimg_in_round": h["kimg_in_round"], monitor: h["metrics"][monitor]}
                    for h in evaluations
                    if h["round"] == r
                ],
            }
        )
    if warnings:
        out["warnings"] = list(warnings)
    if wall_seconds is not None:
        out["wall_seconds_this_run"] = wall_seconds
    return out


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
        )
        rows.append([tag, fmt(r["promoted_kimg_in_round"])] + [fmt(r["metrics"][k]) for k in keys])
    header = ["model", "best@kimg"] + keys
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: list) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_summary(path: str, s: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(s, indent=2))


def write_curve(
    dirs: list[str], evaluations: list[dict[str, Any]], promotions: list[dict[str, Any]], monitor: str
) -> None:
    """``curve.png`` in each of ``dirs``: ``monitor`` against kimg, one segment per round, promoted
    evaluations circled. Nothing without evaluations."""
    if not evaluations:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    promoted = {(h["round"], h["promoted_kimg_in_round"]) for h in promotions if h.get("improved")}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for r in sorted({h["round"] for h in evaluations}):
        pts = [h for h in evaluations if h["round"] == r]
        ax.plot([h["kimg"] for h in pts], [h["metrics"][monitor] for h in pts], "o-", ms=3, label=f"round {r + 1}")
        best = [h for h in pts if (r, h["kimg_in_round"]) in promoted]
        if best:
            ax.plot([best[-1]["kimg"]], [best[-1]["metrics"][monitor]], "o", ms=10, mfc="none", mec="k")
    ax.set_xlabel("kimg (real images seen, DDO)")
    ax.set_ylabel(monitor)
    ax.set_title(f"{monitor} per evaluation; circled: promoted to reference")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        for d in dirs:
            with atomic_path(os.path.join(d, "curve.png"), suffix=".png") as tmp:
                fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
