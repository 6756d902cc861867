"""``ddo slurm --sweep``: DDO's per-round search as SLURM jobs, one job array per round and a promotion job.

    ddo slurm --config configs/edm_cifar10.yaml --nodes 2 --gpus-per-node 8 --cpus-per-task 8 \\
        --time 1-00:00:00 --job-name cifar-search --output-dir runs/cifar-search/logs \\
        --run-dir runs/cifar-search --rounds 2 \\
        --sweep model.objective.alpha=2,4,8 --sweep model.objective.beta=0.02,0.05

The grid (``training.search``: every combination of the ``--sweep`` axes) is the round's candidates. Round R
is a job array of one task per candidate; each task is the multi-node ``ddo fit`` job of a plain
``ddo slurm`` (same nodes, tasks, srun, requeue and resume rule) that trains one SelfPlay round of its
candidate from the round's reference in ``RUN/round-R/<label>``. A promotion job (``ddo promote``,
:mod:`.promote`) runs when every task of the array has ended (``afterany``) and writes
``RUN/rounds/round-R.pt``, which round R+1's array starts from (``afterok`` on that promotion, with
``--kill-on-invalid-dep=yes``: a failed promotion cancels the rest of the chain). The whole chain is
submitted at once; the scripts hold placeholders ``<round-R-array>``/``<round-R-promotion>`` in their
``--dependency`` lines, replaced by the job ids at submission. ``--dry-run`` prints every script.

Rounds already promoted (``RUN/rounds/round-R.json`` and ``round-R.pt``) are not submitted again: a rerun
continues from the last completed round. docs/slurm.md has the whole story.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .promote import CANDIDATE_FILE, completed_rounds, reference_file, round_dir
from .slurm import (
    _RESUME_VAR,
    _check_positive,
    _check_time,
    _sbatch_path,
    account_lines,
    check_job_flags,
    devices_text,
    extra_lines,
    fit_command,
    fit_command_args,
    resource_lines,
    resume_lines,
    srun_line,
)

# `ddo fit` options that the sweep sets for every task (given after `--` they would contradict it)
_SET_BY_SWEEP = {
    "--run_dir": "--run-dir",
    "--selfplay.rounds": "--rounds",
    "--selfplay.start_round": "--rounds (and the run directory's completed rounds)",
    "--selfplay.candidates": "--sweep",
}
_CAND_DIR, _CANDIDATE = "$CAND_DIR", "$CANDIDATE"
_PLACEHOLDER = re.compile(r"<round-(\d+)-(array|promotion)>")


@dataclass(frozen=True)
class Script:
    """One sbatch script of the chain: ``name`` (``round-R-array`` or ``round-R-promotion``, also its
    placeholder ``<name>`` in later scripts' dependencies) and its text."""

    name: str
    text: str


def _search():
    """training.search, imported when needed: importing the training package loads Lightning, which
    ``ddo slurm --help`` and a plain job do not need."""
    from ..training import search

    return search


def placeholder(round_number: int, kind: str) -> str:
    return f"<round-{round_number}-{kind}>"


def sweep_candidates(specs: Sequence[str], allow_large: bool = False) -> list[dict[str, float]]:
    """The candidates of ``--sweep KEY=v1,v2 ...`` (the grid, checked): :class:`SearchError` naming the
    problem for an empty grid, an unknown or non-round key, a value that is not a number, a grid larger than
    ``MAX_CANDIDATES`` without ``allow_large``, or two candidates with the same directory label."""
    search = _search()
    grid = search.expand_grid(search.parse_sweep(list(specs)))
    candidates = search.check_candidates(grid, allow_large=allow_large)
    labels: dict[str, dict[str, float]] = {}
    for c in candidates:
        label = search.candidate_label(c)
        if label in labels:
            raise search.SearchError(
                f"candidates {labels[label]} and {c} share the label {label!r} (values equal to 6 significant "
                "digits): they would train in the same directory; give values that differ visibly"
            )
        labels[label] = c
    return candidates


def _check_sweep_fit_args(fit_args: Sequence[str]) -> None:
    for arg in fit_args:
        key = arg.split("=")[0] if isinstance(arg, str) else arg
        if key in _SET_BY_SWEEP:
            raise ValueError(
                f"fit argument {arg!r}: ddo slurm --sweep sets it for every task (use {_SET_BY_SWEEP[key]})"
            )


def task_fit_args(fit_args: Sequence[str], round_number: int, reference: str | None) -> list[str]:
    """The ``ddo fit`` arguments a round's task adds after the user's: its run directory, the round's
    reference (``None``: the config's ``init_from``, round 1), the one round it plays, its candidate."""
    args = list(fit_args) + ["--run_dir", _CAND_DIR]
    if reference is not None:
        args += ["--model.init_args.init_from", reference]
    return args + [
        "--selfplay.start_round",
        str(round_number),
        "--selfplay.rounds",
        str(round_number),
        "--selfplay.candidates",
        f"[{_CANDIDATE}]",
    ]


def render_sweep(
    configs: Sequence[str],
    *,
    candidates: Sequence[dict[str, float]],
    rounds: int,
    run_dir: str,
    monitor: str,
    mode: str,
    nodes: int,
    cpus_per_task: int,
    time: str,
    job_name: str,
    output_dir: str,
    first_round: int = 1,
    devices: int | None = None,
    gpus_per_node: int | None = None,
    batch_per_device: int | None = None,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    extra_sbatch: Sequence[str] = (),
    requeue_signal: str = "USR1",
    signal_lead_seconds: int = 90,
    python: str = sys.executable,
    fit_args: Sequence[str] = (),
    preemption: bool = True,
    promote_time: str = "00:30:00",
) -> list[Script]:
    """The chain's scripts for rounds ``first_round`` .. ``rounds``: per round a job array (one task per
    candidate) and its promotion job. Round 1 starts from the config's ``init_from``, round R > 1 from
    ``RUN/rounds/round-(R-1).pt``. Raises ``ValueError`` naming a bad value."""
    tasks, time = check_job_flags(
        nodes=nodes,
        cpus_per_task=cpus_per_task,
        time=time,
        job_name=job_name,
        devices=devices,
        gpus_per_node=gpus_per_node,
        requeue_signal=requeue_signal,
        signal_lead_seconds=signal_lead_seconds,
    )
    promote_time = _check_time(promote_time)
    _check_positive("rounds", rounds)
    _check_positive("first_round", first_round)
    if first_round > rounds:
        raise ValueError(f"first_round {first_round} is after the last round {rounds}: nothing to render")
    if mode not in ("min", "max"):
        raise ValueError(f"mode {mode!r}: expected 'min' or 'max'")
    for what, value in (("run_dir", run_dir), ("output_dir", output_dir)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what} {value!r}: expected a directory path")
    search = _search()
    candidates = search.check_candidates(candidates, allow_large=True)  # the size was checked by the caller
    labels = [search.candidate_label(c) for c in candidates]
    _check_sweep_fit_args(fit_args)
    run_name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    kind = devices_text(gpus_per_node, tasks)
    chdir = [line for line in extra_lines(extra_sbatch) if line.removeprefix("#SBATCH").strip().startswith("--chdir")]
    signal = requeue_signal.split(":")[-1].removeprefix("SIG")
    k = len(candidates)
    scripts: list[Script] = []
    for r in range(first_round, rounds + 1):
        reference = reference_file(run_dir, r - 1) if r > 1 else None
        cand_root = round_dir(run_dir, r)
        start = reference or "the config's init_from"
        dependency = (
            [f"#SBATCH --dependency=afterok:{placeholder(r - 1, 'promotion')}", "#SBATCH --kill-on-invalid-dep=yes"]
            if r > first_round
            else []
        )
        task_args = task_fit_args(fit_args, r, reference)
        command = fit_command(python, configs, nodes, tasks, gpus_per_node, task_args, batch_per_device, preemption)
        header = [
            "#!/bin/bash",
            f"# ddo slurm --sweep, round {r} of {rounds}: {k} candidate(s), one array task each. Each task is ddo fit",
            f"# on {nodes} node(s) x {kind}, one task per device"
            + (f", {batch_per_device} samples per device and step;" if batch_per_device else ";"),
            f"# it plays round {r} alone, from {start}, in {cand_root}/<candidate>.",
            "# Written by `ddo slurm --sweep` (ddo_lightning.launch.sweep); `ddo slurm` submits it with the job",
            "# ids of the <...> placeholders filled in.",
            f"# SLURM sends SIG{signal} {signal_lead_seconds} s before the time limit; the Preemption callback then",
            "# checkpoints at the end of the step (resume-<job id>.ckpt in the candidate's directory) and requeues",
            "# the task; the requeued task (same id) resumes from that checkpoint, no other task does.",
        ]
        sbatch = resource_lines(
            job_name=f"{job_name}-r{r}",
            nodes=nodes,
            tasks=tasks,
            gpus_per_node=gpus_per_node,
            cpus_per_task=cpus_per_task,
            time=time,
            log_pattern=os.path.join(output_dir, "%x-%A_%a"),
            requeue_signal=requeue_signal,
            signal_lead_seconds=signal_lead_seconds,
            partition=partition,
            account=account,
            qos=qos,
            extra_sbatch=extra_sbatch,
            array=f"0-{k - 1}",
        )
        case = [
            f"  {i}) LABEL={shlex.quote(label)} CANDIDATE={shlex.quote(json.dumps(c))} ;;"
            for i, (label, c) in enumerate(zip(labels, candidates))
        ]
        body = [
            "set -euo pipefail",
            "",
            "# This task's candidate: its directory name and its overrides of the round's hyper-parameters.",
            ': "${SLURM_ARRAY_TASK_ID:?not running as a SLURM array task: submit this script with sbatch}"',
            'case "$SLURM_ARRAY_TASK_ID" in',
            *case,
            f'  *) echo "array task $SLURM_ARRAY_TASK_ID: round {r} has {k} candidate(s), tasks 0-{k - 1}" >&2; exit 1 ;;',
            "esac",
            f'CAND_DIR={shlex.quote(cand_root)}/"$LABEL"',
            'mkdir -p "$CAND_DIR"',
            f'printf \'%s\\n\' "$CANDIDATE" >"$CAND_DIR/{CANDIDATE_FILE}"',
            "# W&B (when the config logs there): one group per search, one run per round and candidate.",
            f'export WANDB_RUN_GROUP={shlex.quote(run_name)} WANDB_NAME="round-{r}-$LABEL"',
            "",
            *resume_lines('"$CAND_DIR"', preemption),
            "",
            "# One process per task. A failing rank ends the step (the others would wait for it); srun gets",
            "# --cpus-per-task again because srun of Slurm 22.05 does not inherit sbatch's.",
            srun_line(cpus_per_task, command, expanded=(_RESUME_VAR, _CAND_DIR, _CANDIDATE)),
        ]
        scripts.append(Script(f"round-{r}-array", "\n".join(header + sbatch + dependency + [""] + body) + "\n"))

        after = [f"afterany:{placeholder(r, 'array')}"] + (
            [f"afterok:{placeholder(r - 1, 'promotion')}"] if r > first_round else []
        )
        promote = [python, "-m", "ddo_lightning.launch.promote", "--run_dir", run_dir, "--round", str(r)]
        promote += ["--monitor", monitor, "--mode", mode, *labels]
        lines = [
            f"--job-name={job_name}-promote-r{r}",
            "--nodes=1",
            "--ntasks=1",
            "--cpus-per-task=1",
            f"--time={promote_time}",
            f"--output={_sbatch_path(os.path.join(output_dir, '%x-%j.out'))}",
            f"--error={_sbatch_path(os.path.join(output_dir, '%x-%j.err'))}",
            *account_lines(partition, account, qos),
            f"--dependency={','.join(after)}",
            "--kill-on-invalid-dep=yes",
        ]
        text = [
            "#!/bin/bash",
            f"# ddo slurm --sweep, round {r} of {rounds}: promotion, once every task of the round's array has ended",
            f"# (afterany). The best {monitor} ({mode}) over every candidate's evaluations, the reference's own",
            f"# included, becomes {reference_file(run_dir, r)}; failed candidates are skipped, and the job fails",
            "# (cancelling the rounds after it) only when none finished.",
            "# Written by `ddo slurm --sweep` (ddo_lightning.launch.sweep); `ddo slurm` submits it with the job",
            "# ids of the <...> placeholders filled in.",
            *[f"#SBATCH {line}" for line in lines],
            *chdir,
            "",
            "set -euo pipefail",
            "# `ddo promote`, run as its module: it needs neither Lightning nor a GPU",
            " ".join(shlex.quote(str(a)) for a in promote),
        ]
        scripts.append(Script(f"round-{r}-promotion", "\n".join(text) + "\n"))
    return scripts


def fill_placeholders(text: str, job_ids: dict[str, str]) -> str:
    """``text`` with every ``<round-R-array>``/``<round-R-promotion>`` replaced by that job's id."""

    def sub(match: re.Match) -> str:
        name = match.group(0)[1:-1]
        if name not in job_ids:
            raise RuntimeError(f"{match.group(0)}: that job was not submitted before this one")
        return job_ids[name]

    return _PLACEHOLDER.sub(sub, text)


def submit_chain(scripts: Sequence[Script], submit: Callable[[str], str]) -> dict[str, str]:
    """Submit ``scripts`` in order, each with the job ids of the earlier ones filled in; return the ids.
    A refused submission raises ``RuntimeError`` naming the jobs already submitted (to ``scancel``)."""
    ids: dict[str, str] = {}
    for script in scripts:
        try:
            ids[script.name] = submit(fill_placeholders(script.text, ids))
        except RuntimeError as err:
            done = " ".join(ids.values())
            hint = f"; already submitted: {done} (cancel them with `scancel {done}`)" if ids else ""
            raise RuntimeError(f"{script.name}: {err}{hint}") from err
    return ids


def find_selfplay(config: dict[str, Any]) -> dict[str, Any]:
    """The init_args of the SelfPlay callback of a parsed config; :class:`SearchError` when there is none."""
    from ..cli import _is_subclass_path
    from ..training import SelfPlay

    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    for cb in callbacks:
        if isinstance(cb, dict) and _is_subclass_path(cb.get("class_path"), SelfPlay):
            import inspect

            defaults = {
                k: p.default for k, p in inspect.signature(SelfPlay).parameters.items() if p.default is not p.empty
            }
            return {**defaults, **(cb.get("init_args") or {})}
    raise _search().SearchError(
        "--sweep searches the hyper-parameters of each self-play round, but this config has no SelfPlay "
        "callback in trainer.callbacks (an MLE pretraining preset?): use a DDO preset"
    )


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a per-round search: one axis of the candidates' grid (repeat for more axes), e.g. "
        "model.objective.alpha=2,4,8; each round runs as a job array plus a promotion job",
    )
    p.add_argument("--rounds", type=int, help="with --sweep: the number of rounds (default: the config's SelfPlay)")
    p.add_argument(
        "--run-dir", help="with --sweep: the search's run directory (default: outputs/<first config's name>)"
    )
    p.add_argument(
        "--allow-large-grid",
        action="store_true",
        help="with --sweep: allow more candidates than the limit (16, training.search.MAX_CANDIDATES)",
    )
    p.add_argument(
        "--promote-time", default="00:30:00", help="with --sweep: the promotion jobs' time limit (default 00:30:00)"
    )


