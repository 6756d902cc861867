"""Make a demo's shipped MLE reference: pretrain with a preset, check that it reached a plateau, and write
its EMA weights as a small file that ``model.init_from`` loads with ``torch.load(weights_only=True)``.

    PYTHONPATH=src python scripts/make_reference.py --config configs/toy2d_pretrain.yaml \\
        --out references/toy2d_ring8.pt --monitor mmd --mode min

What it does:

1. ``ddo fit --config CONFIG --run_dir RUN_DIR [EXTRA ...]`` (in this process). The preset fixes the seed
   (``seed_everything``), the data, the network and the number of steps. A run directory that already holds
   the finished run is resumed, which trains nothing.
2. Reads the run's evaluation curve of the monitored metric from ``RUN_DIR/logs/metrics.csv``.
3. The plateau rule: the best value over the last quarter of the steps improves on the best value before it
   by less than 2% (relative). A curve that fails it is refused (exit 1, nothing written) unless
   ``--allow-unconverged``.
4. Writes ``OUT``: ``{"state_dict": the EMA weights, fp32}`` plus the curve, the rule's numbers and the
   command, tensors and plain values only; at most 5 MB (refused above). ``OUT`` with ``.json``: the same
   record without the weights and with the file's sha256; ``--figure``: the curve with the last quarter
   shaded.

Nothing is downloaded. Every demo's reference is made by one such command (docs/demos.md lists them;
``make references`` runs them all).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Sequence

import torch

MAX_BYTES = 5 * 1024 * 1024
LAST_FRACTION = 0.25
TOLERANCE = 0.02
EMA_PREFIX = "ema.model."


def read_curve(metrics_csv: str, monitor: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of ``val/<monitor>`` in a run's ``logs/metrics.csv``, in step order (the step
    is 1-based: the number of optimizer steps done when the evaluation ran)."""
    if not os.path.isfile(metrics_csv):
        raise FileNotFoundError(f"no metrics log at {metrics_csv}: did the pretraining run evaluate?")
    key = f"val/{monitor}"
    out: dict[int, float] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                out[int(row["step"]) + 1] = float(row[key])
    if not out:
        raise ValueError(f"{metrics_csv} has no '{key}' column values: is '{monitor}' a metric of the evaluator?")
    return sorted(out.items())


