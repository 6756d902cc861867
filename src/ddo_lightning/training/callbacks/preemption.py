"""Preemption-safe training: on SIGUSR1 (SLURM's warning before the time limit, ``--signal``) or SIGTERM
(``scancel``, or a preemption), finish the current step, write a checkpoint atomically and stop. After
SIGUSR1 — once the step's other callbacks and the loggers are done — the job requeues itself
(``scontrol requeue``). After SIGTERM it does not: ``scancel`` means stop, and a job that SLURM preempts
with ``PreemptMode=REQUEUE`` is requeued by SLURM itself (``ddo slurm`` scripts ask for ``--requeue``).

The signal handler only sets a flag — saving from inside a handler interrupts whatever the main thread
was doing (a collective, a file write) and is a known source of hangs. At the end of every step the
ranks agree on the flag (one all-reduce of a boolean) so they all stop after the same step, even when
only one rank got the signal. Lightning's own handlers are replaced while training runs: its SLURM
handler saves inside the handler, and its SIGTERM notifier runs a broadcast inside the handler (measured
here: SIGTERM to rank 0 of a two-process CPU run then hangs both ranks).

The checkpoint holds everything a resumed run needs (target, reference, EMA, optimizer, SelfPlay state,
the real and fake stream positions): ``ddo fit ... --ckpt_path <path>`` continues the same round with the
same reference at the same position; ``ddo slurm`` scripts pass it automatically to a requeued run of the
same job (``resume-<job id>.ckpt``, never another job's; docs/slurm.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

SIGNALS = {"SIGUSR1": signal.SIGUSR1, "SIGTERM": signal.SIGTERM, "SIGUSR2": signal.SIGUSR2, "SIGINT": signal.SIGINT}


class Preemption(pl.Callback):
    """Checkpoint and requeue on a signal, at a step boundary.

    Args:
        path: the resume checkpoint (written atomically; the previous one is replaced). Default:
            ``checkpoints/resume.ckpt`` in the trainer's ``default_root_dir`` (``ddo fit``: the run directory,
            whose newest readable checkpoint a rerun resumes).
        signals: signal names to handle.
        requeue: under SLURM (``SLURM_JOB_ID`` set), rank 0 runs ``scontrol requeue <job>`` after saving,
            when the signal that stopped the run (on any rank) is one of ``requeue_on``.
        requeue_on: the signals that mean "out of time, come back" (SLURM's ``--signal`` warning). The
            others (SIGTERM: ``scancel``) stop the run with its checkpoint written and leave the job ended.
    """

    def __init__(
        self,
        path: str | None = None,
        signals: tuple[str, ...] = ("SIGUSR1", "SIGTERM"),
        requeue: bool = True,
        requeue_on: tuple[str, ...] = ("SIGUSR1",),
    ):
        unknown = [s for s in (*signals, *requeue_on) if s not in SIGNALS]
        if unknown:
            raise ValueError(f"unknown signal(s) {unknown}; use any of {sorted(SIGNALS)}")
        self.path, self.signals, self.requeue = path, tuple(signals), requeue
        self.requeue_on = tuple(requeue_on)
        self.requeue_wanted = False  # the stopping signal, on some rank, was one of requeue_on
        self.received: int | None = None
        self.saved_at_step: int | None = None
        self._previous: dict[int, Any] = {}

    # ---- signals -----------------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum  # nothing else here: the step boundary does the work

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.path = self.path or os.path.join(trainer.default_root_dir, "checkpoints", "resume.ckpt")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning registered its own handlers, so ours come first (and replace its SIGUSR1 saver)
        for name in self.signals:
            signum = SIGNALS[name]
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()
        if self.saved_at_step is not None:
            trainer.strategy.barrier("preemption-requeue")  # every rank finished the step's other callbacks
            self._requeue(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        if self.saved_at_step is not None:  # SIGTERM: Lightning ends the loop with an exception
            self._requeue(trainer)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous.clear()

    # ---- the step boundary -----------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not stop:
            return
        name = signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
        wants = self.received is not None and signal.Signals(self.received).name in self.requeue_on
        self.requeue_wanted = bool(trainer.strategy.reduce_boolean_decision(wants, all=False))
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        trainer.save_checkpoint(self.path)  # atomic: AtomicCheckpointIO writes a temporary file and renames it
        self.saved_at_step = trainer.global_step
        rank_zero_info(
            f"[preemption] {name}: checkpoint of step {trainer.global_step} written to {self.path}; stopping"
        )
        trainer.should_stop = True  # the requeue waits for the end of training: it ends this job's tasks at once,
        # and the step's other callbacks (ModelCheckpoint runs last) and the loggers must finish first

    def _requeue(self, trainer: pl.Trainer) -> None:
        job = (
            os.environ.get("SLURM_ARRAY_JOB_ID")
            and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
        )
        job = job or os.environ.get("SLURM_JOB_ID")
        if not (self.requeue and job and trainer.is_global_zero):
            return
        if not self.requeue_wanted:
            rank_zero_info(
                f"[preemption] SLURM job {job} stopped without a requeue (the signal was not one of "
                f"{', '.join(self.requeue_on)}); `ddo fit ... --ckpt_path {self.path}` resumes it"
            )
            return
        for logger in trainer.loggers:
            logger.finalize("success")
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode == 0:
            rank_zero_info(f"[preemption] requeued SLURM job {job}; it resumes from {self.path}")
        else:
            rank_zero_warn(f"[preemption] `scontrol requeue {job}` failed: {result.stderr.strip()}")
