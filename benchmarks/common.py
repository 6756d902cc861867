"""What every benchmark shares: machine facts, interleaved timing, ratio statistics, the result table
and its JSON.

Every figure is a RATIO of two (or more) things measured side by side in one process, interleaved
(A B A B … after a warm-up of each), so that a machine shared with other jobs slows both sides alike.
A ratio is formed per repeat (A_i / B_i) and reported as min / median / max over the repeats; the
verdict (met / missed) uses the median. Times are the process's CPU time (user + system) when torch
runs one thread (the default), wall time otherwise (see :func:`default_clock`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository (where ``-m benchmarks.X`` runs)
RESULTS = ROOT / "benchmarks" / "results"


# ---- machine ----------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": ram_gib(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "clock": default_clock(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
    }


# ---- statistics -------------------------------------------------------------------------------------
def summary(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-repeat ratios num[i] / den[i] (the two were measured next to each other); NaN where den is 0."""
    return [a / b if b else float("nan") for a, b in zip(num, den)]


def medians(values: dict[str, Sequence[float]]) -> dict[str, float]:
    """The median of each entry (e.g. of ``interleaved``'s seconds per function)."""
    return {k: summary(v)["median"] for k, v in values.items()}


def default_clock() -> str:
    """'cpu' (this process's CPU time, user + system) when torch runs one thread, else 'wall'.

    On a machine shared with other jobs, wall time counts the moments this process waits for a core;
    its CPU time does not, so with one thread CPU-time ratios are far steadier (page faults and other
    kernel work done for the process still count, as system time)."""
    return "cpu" if torch.get_num_threads() == 1 else "wall"


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, reps_per_sample: int = 1, clock: str | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured A B C C B A … ``repeats`` times after ``warmup``
    calls of each (also interleaved). With ``reps_per_sample`` > 1 each sample is the mean of that
    many back-to-back calls (for very short functions). ``clock``: 'cpu' or 'wall' (default:
    :func:`default_clock`)."""
    now = CLOCKS[clock or default_clock()]
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        # A B C, then C B A, …: no function always runs right after the same other one or first
        for name, fn in list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]:
            t0 = now()
            for _ in range(reps_per_sample):
                fn()
            times[name].append((now() - t0) / reps_per_sample)
    return times


# ---- figures and results ----------------------------------------------------------------------------
@dataclass
class Figure:
    """One reported number: ``values`` (one per repeat), a target ``op`` ('<=' or '>=') and ``target``
    (None: reported for information only). ``met`` compares the median with the target."""

    name: str
    values: list[float]
    unit: str = "x"
    target: float | None = None
    op: str = "<="
    note: str = ""
    stats: dict[str, float] = field(init=False)
    met: bool | None = field(init=False)

    def __post_init__(self) -> None:
        self.values = [float(v) for v in self.values]
        self.stats = summary(self.values)
        if self.target is None:
            self.met = None
        else:
            med = self.stats["median"]
            self.met = bool(med <= self.target) if self.op == "<=" else bool(med >= self.target)

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            min=self.stats["min"],
            median=self.stats["median"],
            max=self.stats["max"],
            n=self.stats["n"],
            finite=all(math.isfinite(v) for v in self.values),
        )
        return d


def ratio_figure(
    name: str,
    values: dict[str, Sequence[float]],
    num: str,
    den: str,
    target: float | None = None,
    op: str = "<=",
    note: str = "",
) -> Figure:
    """The figure ``name`` (unit x): the per-repeat ratios ``values[num] / values[den]``."""
    return Figure(name, ratios(values[num], values[den]), "x", target, op, note)


def fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{v:.3g}"
    return f"{v:.3f}" if a < 10 else f"{v:.1f}"


def target_text(f: Figure) -> str:
    return "—" if f.target is None else f"{f.op} {fmt(f.target)}"


def met_text(f: Figure) -> str:
    return "—" if f.met is None else ("yes" if f.met else "**no**")


def table(figures: Sequence[Figure]) -> str:
    lines = ["| figure | unit | min | median | max | n | target | met |", "|---|---|---|---|---|---|---|---|"]
    for f in figures:
        s = f.stats
        lines.append(
            f"| {f.name} | {f.unit} | {fmt(s['min'])} | {fmt(s['median'])} | {fmt(s['max'])} | {s['n']} | "
            f"{target_text(f)} | {met_text(f)} |"
        )
    return "\n".join(lines)


def write_result(
    name: str,
    settings: dict[str, Any],
    figures: Sequence[Figure],
    extra: dict[str, Any] | None = None,
    out_dir: pathlib.Path | str | None = None,
    started: float | None = None,
) -> pathlib.Path:
    """Print the table and write ``<out_dir>/<name>.json`` (default benchmarks/results/)."""
    out = pathlib.Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "name": name,
        "machine": machine_info(),
        "settings": settings,
        "figures": [f.row() for f in figures],
        "extra": extra or {},
        "wall_seconds": None if started is None else round(time.perf_counter() - started, 1),
        "command": " ".join([os.path.basename(sys.executable), "-m", f"benchmarks.{name}", *sys.argv[1:]]),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\n## {name}\n")
    print(table(figures))
    for f in figures:
        if f.note:
            print(f"- {f.name}: {f.note}")
    print(f"\n[{name}] wrote {path} ({result['wall_seconds']} s)")
    return path


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test, seconds)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats after warm-up")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core machine a second OpenMP thread "
        "competing with another job's threads made a small UNet step ~200x slower)",
    )
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--presets", default=None, help="comma-separated presets (toy2d, digits, cifar)")
    return p


def child_command(name: str, role: Sequence[str], presets: str, steps: int, threads: int, quick: bool) -> list[str]:
    """The command line (run from ``ROOT``) that reruns ``benchmarks.<name>`` as a child process with the
    flags ``role`` (e.g. ``["--worker"]``) and these settings."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *role, "--presets", presets]
    return cmd + ["--steps", str(steps), "--threads", str(threads)] + (["--quick"] if quick else [])


def setup_threads(threads: int | None) -> int:
    n = threads or 1
    torch.set_num_threads(n)
    return n
