"""Progress in DDO's units: round, kimg in the round and the last evaluation, not epochs (a DDO run's
"epochs" are passes over the real data and mean nothing for self-play).

``RoundProgressBar`` is a tqdm bar (Lightning's ``TQDMProgressBar``) for a terminal; ``LineProgress``
writes one plain line every ``every_n_steps`` steps for a log file or a batch job. ``default_progress_bar``
picks one by whether stdout is a terminal; ``ddo`` installs it unless ``trainer.enable_progress_bar`` is
false or the config names a progress bar of its own.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from ..base import DenoiserModule
from ..report import fmt as _fmt
from .self_play import SelfPlay


def _kimg(images: int) -> str:
    k = images / 1000
    return f"{k:.1f}" if k >= 10 else f"{k:.3g}"


def status_text(trainer: pl.Trainer, pl_module: Any) -> str:
    """``round r/R · kimg x/y · last <monitor> v`` in a self-play run (rounds from 1, as everywhere; in a
    search ``round r/R · candidate c/C alpha=2,beta=0.05 · kimg x/y ...``, kimg in the candidate);
    ``step s/S · kimg x`` otherwise (MLE pretraining)."""
    sp = next((cb for cb in trainer.callbacks if isinstance(cb, SelfPlay)), None)
    if sp is None:
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        return f"step {trainer.global_step}{total} · kimg {_kimg(int(pl_module.images_seen) if isinstance(pl_module, DenoiserModule) else 0)}"
    finished = sp.round >= sp.rounds  # after the last promotion: show the last round as complete
    r = sp.rounds if finished else sp.display_round
    done = sp.images_per_round if finished else sp.images_in_round
    text = f"round {r}/{sp.rounds}"
    if sp.searching and not finished:  # the candidate in progress: number, count, overrides
        text += f" · candidate {sp.candidate + 1}/{len(sp.candidates)} {sp.labels[sp.candidate]}"
    text += f" · kimg {_kimg(done)}/{sp.images_per_round / 1000:g}"
    if sp.evaluations:
        text += f" · last {sp.monitor} {_fmt(sp.evaluations[-1]['metrics'][sp.monitor])}"
    return text


def train_metrics(trainer: pl.Trainer) -> dict[str, str]:
    """The step statistics the module logs with ``prog_bar=True`` (loss, discriminator accuracy)."""
    return {k.split("/")[-1]: _fmt(float(v)) for k, v in trainer.progress_bar_metrics.items()}


class RoundProgressBar(TQDMProgressBar):
    """A tqdm bar over the current round's images (over the steps without self-play), described as
    ``round r/R · kimg x/y · last <monitor> v``; step statistics after it."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return train_metrics(trainer)  # short names, no logger version

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        self._refresh(trainer, trainer.lightning_module, reset=True)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._should_update(trainer.global_step, trainer.global_step + 1):
            self._refresh(trainer, pl_module)

    def _refresh(self, trainer: pl.Trainer, pl_module: Any, reset: bool = False) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        sp = next((cb for cb in trainer.callbacks if isinstance(cb, SelfPlay)), None)
        if sp is not None:
            total, n = sp.images_per_round, (sp.images_per_round if sp.round >= sp.rounds else sp.images_in_round)
        else:
            total, n = (trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None), trainer.global_step
        if reset or n < bar.n:  # a new round starts the bar again
            bar.reset(total=total)
            bar.unit = "img" if sp is not None else "step"
        bar.set_description(status_text(trainer, pl_module), refresh=False)
        bar.n = n
        bar.set_postfix(self.get_metrics(trainer, pl_module))


class LineProgress(ProgressBar):
    """One line on stdout every ``every_n_steps`` optimizer steps (and at the end of training), for logs
    that are files: ``step 200 · round 1/3 · kimg 102.4/512 · last mmd 0.0123 · loss 1.386 · disc_acc 0.5``.

    Args:
        every_n_steps: steps between lines.
    """

    def __init__(self, every_n_steps: int = 50):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def line(self, trainer: pl.Trainer, pl_module: Any) -> str:
        parts = [status_text(trainer, pl_module)]
        if not parts[0].startswith("step"):
            parts.insert(0, f"step {trainer.global_step}")
        parts += [f"{k} {v}" for k, v in train_metrics(trainer).items()]
        return " · ".join(parts)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._enabled and trainer.global_step % self.every_n_steps == 0:
            print(self.line(trainer, pl_module), flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled and trainer.global_step % self.every_n_steps != 0:
            print(self.line(trainer, pl_module), flush=True)


def default_progress_bar(every_n_steps: int = 50) -> ProgressBar:
    """``RoundProgressBar`` when stdout is a terminal, else ``LineProgress(every_n_steps)``."""
    stream = sys.stdout
    return RoundProgressBar() if hasattr(stream, "isatty") and stream.isatty() else LineProgress(every_n_steps)
