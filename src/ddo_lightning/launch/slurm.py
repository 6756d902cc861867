"""``ddo slurm``: an sbatch script that runs ``ddo fit`` with one task per device, and its submission.

    ddo slurm --config configs/edm_cifar10.yaml --nodes 2 --gpus-per-node 4 --cpus-per-task 8 \\
        --time 1-00:00:00 --job-name ddo-cifar --output-dir runs/cifar --partition gpu \\
        -- --trainer.max_steps 200000
    ddo slurm ... --dry-run        # check the config, print the script, submit nothing

``--gpus-per-node N`` asks for ``--gres=gpu:N`` and N tasks per node and runs ``ddo fit`` with
``--trainer.accelerator gpu --trainer.devices N`` (no silent fallback to the CPU); ``--devices N`` is a
CPU job (``--trainer.accelerator cpu``). The script asks for ``--nodes`` x ``--ntasks-per-node`` tasks
(Lightning wants ``--ntasks-per-node``, not ``--ntasks``) and starts them with ``srun``; Lightning's
SLURM environment reads ranks and world size from srun's variables.

The config's ``data.init_args.batch_size`` is the recipe's global batch: the job gets
``--data.init_args.batch_size <global / world size>`` and a batch that does not divide is refused.
Before anything is submitted the config is parsed and built as ``ddo fit`` would (without weights or data,
:mod:`.config_check`) and its input files are checked. SLURM sends ``SIGUSR1`` shortly before the time
limit (``--signal``), on which the ``Preemption`` callback (added by default) writes
``<output-dir>/resume-<job id>.ckpt`` at the end of the step and requeues the job (``--requeue``); the
requeued job (same id, ``SLURM_RESTART_COUNT`` > 0) resumes from it, and no other job does. Logs are
appended (``--open-mode=append``) across restarts. docs/slurm.md has the whole story.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds
_TIME = re.compile(
    r"(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)"
)
_SIGNAL = re.compile(r"(?:[RB]:)?(?:SIG)?[A-Z0-9]+")


def _check_time(time: str) -> str:
    match = _TIME.fullmatch(time.strip()) if isinstance(time, str) else None
    if not match:
        raise ValueError(f"time {time!r}: expected minutes, HH:MM:SS or D-HH:MM:SS (sbatch --time)")
    g = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "d" in g:
        parts = {"hours": g["dh"], "minutes": g.get("dm", 0), "seconds": g.get("ds", 0)}
        limits = {"hours": 23, "minutes": 59, "seconds": 59}
    elif "c" in g:
        parts = {"minutes": g["b"], "seconds": g["c"]}
        limits = {"minutes": 59, "seconds": 59}
    elif "b" in g:
        parts = {"seconds": g["b"]}
        limits = {"seconds": 59}
    else:
        parts, limits = {}, {}
    for name, value in parts.items():
        if value > limits[name]:
            raise ValueError(f"time {time!r}: {name} {value} out of range (0-{limits[name]})")
    if not any(g.values()):
        raise ValueError(f"time {time!r}: the time limit must be positive")
    return time.strip()


def _check_word(what: str, value: str) -> str:
    """A value for an ``#SBATCH`` line: sbatch splits those lines on whitespace."""
    if not isinstance(value, str) or not value or re.search(r"[\s\"']", value):
        raise ValueError(f"{what} {value!r}: must be non-empty, without spaces or quotes")
    return value


def _check_positive(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} {value!r}: must be an integer >= 1")
    return value


def _sbatch_path(path: str) -> str:
    """A path on an ``#SBATCH`` line: sbatch honours double quotes there, not shell quoting."""
    if '"' in path or "\n" in path:
        raise ValueError(f"output_dir {path!r}: must not contain double quotes or newlines")
    return f'"{path}"' if re.search(r"\s", path) else path


# Options of `ddo fit` that `ddo slurm` sets from the allocation; a different value would contradict it.
_SET_BY_SLURM = ("--trainer.accelerator", "--trainer.devices", "--trainer.num_nodes")
# sbatch options that ask for GPUs: `--gpus-per-node` writes them itself.
_GPU_REQUEST = re.compile(r"^(?:#SBATCH\s+)?(?:--gres=\S*gpu|--gpus|--gpus-per-node|--gpus-per-task|-G\b)")