def check_sweep_flags(ns: argparse.Namespace) -> None:
    """The sweep's flags without ``--sweep`` are refused."""
    if ns.sweep:
        return
    given = [
        flag
        for flag, value in (
            ("--rounds", ns.rounds),
            ("--run-dir", ns.run_dir),
            ("--allow-large-grid", ns.allow_large_grid or None),
            ("--promote-time", None if ns.promote_time == "00:30:00" else ns.promote_time),
        )
        if value is not None
    ]
    if given:
        raise ValueError(f"{', '.join(given)}: only with --sweep (a plain job takes `-- --run_dir DIR`)")


def plan_sweep(ns: argparse.Namespace, fit_args: list[str]) -> tuple[list[Script], list[str]]:
    """Check the search and render its scripts (none when every round is done): (scripts, notes). Raises
    ``ValueError`` (:class:`SearchError`, ``ConfigError``) naming the problem; nothing is written."""
    from ..run_dir import default_run_dir
    from .config_check import dry_build
    from .slurm import check_job_files, job_options, read_configs, split_batch, tasks_per_node

    candidate_label = _search().candidate_label
    candidates = sweep_candidates(ns.sweep, allow_large=ns.allow_large_grid)
    _check_sweep_fit_args(fit_args)
    if ns.rounds is not None:
        _check_positive("rounds", ns.rounds)
    run_dir = ns.run_dir or default_run_dir(ns.config)
    render = dict(job_options(ns, fit_args), candidates=candidates, run_dir=run_dir, promote_time=ns.promote_time)
    render_sweep(ns.config, **render, rounds=ns.rounds or 1, monitor="m", mode="min")  # bad flags first
    config = read_configs(ns.config, fit_args)
    selfplay = find_selfplay(config)
    rounds = ns.rounds or int(selfplay["rounds"])
    monitor, mode = str(selfplay["monitor"]), str(selfplay["mode"])
    tasks = tasks_per_node(ns.devices, ns.gpus_per_node)
    notes = [
        f"search: {len(candidates)} candidate(s) per round ({', '.join(candidate_label(c) for c in candidates)}), "
        f"{rounds} round(s), best {monitor} ({mode}), run directory {run_dir}"
    ]
    done = completed_rounds(run_dir)
    if done >= rounds:
        return [], notes + [
            f"all {rounds} round(s) of {run_dir} are done ({reference_file(run_dir, rounds)}): nothing to submit"
        ]
    first = done + 1
    if done:
        notes.append(f"rounds 1-{done} are done: continuing with round {first} from {reference_file(run_dir, done)}")
    batch = split_batch(config, ns.nodes, tasks, notes)
    scripts = render_sweep(
        ns.config, **render, rounds=rounds, first_round=first, monitor=monitor, mode=mode, batch_per_device=batch
    )
    # exactly what the first task to run will parse, its candidate's values in place of the variables
    cand_dir = os.path.join(round_dir(run_dir, first), candidate_label(candidates[0]))
    args = task_fit_args(fit_args, first, reference_file(run_dir, done) if done else None)
    args = [a.replace(_CAND_DIR, cand_dir).replace(_CANDIDATE, json.dumps(candidates[0])) for a in args]
    # ... and every candidate of the grid checked against the module it builds (keys it has, valid values)
    args += ["--selfplay.candidates", json.dumps(candidates), "--selfplay.allow_large_search", "true"]
    resume = None if ns.no_preemption else os.path.join(cand_dir, "resume-JOBID.ckpt")
    config, built = dry_build(
        ns.config, fit_command_args(ns.nodes, tasks, ns.gpus_per_node is not None, args, batch, resume)
    )
    check_job_files(config, ns)
    return scripts, notes + built


def print_scripts(scripts: Sequence[Script], out=None) -> None:
    """``--dry-run``: every script, each after a line ``# ---- <name> ----``."""
    out = out or sys.stdout
    for i, script in enumerate(scripts):
        out.write(("\n" if i else "") + f"# ---- {script.name} ----\n" + script.text)
