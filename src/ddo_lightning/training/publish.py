"""Publishing one evaluation: to every logger, then to every callback that listens for evaluations.

Below the module and the callbacks (both publish), so ``training/base.py`` does not import its own
callbacks package.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

from ..protocols import EvaluationListener

_LAID_OUT: set[tuple[int, str]] = set()  # (W&B logger, prefix) pairs whose metric layout is defined


def publish_evaluation(trainer: pl.Trainer, pl_module: Any, metrics: dict[str, float], prefix: str = "eval",
                       round_index: int | None = None, kimg_in_round: float | None = None,
                       log: bool = True) -> dict[str, float]:
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