def tasks_per_node(devices: int | None, gpus_per_node: int | None) -> int:
    """Tasks per node: one per GPU (``gpus_per_node``) or ``devices`` CPU processes; both given must agree."""
    if gpus_per_node is None and devices is None:
        raise ValueError("give --gpus-per-node N (a GPU job) or --devices N (a CPU job)")
    if gpus_per_node is not None:
        _check_positive("gpus_per_node", gpus_per_node)
        if devices is not None and devices != gpus_per_node:
            raise ValueError(
                f"devices {devices!r} and gpus_per_node {gpus_per_node!r} disagree: a GPU job runs one "
                "task per GPU; give --gpus-per-node alone"
            )
        return gpus_per_node
    return _check_positive("devices", devices)


def per_device_batch(global_batch: int, nodes: int, tasks: int) -> int:
    """``global_batch`` split over ``nodes`` x ``tasks`` ranks; refused (``ValueError``) when it does not divide:
    a rounded batch would silently change the recipe (learning rate, kimg per step, pool rounds)."""
    world = nodes * tasks
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"data.init_args.batch_size {global_batch!r}: expected the global batch, an integer >= 1")
    if global_batch % world:
        divisors = [w for w in range(1, global_batch + 1) if global_batch % w == 0]
        near = sorted({max(w for w in divisors if w < world), min((w for w in divisors if w > world), default=1)})
        raise ValueError(
            f"global batch {global_batch} does not split over {world} ranks ({nodes} node(s) x {tasks} "
            f"task(s)): choose a world size that divides it (e.g. {' or '.join(map(str, near))}) "
            "or set --data.init_args.batch_size to a multiple of the world size"
        )
    return global_batch // world


_RESUME_VAR = "$RESUME"


def fit_command_args(
    nodes: int, tasks: int, gpu: bool, fit_args: Sequence[str], batch_per_device: int | None, resume_path: str | None
) -> list[str]:
    """The ``ddo fit`` arguments after the ``--config`` files: the allocation (accelerator, nodes, devices),
    the Preemption callback writing ``resume_path`` (None: no callback), the user's ``fit_args``, and the
    per-device batch last, so that it wins over a batch size in ``fit_args`` (which is the global one)."""
    args = [
        "--trainer.accelerator",
        "gpu" if gpu else "cpu",
        "--trainer.num_nodes",
        str(nodes),
        "--trainer.devices",
        str(tasks),
    ]
    if resume_path is not None:
        args += ["--trainer.callbacks+=ddo_lightning.training.Preemption", f"--trainer.callbacks.path={resume_path}"]
    args += list(fit_args)
    if batch_per_device is not None:
        args += ["--data.init_args.batch_size", str(batch_per_device)]
    return args


def resource_lines(
    *,
    job_name: str,
    nodes: int,
    tasks: int,
    gpus_per_node: int | None,
    cpus_per_task: int,
    time: str,
    log_pattern: str,
    requeue_signal: str,
    signal_lead_seconds: int,
    partition: str | None,
    account: str | None,
    qos: str | None,
    extra_sbatch: Sequence[str],
    array: str | None = None,
) -> list[str]:
    """The ``#SBATCH`` lines of a training job (values checked by the caller): name, ``array`` (a job
    array's index range), nodes and tasks, GPUs, time, logs ``<log_pattern>.out/.err``, the requeue signal,
    partition/account/qos and the extra lines (a GPU request among them is refused)."""
    lines = [f"--job-name={job_name}"]
    if array is not None:
        lines.append(f"--array={array}")
    lines += [f"--nodes={nodes}", f"--ntasks-per-node={tasks}"]
    if gpus_per_node is not None:
        lines.append(f"--gres=gpu:{gpus_per_node}")
    lines += [
        f"--cpus-per-task={cpus_per_task}",
        f"--time={time}",
        f"--output={_sbatch_path(log_pattern + '.out')}",
        f"--error={_sbatch_path(log_pattern + '.err')}",
        f"--signal={requeue_signal}@{signal_lead_seconds}",
        "--requeue",
        "--open-mode=append",
    ]
    lines += account_lines(partition, account, qos)
    return [f"#SBATCH {line}" for line in lines] + extra_lines(extra_sbatch)


def account_lines(partition: str | None, account: str | None, qos: str | None) -> list[str]:
    """``--partition``/``--account``/``--qos`` options (without ``#SBATCH``) for the values given."""
    return [
        f"--{flag}={_check_word(flag, value)}"
        for flag, value in (("partition", partition), ("account", account), ("qos", qos))
        if value is not None
    ]


