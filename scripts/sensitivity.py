"""α and β sensitivity of one DDO round: the monitored metric against α (β fixed) and against β (α fixed),
the shape of the DDO paper's ablation, from one preset's reference.

    PYTHONPATH=src python scripts/sensitivity.py --config configs/toy2d.yaml --out docs/sensitivity_toy2d \\
        --alphas 0.5 1 2 4 8 --betas 0.01 0.03 0.1 0.3 1 --kimg 128 --seeds 0 1 2

Each seed is one ``ddo fit`` of the preset (its reference, lr, data, evaluator and schedule) with one round
whose per-round search tries every point: ``{alpha: a, beta: BETA0}`` for each ``a`` and ``{alpha: ALPHA0,
beta: b}`` for each ``b`` (``--alpha0``/``--beta0``, default 1), each for ``--kimg`` real images from the
same reference, the same fakes and the same evaluations (``SelfPlay(candidates=...)``, docs/search.md). The
seed sets ``seed_everything`` and the module's evaluation seed, so seeds differ in training noise, data order
and evaluation samples. No MLE control, no report seed sets: the figure compares candidates with each other.

Per point and seed it reads, from the run's ``summary.json``, the best evaluation after the start (what the
search would promote among trained checkpoints) and the last one (the end of the budget). Writes
``OUT.json`` (every value, per seed, and mean ± std over seeds) and ``OUT.png`` (two panels, mean ± std; the
reference's value at the start as a dashed line). Runs go to ``--run_root`` (one run directory per seed; a
finished one is resumed, which trains nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def points(alphas: list[float], betas: list[float], alpha0: float, beta0: float) -> list[dict[str, float]]:
    """The candidates: the α sweep at β = beta0, then the β sweep at α = alpha0, without repeating
    (alpha0, beta0)."""
    out = [{"model.objective.alpha": a, "model.objective.beta": beta0} for a in alphas]
    out += [
        {"model.objective.alpha": alpha0, "model.objective.beta": b}
        for b in betas
        if b != beta0 or alpha0 not in alphas
    ]
    return out


def read_run(summary_path: str) -> tuple[str, str, float, list[dict[str, float]]]:
    """(monitor, mode, the reference's value, per candidate {best, last}) from a one-round search's
    summary.json."""
    with open(summary_path) as f:
        s = json.load(f)
    monitor = s["monitor"]
    (rnd,) = s["rounds"]
    per = []
    for c in rnd["candidates"]:
        trained = [e[monitor] for e in c["curve"] if e["kimg_in_round"] > 0]
        best = min(trained) if s["mode"] == "min" else max(trained)
        per.append({"best": best, "last": trained[-1]})
    return monitor, s["mode"], float(s["reference"][monitor]), per


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def figure(path: str, table: list[dict], ref: dict[str, float], monitor: str, mode: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.2), sharey=True)
    for ax, (key, other) in zip(axes, (("alpha", "beta"), ("beta", "alpha")), strict=True):
        rows = [r for r in table if r["sweep"] == key]
        xs = [r[key] for r in rows]
        for which, style in (("best", "o-"), ("last", "s--")):
            ys = [r[which]["mean"] for r in rows]
            es = [r[which]["std"] for r in rows]
            ax.errorbar(xs, ys, yerr=es, fmt=style, ms=4, capsize=3, label=f"{which} evaluation")
        ax.axhline(ref["mean"], color="0.4", ls=":", lw=1, label="reference")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(f"{'α' if key == 'alpha' else 'β'} ({'β' if other == 'beta' else 'α'} = {rows[0][other]:g})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{monitor} ({'lower' if mode == 'min' else 'higher'} is better)")
    if all(r[w]["mean"] > 0 for r in table for w in ("best", "last")) and ref["mean"] > 0:
        axes[0].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sensitivity.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a DDO preset (its reference, lr, evaluator, schedule)")
    p.add_argument("--out", required=True, help="output prefix: OUT.json and OUT.png")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1, 2, 4, 8])
    p.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1])
    p.add_argument("--alpha0", type=float, default=1.0, help="α of the β sweep")
    p.add_argument("--beta0", type=float, default=1.0, help="β of the α sweep")
    p.add_argument("--kimg", type=float, required=True, help="real images (thousands) per point")
    p.add_argument("--eval_every_kimg", type=float, help="default: kimg / 4")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--run_root", default="outputs/sensitivity", help="run directories: RUN_ROOT/<config>-seed<s>")
    p.add_argument("extra", nargs="*", help="more `ddo fit` arguments (after --)")
    a = p.parse_args(argv)
    cands = points(a.alphas, a.betas, a.alpha0, a.beta0)
    name = os.path.splitext(os.path.basename(a.config))[0]
    runs = {}
    for seed in a.seeds:
        run_dir = os.path.join(a.run_root, f"{name}-seed{seed}")
        cmd = [
            sys.executable, "-m", "ddo_lightning.cli", "fit", "--config", a.config, "--run_dir", run_dir,
            "--seed_everything", str(seed), "--model.init_args.seed", str(seed),
            "--selfplay.rounds", "1", "--selfplay.kimg_per_round", str(a.kimg),
            "--selfplay.eval_every_kimg", str(a.eval_every_kimg or a.kimg / 4),
            "--selfplay.control", "false", "--selfplay.report_seed_sets", "0",
            "--selfplay.candidates", json.dumps(cands), *a.extra,
        ]  # fmt: skip
        print("[sensitivity]", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
        runs[seed] = read_run(os.path.join(run_dir, "summary.json"))
    monitor, mode = runs[a.seeds[0]][:2]
    table = []
    for i, c in enumerate(cands):
        alpha, beta = c["model.objective.alpha"], c["model.objective.beta"]
        sweeps = (["alpha"] if beta == a.beta0 else []) + (["beta"] if alpha == a.alpha0 else [])
        for sweep in sweeps:
            table.append(
                {
                    "sweep": sweep,
                    "alpha": alpha,
                    "beta": beta,
                    "best": mean_std([runs[s][3][i]["best"] for s in a.seeds]),
                    "last": mean_std([runs[s][3][i]["last"] for s in a.seeds]),
                    "per_seed": {str(s): runs[s][3][i] for s in a.seeds},
                }
            )
    table.sort(key=lambda r: (r["sweep"], r[r["sweep"]]))
    ref = mean_std([runs[s][2] for s in a.seeds])
    record = {"config": a.config, "monitor": monitor, "mode": mode, "kimg": a.kimg, "seeds": a.seeds, "reference": ref}
    with open(a.out + ".json", "w") as f:
        json.dump({**record, "points": table}, f, indent=1)
        f.write("\n")
    over = f"mean ± std over {len(a.seeds)} seeds" if len(a.seeds) > 1 else "one seed"
    title = f"{name}: one round of {a.kimg:g} kimg per point, {over}"
    figure(a.out + ".png", table, ref, monitor, mode, title)
    print(f"{'sweep':<6} {'alpha':>6} {'beta':>6} {'best':>22} {'last':>22}")
    for r in table:
        b, last = r["best"], r["last"]
        print(
            f"{r['sweep']:<6} {r['alpha']:>6g} {r['beta']:>6g} {b['mean']:>12.5g} ± {b['std']:<7.2g} "
            f"{last['mean']:>12.5g} ± {last['std']:<7.2g}"
        )
    print(f"reference {ref['mean']:.5g} ± {ref['std']:.2g}; wrote {a.out}.json and {a.out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
