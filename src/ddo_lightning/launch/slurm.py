"""``ddo slurm``: an sbatch script that runs ``ddo fit`` with one task per device, and its submission.

    ddo slurm --config configs/edm_cifar10.yaml --nodes 2 --devices 4 --cpus-per-task 8 \\
        --time 1-00:00:00 --job-name ddo-cifar --output-dir runs/cifar --partition gpu \\
        --sbatch-arg=--gres=gpu:4 -- --trainer.max_steps 200000
    ddo slurm ... --dry-run        # print the script, submit nothing

The script asks for ``--nodes`` x ``--ntasks-per-node=<devices>`` tasks (Lightning wants
``--ntasks-per-node``, not ``--ntasks``) and starts them with ``srun``; Lightning's SLURM environment
reads ranks and world size from srun's variables. SLURM sends ``SIGUSR1`` shortly before the time
limit (``--signal``), on which the ``Preemption`` callback (added to the run by default, writing
``<output-dir>/resume.ckpt``) checkpoints at the end of the step and requeues the job (``--requeue``);
logs are appended (``--open-mode=append``) across restarts. On a restart, ``<output-dir>/resume.ckpt``
is passed on as ``--ckpt_path``.
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
_TIME = re.compile(r"(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                   r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)")
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


def render_sbatch(configs: Sequence[str], *, nodes: int, devices: int, cpus_per_task: int, time: str,
                  job_name: str, output_dir: str, partition: str | None = None, account: str | None = None,
                  qos: str | None = None, extra_sbatch: Sequence[str] = (), requeue_signal: str = "USR1",
                  signal_lead_seconds: int = 90, python: str = sys.executable,
                  fit_args: Sequence[str] = (), preemption: bool = True) -> str:
    """The sbatch script (bash) of ``ddo fit --config ...`` on ``nodes`` x ``devices`` tasks.

    ``devices`` is the number of tasks per node (one per GPU, or CPU processes for ``accelerator: cpu``).
    ``extra_sbatch`` entries (``--gres=gpu:4`` or ``#SBATCH --gres=gpu:4``) are added as ``#SBATCH`` lines;
    ``fit_args`` are appended to the ``ddo fit`` command line. ``preemption`` adds the ``Preemption``
    callback writing ``<output_dir>/resume.ckpt`` (leave it off if a config already has one). Raises
    ``ValueError`` naming a bad value.
    """
    if isinstance(configs, str) or not configs:
        raise ValueError(f"configs {configs!r}: expected a non-empty list of config files")
    for config in configs:
        if not isinstance(config, str) or not config:
            raise ValueError(f"config {config!r}: expected a path")
    _check_positive("nodes", nodes)
    _check_positive("devices", devices)
    _check_positive("cpus_per_task", cpus_per_task)
    time = _check_time(time)
    _check_word("job_name", job_name)
    if not isinstance(output_dir, str) or not output_dir:
        raise ValueError(f"output_dir {output_dir!r}: expected a directory path")
    if not isinstance(requeue_signal, str) or not _SIGNAL.fullmatch(requeue_signal):
        raise ValueError(f"requeue_signal {requeue_signal!r}: expected a signal name such as USR1")
    if isinstance(signal_lead_seconds, bool) or not isinstance(signal_lead_seconds, int) \
            or not 0 <= signal_lead_seconds <= 65535:
        raise ValueError(f"signal_lead_seconds {signal_lead_seconds!r}: expected an integer in 0-65535")

    lines = [f"--job-name={job_name}", f"--nodes={nodes}", f"--ntasks-per-node={devices}",
             f"--cpus-per-task={cpus_per_task}", f"--time={time}",
             f"--output={_sbatch_path(os.path.join(output_dir, '%x-%j.out'))}",
             f"--error={_sbatch_path(os.path.join(output_dir, '%x-%j.err'))}",
             f"--signal={requeue_signal}@{signal_lead_seconds}", "--requeue", "--open-mode=append"]
    for flag, value in (("partition", partition), ("account", account), ("qos", qos)):
        if value is not None:
            lines.append(f"--{flag}={_check_word(flag, value)}")
    sbatch_lines = [f"#SBATCH {line}" for line in lines]
    for what, seq in (("extra_sbatch", extra_sbatch), ("fit_args", fit_args)):
        if isinstance(seq, str):
            raise ValueError(f"{what} {seq!r}: expected a list of strings, not a string")
    for extra in extra_sbatch:
        if not isinstance(extra, str) or not extra.strip() or "\n" in extra:
            raise ValueError(f"extra sbatch line {extra!r}: expected one non-empty line such as --gres=gpu:4")
        extra = extra.strip()
        sbatch_lines.append(extra if extra.startswith("#SBATCH") else f"#SBATCH {extra}")

    command = [python, "-m", "ddo_lightning.cli", "fit"]
    for config in configs:
        command += ["--config", config]
    command += ["--trainer.num_nodes", str(nodes), "--trainer.devices", str(devices)]
    if preemption:
        command += ["--trainer.callbacks+=ddo_lightning.training.Preemption",
                    f"--trainer.callbacks.path={os.path.join(output_dir, 'resume.ckpt')}"]
    command += list(fit_args)
    srun = " ".join(shlex.quote(str(a)) for a in command)
    resume = shlex.quote(os.path.join(output_dir, "resume.ckpt"))
    header = [
        "#!/bin/bash",
        f"# ddo fit on SLURM: {nodes} node(s) x {devices} task(s) per node, one task per device.",
        "# Written by `ddo slurm` (ddo_lightning.launch.slurm); submit with `sbatch <this file>`.",
        f"# SLURM sends SIG{requeue_signal.split(':')[-1].removeprefix('SIG')} {signal_lead_seconds} s before "
        "the time limit; the Preemption callback then",
        "# checkpoints at the end of the step (resume.ckpt in the output directory) and requeues the job,",
        "# which resumes from that checkpoint.",
    ]
    body = [
        "set -euo pipefail",
        "",
        f"RESUME={resume}",
        'if [ -f "$RESUME" ]; then',
        '  echo "resuming from $RESUME"',
        '  set -- --ckpt_path "$RESUME"',
        "else",
        "  set --",
        "fi",
        "",
        "# One process per task. A failing rank ends the step (the others would wait for it); srun gets",
        "# --cpus-per-task again because srun of Slurm 22.05 does not inherit sbatch's.",
        f'srun --kill-on-bad-exit=1 --cpus-per-task={cpus_per_task} {srun} "$@"',
    ]
    return "\n".join(header + sbatch_lines + [""] + body) + "\n"


def submit(script_text: str, *, sbatch: str = "sbatch") -> str:
    """Submit ``script_text`` (on sbatch's stdin) with ``sbatch --parsable``; return the job id.

    The job runs in the current directory with the current environment (sbatch's defaults).
    Raises ``RuntimeError`` (with sbatch's message) if sbatch is missing or refuses the job.
    """
    try:
        done = subprocess.run([sbatch, "--parsable"], input=script_text, capture_output=True, text=True,
                              check=False)
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
    p = _Parser(prog="ddo slurm", description="Run `ddo fit` under SLURM: render an sbatch script and submit it. "
                "Arguments after `--` are passed on to `ddo fit`.")
    p.add_argument("--config", action="append", required=True, help="config file (repeat to compose)")
    p.add_argument("--nodes", type=int, required=True, help="number of nodes")
    p.add_argument("--devices", type=int, required=True, help="devices (= tasks) per node")
    p.add_argument("--cpus-per-task", type=int, required=True, help="CPU cores per task")
    p.add_argument("--time", required=True, help="time limit: minutes, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--job-name", required=True, help="SLURM job name")
    p.add_argument("--output-dir", required=True, help="where the job's logs (%%x-%%j.out/.err) go")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra #SBATCH option, e.g. --sbatch-arg=--gres=gpu:4 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    p.add_argument("--no-preemption", action="store_true",
                   help="do not add the Preemption callback (a config already has one)")
    return p


def main(argv: Sequence[str]) -> int:
    """``ddo slurm``: 0 on success; bad input prints ``ddo slurm: error: ...`` and exits with status 2."""
    argv = list(argv)
    fit_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, fit_args = argv[:cut], argv[cut + 1:]
    joined: list[str] = []  # `--sbatch-arg --gres=gpu:4`: argparse would take the value for an option
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
    try:
        script = render_sbatch(ns.config, nodes=ns.nodes, devices=ns.devices, cpus_per_task=ns.cpus_per_task,
                               time=ns.time, job_name=ns.job_name, output_dir=ns.output_dir,
                               partition=ns.partition, account=ns.account, qos=ns.qos,
                               extra_sbatch=ns.sbatch_arg, fit_args=fit_args, preemption=not ns.no_preemption)
    except ValueError as err:
        parser.error(str(err))
    if ns.dry_run:
        print(script, end="")
        return 0
    missing = [c for c in ns.config if not os.path.isfile(c)]
    if missing:
        parser.error(f"config {missing[0]!r}: no such file")
    os.makedirs(ns.output_dir, exist_ok=True)  # SLURM does not create the directory of --output
    try:
        job_id = submit(script)
    except RuntimeError as err:
        print(f"ddo slurm: error: {err}".replace("\n", " "), file=sys.stderr)
        return 1
    print(job_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