def extra_lines(extra_sbatch: Sequence[str]) -> list[str]:
    """``--sbatch-arg`` values as ``#SBATCH`` lines; a GPU request is refused (``--gpus-per-node`` asks)."""
    if isinstance(extra_sbatch, str):
        raise ValueError(f"extra_sbatch {extra_sbatch!r}: expected a list of strings, not a string")
    out = []
    for extra in extra_sbatch:
        if not isinstance(extra, str) or not extra.strip() or "\n" in extra:
            raise ValueError(f"extra sbatch line {extra!r}: expected one non-empty line such as --exclusive")
        extra = extra.strip()
        if _GPU_REQUEST.match(extra):
            raise ValueError(
                f"extra sbatch line {extra!r}: GPUs are asked for with --gpus-per-node N (it also sets "
                "the tasks and the trainer's accelerator and devices)"
            )
        out.append(extra if extra.startswith("#SBATCH") else f"#SBATCH {extra}")
    return out


def _check_fit_args(fit_args: Sequence[str]) -> None:
    if isinstance(fit_args, str):
        raise ValueError(f"fit_args {fit_args!r}: expected a list of strings, not a string")
    for arg in fit_args:
        if isinstance(arg, str) and arg.split("=")[0] in _SET_BY_SLURM:
            raise ValueError(
                f"fit argument {arg!r}: ddo slurm sets {', '.join(_SET_BY_SLURM)} from --nodes and "
                "--gpus-per-node/--devices"
            )


def check_job_flags(
    *,
    nodes: int,
    cpus_per_task: int,
    time: str,
    job_name: str,
    devices: int | None,
    gpus_per_node: int | None,
    requeue_signal: str,
    signal_lead_seconds: int,
) -> tuple[int, str]:
    """Check the allocation flags; return (tasks per node, the time limit). Raises ``ValueError``."""
    _check_positive("nodes", nodes)
    tasks = tasks_per_node(devices, gpus_per_node)
    _check_positive("cpus_per_task", cpus_per_task)
    time = _check_time(time)
    _check_word("job_name", job_name)
    if not isinstance(requeue_signal, str) or not _SIGNAL.fullmatch(requeue_signal):
        raise ValueError(f"requeue_signal {requeue_signal!r}: expected a signal name such as USR1")
    if (
        isinstance(signal_lead_seconds, bool)
        or not isinstance(signal_lead_seconds, int)
        or not 0 <= signal_lead_seconds <= 65535
    ):
        raise ValueError(f"signal_lead_seconds {signal_lead_seconds!r}: expected an integer in 0-65535")
    return tasks, time


def resume_lines(out_dir: str, preemption: bool = True) -> list[str]:
    """The script's resume rule (bash): ``--ckpt_path $OUT_DIR/resume-$SLURM_JOB_ID.ckpt`` in ``"$@"`` for a
    requeued run of this job that finds its own checkpoint, nothing otherwise. ``out_dir``: the right-hand
    side of the bash assignment (quoted by the caller)."""
    if not preemption:
        return ["set --  # no Preemption callback (--no-preemption): nothing to resume from here"]
    return [
        ': "${SLURM_JOB_ID:?not running under SLURM: submit this script with sbatch}"',
        f"OUT_DIR={out_dir}",
        'RESUME="$OUT_DIR/resume-$SLURM_JOB_ID.ckpt"',
        'RESTARTS="${SLURM_RESTART_COUNT:-0}"',
        "set --",
        'if [ "$RESTARTS" -gt 0 ] && [ -f "$RESUME" ]; then',
        '  echo "job $SLURM_JOB_ID, restart $RESTARTS: resuming from $RESUME"',
        '  set -- --ckpt_path "$RESUME"',
        'elif [ "$RESTARTS" -gt 0 ]; then',
        '  echo "job $SLURM_JOB_ID, restart $RESTARTS: no $RESUME, starting from the config"',
        "fi",
        "# A resume checkpoint of another job (or of an earlier job with this id) is never used: say so.",
        'for old in "$OUT_DIR"/resume*.ckpt; do',
        '  if [ -e "$old" ] && { [ "$old" != "$RESUME" ] || [ "$RESTARTS" -eq 0 ]; }; then',
        '    echo "not resuming from $old: not written by an earlier run of this job (job $SLURM_JOB_ID, restart $RESTARTS)"',
        "  fi",
        "done",
    ]