def plateau(curve: list[tuple[int, float]], total_steps: int, mode: str) -> dict[str, float | bool | int]:
    """The plateau rule on ``curve`` (``[(step, value)]``) of a ``total_steps`` run: ``before`` is the best
    value of the evaluations at or before 75% of the steps, ``last`` the best after; ``improvement`` is
    (before − last)/|before| for ``mode="min"`` (the sign flipped for ``"max"``); ``converged`` when it is
    below 2%. Both parts need at least one evaluation."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    cut = total_steps * (1 - LAST_FRACTION)
    early = [v for s, v in curve if s <= cut]
    late = [v for s, v in curve if s > cut]
    if not early or not late:
        raise ValueError(
            f"the plateau rule needs evaluations before and after step {cut:g} of {total_steps}; "
            f"got steps {[s for s, _ in curve]}: evaluate more often (trainer.val_check_interval)"
        )
    best = min if mode == "min" else max
    before, last = best(early), best(late)
    sign = 1.0 if mode == "min" else -1.0
    improvement = sign * (before - last) / abs(before) if before != 0 else (0.0 if last == before else math.inf)
    return {
        "before": before,
        "last": last,
        "improvement": improvement,
        "converged": improvement < TOLERANCE,
        "cut_step": int(cut),
        "tolerance": TOLERANCE,
    }


def ema_weights(ckpt_path: str) -> dict[str, torch.Tensor]:
    """The EMA network's weights of an MLE run's Lightning checkpoint, fp32 (read with weights_only=True)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state = {k[len(EMA_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(EMA_PREFIX)}
    if not state:
        raise ValueError(f"{ckpt_path} has no EMA weights (keys starting with {EMA_PREFIX!r}): not an MLE run?")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def write_figure(
    path: str,
    curve: list[tuple[int, float]],
    rule: dict,
    monitor: str,
    title: str,
    lr_steps: Sequence[float] = (),
    lr_gamma: float = 1.0,
) -> None:
    """The curve, the last quarter shaded, both bests as lines; ``lr_steps``: where the learning rate was
    multiplied by ``lr_gamma`` (MLEModule's ``lr_milestones_kimg``, in steps), as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    steps, values = zip(*curve, strict=True)
    ax.plot(steps, values, "o-", ms=3)
    ax.axvspan(rule["cut_step"], max(steps), color="0.9", zorder=0, label="last quarter")
    ax.axhline(rule["before"], color="C1", lw=0.8, ls="--", label=f"best before: {rule['before']:.4g}")
    ax.axhline(rule["last"], color="C2", lw=0.8, ls=":", label=f"best in last quarter: {rule['last']:.4g}")
    for i, step in enumerate(lr_steps):
        ax.axvline(step, color="0.5", lw=0.8, ls="-.", label=f"lr ×{lr_gamma:g}" if i == 0 else None)
    if all(v > 0 for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel(monitor)
    verdict = "plateau" if rule["converged"] else "not converged"
    ax.set_title(f"{title}: {verdict} (last quarter {100 * rule['improvement']:+.1f}%)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_reference.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the pretraining preset (an MLE run)")
    p.add_argument("--out", required=True, help="the reference file to write (.pt)")
    p.add_argument("--run_dir", help="the pretraining run directory (default: outputs/<config name>)")
    p.add_argument("--monitor", required=True, help="the evaluator's metric the plateau rule reads")
    p.add_argument("--mode", choices=("min", "max"), required=True, help="whether lower or higher is better")
    p.add_argument("--figure", help="write the pretraining curve here (.png)")
    p.add_argument("--allow-unconverged", action="store_true", help="write the file even off a plateau")
    p.add_argument("extra", nargs="*", help="more `ddo fit` arguments (after --), e.g. --trainer.max_steps 200")
    a = p.parse_args(argv)
    if not a.out.endswith(".pt"):
        p.error(f"--out must end with .pt, got {a.out}")
    run_dir = a.run_dir or os.path.join("outputs", os.path.splitext(os.path.basename(a.config))[0])
    fit_args = ["fit", "--config", a.config, "--run_dir", run_dir, *a.extra]

    from ddo_lightning.cli import run

    cli = run(fit_args)
    total = int(cli.trainer.max_steps)
    curve = read_curve(os.path.join(run_dir, "logs", "metrics.csv"), a.monitor)
    rule = plateau(curve, total, a.mode)
    print(
        f"[reference] {a.monitor}: best {rule['before']:.5g} up to step {rule['cut_step']}, "
        f"{rule['last']:.5g} after ({100 * rule['improvement']:+.2f}%, rule: < {100 * TOLERANCE:g}%)"
    )
    if a.figure:
        batch = cli.datamodule.global_batch_size
        lr_steps = [m * 1000 / batch for m in getattr(cli.model, "lr_milestones_kimg", [])]
        lr_gamma = getattr(cli.model, "lr_gamma", 1.0)
        write_figure(a.figure, curve, rule, a.monitor, os.path.basename(a.out), lr_steps, lr_gamma)
    if not rule["converged"] and not a.allow_unconverged:
        print("[reference] not on a plateau: nothing written (train longer, or --allow-unconverged)", file=sys.stderr)
        return 1
    record = {
        "config": a.config,
        "command": " ".join(["ddo", "fit", "--config", a.config, *a.extra]),  # the run directory changes nothing
        "steps": total,
        "monitor": a.monitor,
        "mode": a.mode,
        "curve": [[s, v] for s, v in curve],
        "plateau": rule,
    }
    from ddo_lightning.files import atomic_torch_save
    from ddo_lightning.metrics.fid import sha256_file

    atomic_torch_save({"state_dict": ema_weights(os.path.join(run_dir, "checkpoints", "last.ckpt")), **record}, a.out)
    size = os.path.getsize(a.out)
    if size > MAX_BYTES:
        os.remove(a.out)
        print(f"[reference] {a.out} would be {size / 2**20:.1f} MB, over the 5 MB limit: removed", file=sys.stderr)
        return 1
    torch.load(a.out, map_location="cpu", weights_only=True)  # the file loads as init_from loads it
    with open(a.out[: -len(".pt")] + ".json", "w") as f:
        json.dump({**record, "file": os.path.basename(a.out), "bytes": size, "sha256": sha256_file(a.out)}, f, indent=1)
        f.write("\n")
    print(f"[reference] wrote {a.out} ({size / 1024:.0f} KB) and its .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