def srun_line(cpus_per_task: int, command: Sequence[str], expanded: Sequence[str] = (_RESUME_VAR,)) -> str:
    """``srun ... COMMAND "$@"``: every argument shell-quoted except those holding one of ``expanded``
    (variables known at run time only), which are double-quoted so that bash expands them."""
    words = " ".join(f'"{a}"' if any(v in str(a) for v in expanded) else shlex.quote(str(a)) for a in command)
    return f'srun --kill-on-bad-exit=1 --cpus-per-task={cpus_per_task} {words} "$@"'


def fit_command(
    python: str,
    configs: Sequence[str],
    nodes: int,
    tasks: int,
    gpus_per_node: int | None,
    fit_args: Sequence[str],
    batch_per_device: int | None,
    preemption: bool,
) -> list[str]:
    """``python -m ddo_lightning.cli fit --config ...`` with the job's rank, device, batch and resume arguments
    (what every task of a plain job or of a search's array runs under srun)."""
    command = [python, "-m", "ddo_lightning.cli", "fit"]
    for config in configs:
        command += ["--config", config]
    return command + fit_command_args(
        nodes, tasks, gpus_per_node is not None, fit_args, batch_per_device, _RESUME_VAR if preemption else None
    )


def devices_text(gpus_per_node: int | None, tasks: int) -> str:
    """``8 GPU(s) per node`` or ``2 CPU task(s) per node``, for the scripts' headers."""
    return f"{gpus_per_node} GPU(s) per node" if gpus_per_node is not None else f"{tasks} CPU task(s) per node"


def render_sbatch(
    configs: Sequence[str],
    *,
    nodes: int,
    cpus_per_task: int,
    time: str,
    job_name: str,
    output_dir: str,
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
) -> str:
    """The sbatch script (bash) of ``ddo fit --config ...`` on ``nodes`` x tasks-per-node ranks.

    ``gpus_per_node``: a GPU job, one task per GPU (``--gres=gpu:N``, ``--trainer.accelerator gpu``).
    ``devices``: a CPU job of that many processes per node (``--trainer.accelerator cpu``).
    ``batch_per_device``: passed as ``--data.init_args.batch_size`` after ``fit_args`` (see
    :func:`per_device_batch`). ``extra_sbatch`` entries (``--exclusive`` or ``#SBATCH --exclusive``) are
    added as ``#SBATCH`` lines; ``fit_args`` are appended to the ``ddo fit`` command line. ``preemption``
    adds the ``Preemption`` callback writing ``<output_dir>/resume-<job id>.ckpt`` (leave it off if a
    config already has one). Raises ``ValueError`` naming a bad value.
    """
    if isinstance(configs, str) or not configs:
        raise ValueError(f"configs {configs!r}: expected a non-empty list of config files")
    for config in configs:
        if not isinstance(config, str) or not config:
            raise ValueError(f"config {config!r}: expected a path")
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
    if batch_per_device is not None:
        _check_positive("batch_per_device", batch_per_device)
    if not isinstance(output_dir, str) or not output_dir:
        raise ValueError(f"output_dir {output_dir!r}: expected a directory path")

    sbatch_lines = resource_lines(
        job_name=job_name,
        nodes=nodes,
        tasks=tasks,
        gpus_per_node=gpus_per_node,
        cpus_per_task=cpus_per_task,
        time=time,
        log_pattern=os.path.join(output_dir, "%x-%j"),
        requeue_signal=requeue_signal,
        signal_lead_seconds=signal_lead_seconds,
        partition=partition,
        account=account,
        qos=qos,
        extra_sbatch=extra_sbatch,
    )
    _check_fit_args(fit_args)

    command = fit_command(python, configs, nodes, tasks, gpus_per_node, fit_args, batch_per_device, preemption)
    kind = devices_text(gpus_per_node, tasks)
    header = [
        "#!/bin/bash",
        f"# ddo fit on SLURM: {nodes} node(s) x {kind}, one task per device"
        + (f", {batch_per_device} samples per device and step." if batch_per_device else "."),
        "# Written by `ddo slurm` (ddo_lightning.launch.slurm); submit with `sbatch <this file>`.",
        f"# SLURM sends SIG{requeue_signal.split(':')[-1].removeprefix('SIG')} {signal_lead_seconds} s before "
        "the time limit; the Preemption callback then",
        "# checkpoints at the end of the step (resume-<job id>.ckpt in the output directory) and requeues the job;",
        "# the requeued job (same id) resumes from that checkpoint, no other job does.",
    ]
    resume = resume_lines(shlex.quote(output_dir), preemption)
    body = [
        "set -euo pipefail",
        "",
        *resume,
        "",
        "# One process per task. A failing rank ends the step (the others would wait for it); srun gets",
        "# --cpus-per-task again because srun of Slurm 22.05 does not inherit sbatch's.",
        srun_line(cpus_per_task, command),
    ]
    return "\n".join(header + sbatch_lines + [""] + body) + "\n"


def submit(script_text: str, *, sbatch: str = "sbatch") -> str:
    """Submit ``script_text`` (on sbatch's stdin) with ``sbatch --parsable``; return the job id.

    The job runs in the current directory with the current environment (sbatch's defaults).
    Raises ``RuntimeError`` (with sbatch's message) if sbatch is missing or refuses the job.
    """
    try:
        done = subprocess.run([sbatch, "--parsable"], input=script_text, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise RuntimeError(f"{sbatch!r} not found: is SLURM installed and on PATH? ({err})") from err
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise RuntimeError(f"sbatch failed: {message}")
    job_id = done.stdout.strip().split(";")[0]
    if not job_id:
        raise RuntimeError(f"sbatch printed no job id (stderr: {done.stderr.strip()!r})")
    return job_id


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> _Parser:
    p = _Parser(
        prog="ddo slurm",
        description="Run `ddo fit` under SLURM: check the config, render an sbatch "
        "script and submit it. Arguments after `--` are passed on to `ddo fit`. The config's "
        "data.init_args.batch_size is the global batch; each task gets global / (nodes x tasks per node).",
    )
    p.add_argument("--config", action="append", required=True, help="config file (repeat to compose)")
    p.add_argument("--nodes", type=int, required=True, help="number of nodes")
    p.add_argument("--gpus-per-node", type=int, help="a GPU job: GPUs (= tasks) per node, --gres=gpu:N")
    p.add_argument("--devices", type=int, help="a CPU job: processes (= tasks) per node")
    p.add_argument("--cpus-per-task", type=int, required=True, help="CPU cores per task")
    p.add_argument("--time", required=True, help="time limit: minutes, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--job-name", required=True, help="SLURM job name")
    p.add_argument(
        "--output-dir", required=True, help="where the job's logs (%%x-%%j.out/.err) and resume checkpoints go"
    )
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra #SBATCH option, e.g. --sbatch-arg=--exclusive (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="check the config, print the script, submit nothing")
    p.add_argument(
        "--no-preemption", action="store_true", help="do not add the Preemption callback (a config already has one)"
    )
    from .sweep import add_sweep_arguments

    add_sweep_arguments(p)
    return p


def _check_files(config: dict, configs: Sequence[str], base: str | None = None) -> None:
    """Every input file the run names exists, or one ``ValueError`` listing all missing ones: the same check
    and message as ``ddo fit``'s (``fetch.preflight``), with relative paths taken from ``base`` (default:
    the current directory, where sbatch runs the job)."""
    from ..fetch.preflight import find_problems, missing_message

    base = base or os.getcwd()
    problems = find_problems(config, base=base)
    if problems:
        raise ValueError(
            missing_message(problems, list(configs), prog="")
            + f"\n(relative paths are looked up from {base}, where the job runs)"
        )


def _plan(ns: argparse.Namespace, fit_args: list[str]) -> tuple[str, list[str]]:
    """Check the run and render its script: (script, notes). Raises ValueError naming the problem."""
    from .config_check import dry_build

    tasks = tasks_per_node(ns.devices, ns.gpus_per_node)
    render = job_options(ns, fit_args)
    render_sbatch(ns.config, **render)  # bad flags first, before the config is read
    config = read_configs(ns.config, fit_args)
    accelerator = config.get("trainer", {}).get("accelerator")
    if ns.gpus_per_node is None and accelerator not in (None, "auto", "cpu"):
        raise ValueError(
            f"the config asks for trainer.accelerator {accelerator!r} but --devices makes a CPU job: "
            "use --gpus-per-node N for GPUs"
        )
    notes = (
        []
        if ns.gpus_per_node is not None
        else [f"a CPU job: {tasks} process(es) per node, --trainer.accelerator cpu (GPUs: --gpus-per-node)"]
    )
    batch = split_batch(config, ns.nodes, tasks, notes)
    if batch is None:
        notes.append("the data module has no batch_size: nothing split over the ranks")
    script = render_sbatch(ns.config, **render, batch_per_device=batch)
    resume = None if ns.no_preemption else os.path.join(ns.output_dir, "resume-JOBID.ckpt")
    config, built = dry_build(
        ns.config, fit_command_args(ns.nodes, tasks, ns.gpus_per_node is not None, fit_args, batch, resume)
    )  # exactly what the job will parse
    check_job_files(config, ns)
    return script, notes + built


def job_options(ns: argparse.Namespace, fit_args: list[str]) -> dict:
    """The render arguments every job of ``ddo slurm`` shares (a plain run's job, a search's array tasks)."""
    return dict(
        nodes=ns.nodes,
        devices=ns.devices,
        gpus_per_node=ns.gpus_per_node,
        cpus_per_task=ns.cpus_per_task,
        time=ns.time,
        job_name=ns.job_name,
        output_dir=ns.output_dir,
        partition=ns.partition,
        account=ns.account,
        qos=ns.qos,
        extra_sbatch=ns.sbatch_arg,
        fit_args=fit_args,
        preemption=not ns.no_preemption,
    )


def read_configs(configs: Sequence[str], fit_args: list[str]) -> dict:
    """The fit config as ``ddo fit`` would parse it; a missing config file is refused by name."""
    from .config_check import fit_config

    missing = [c for c in configs if not os.path.isfile(c)]
    if missing:
        raise ValueError(f"config {missing[0]!r}: no such file")
    return fit_config(configs, fit_args)


def split_batch(config: dict, nodes: int, tasks: int, notes: list[str]) -> int | None:
    """The per-device batch of the config's global ``data.init_args.batch_size`` (None: it has none), noted."""
    data_args = (config.get("data") or {}).get("init_args") or {}
    if "batch_size" not in data_args:
        return None
    batch = per_device_batch(data_args["batch_size"], nodes, tasks)
    notes.append(f"global batch {data_args['batch_size']} = {nodes} node(s) x {tasks} task(s) x {batch} per task")
    return batch


def check_job_files(config: dict, ns: argparse.Namespace) -> None:
    """The config's input files, looked up from where the job runs (sbatch --chdir, else here)."""
    chdir = [
        a.split("=", 1)[1]
        for a in (x.strip().removeprefix("#SBATCH").strip() for x in ns.sbatch_arg)
        if a.startswith("--chdir=")
    ]
    _check_files(config, ns.config, base=os.path.abspath(chdir[-1]) if chdir else None)


def main(argv: Sequence[str]) -> int:
    """``ddo slurm``: 0 on success; bad input prints ``ddo slurm: error: ...`` and exits with status 2."""
    argv = list(argv)
    fit_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, fit_args = argv[:cut], argv[cut + 1 :]
    joined: list[str] = []  # `--sbatch-arg --exclusive`: argparse would take the value for an option
    i = 0
    while i < len(argv):
        if argv[i] == "--sbatch-arg" and i + 1 < len(argv):
            joined.append(f"--sbatch-arg={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    parser = _parser()
    ns = parser.parse_args(joined)
    if ns.sweep:
        return _main_sweep(parser, ns, fit_args)
    try:
        from .sweep import check_sweep_flags

        check_sweep_flags(ns)
        script, notes = _plan(ns, fit_args)
    except ValueError as err:  # ConfigError included
        parser.error(str(err))
    for note in notes:
        print(f"ddo slurm: {note}", file=sys.stderr)
    if ns.dry_run:
        print(script, end="")
        return 0
    os.makedirs(ns.output_dir, exist_ok=True)  # SLURM does not create the directory of --output
    try:
        job_id = submit(script)
    except RuntimeError as err:
        print(f"ddo slurm: error: {err}".replace("\n", " "), file=sys.stderr)
        return 1
    print(job_id)
    return 0


def _main_sweep(parser: _Parser, ns: argparse.Namespace, fit_args: list[str]) -> int:
    """``ddo slurm --sweep``: check, then print (``--dry-run``) or submit the chain of every round left."""
    from .sweep import plan_sweep, print_scripts, submit_chain

    try:
        scripts, notes = plan_sweep(ns, fit_args)
    except ValueError as err:  # SearchError and ConfigError included
        parser.error(str(err))
    for note in notes:
        print(f"ddo slurm: {note}", file=sys.stderr)
    if ns.dry_run:
        print_scripts(scripts)
        return 0
    if not scripts:
        return 0
    os.makedirs(ns.output_dir, exist_ok=True)  # SLURM does not create the directory of --output
    try:
        ids = submit_chain(scripts, submit)
    except RuntimeError as err:
        print(f"ddo slurm: error: {err}".replace("\n", " "), file=sys.stderr)
        return 1
    for name, job_id in ids.items():
        print(f"{name} {job_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
