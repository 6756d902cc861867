"""SelfPlay: multi-round DDO (paper §3.3, docs/method.md §5).

Rounds are measured in real images (the module's ``images_seen``, the run's one image counter; the images
of the round are counted from the round's start). Within a round the EMA is evaluated every
``eval_every_kimg``; the best evaluation (the round's starting weights included) is kept on disk. At the
round boundary the best EMA weights become reference and target, the optimizer and EMA restart, the module
is told the new round (``start_round``: the data module's next batch draws its fakes from the new
reference), and ``round-N.ckpt`` is written atomically.
The callback's state (round, where it started, best score, the records) is in every checkpoint, and so
are the reference weights (they are part of the module), so a resumed run continues the same round with
the same reference.

Two record lists, kept apart: ``evaluations`` (one per evaluation: round, kimg, metrics) and
``promotions`` (one per finished round: what was promoted, whether it beat the round's start, whether the
weights moved). ``summary.json``, the console table and ``curve.png`` are made from them by
``training.report``.

Rounds are numbered from 1 wherever a person sees them: console messages, the logged ``round`` column,
``summary.json`` and ``round-N.ckpt`` (round N's promoted weights). The ``round`` attribute (saved state)
counts finished rounds, so it is the 0-based index of the round in progress.

A round whose target never moved (bit-identical to its reference at the round's end: Adam's update
vanished, e.g. α or β so large that the squared gradients overflow float32) is reported as such, in the
console and in ``summary.json``; a run in which no round moved the weights ends with
``WeightsNeverChangedError`` (after writing the summary), so it does not pass for a finished run.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ...errors import WeightsNeverChangedError
from ...files import atomic_torch_save, read_tensor_file
from .. import report
from ..module import DDOModule
from ..report import fmt as _fmt
from ..sharding import full_state_dict, local_part, on_rank_zero


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly FSDP2-sharded) tensor."""
    return local_part(t)


@torch.no_grad()
def target_moved(trainer: pl.Trainer, pl_module: Any) -> bool:
    """Whether any trained parameter differs from the reference's (the round's starting weights), on any
    rank. Exact comparison: a vanished update leaves the weights bit-identical."""
    ref = dict(pl_module.reference.named_parameters())
    moved = any(not torch.equal(_local(p), _local(ref[name])) for name, p in pl_module.target.named_parameters())
    return bool(trainer.strategy.reduce_boolean_decision(moved, all=False))


def vanished_update_message(round_number: int, pl_module: Any) -> str:
    """Why round ``round_number``'s weights did not move, from the objective's α, β and Adam's state."""
    alpha, beta = (float("nan") if v is None else v for v in (pl_module.objective.alpha, pl_module.objective.beta))
    overflow = any(
        not torch.isfinite(_local(s["exp_avg_sq"])).all()
        for opt in pl_module.trainer.optimizers
        for s in opt.state.values()
        if "exp_avg_sq" in s
    )
    why = (
        "the squared gradients overflowed float32 in Adam's second moment, so every update m/√v was 0"
        if overflow
        else f"every update lr·m/√v (lr={pl_module.lr:g}) was below float32's resolution of the weights"
    )
    return (
        f"round {round_number}: weights never changed (α={float(alpha):g}, β={float(beta):g}: Adam's update vanished) — "
        f"{why}; the target is bit-identical to the round's reference. Lower alpha/beta (the paper: alpha in "
        "[0.5, 50], beta in [0.01, 0.1]) or raise lr."
    )


class SelfPlay(pl.Callback):
    """Rounds of DDO with best-checkpoint promotion.

    Args:
        rounds: number of rounds; training stops after the last promotion.
        kimg_per_round: real images per round, in thousands (paper: 1500 for CIFAR-10).
        eval_every_kimg: evaluate the EMA every this many kimg (the round's end is always evaluated).
        monitor: the evaluator's metric that picks the best checkpoint (e.g. 'energy_distance', 'fid').
        mode: 'min' if lower is better.
        dirpath: where ``best.pt``, ``summary.json`` and ``rounds/round-N.ckpt`` go (default: the trainer's
            ``default_root_dir``, which ``ddo fit`` sets to the run directory).
        summary_path: where the JSON summary goes (default ``<dirpath>/summary.json``): the starting
            reference's metrics, and per round the promoted checkpoint's metrics and its evaluation curve.

    A fit that starts with every round done (``ddo fit`` resuming a finished run) trains nothing and
    rewrites none of these files.
    """

    _t0: float | None = None  # when this fit's training started (on_train_start): the summary's wall time

    def __init__(
        self,
        rounds: int = 3,
        kimg_per_round: float = 1500.0,
        eval_every_kimg: float = 100.0,
        monitor: str = "fid",
        mode: Literal["min", "max"] = "min",
        dirpath: str | None = None,
        summary_path: str | None = None,
    ):
        if rounds < 1 or not kimg_per_round > 0 or not eval_every_kimg > 0:
            raise ValueError("rounds, kimg_per_round and eval_every_kimg must be positive")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.rounds, self.monitor, self.mode, self.dirpath = rounds, monitor, mode, dirpath
        self.summary_path = summary_path  # None: <dirpath>/summary.json, once dirpath is known (setup)
        self.images_per_round = int(kimg_per_round * 1000)
        self.eval_every_images = int(eval_every_kimg * 1000)
        # state (saved in every checkpoint)
        self.round = 0
        self.round_start_images = 0  # the module's images_seen when the round in progress started
        self.best_score: float | None = None
        self.best_images = 0  # images into the round at the best evaluation (0: the starting weights)
        self.evaluations: list[dict[str, Any]] = []  # one per evaluation: round, kimg_in_round, kimg, metrics
        self.promotions: list[dict[str, Any]] = []  # one per finished round (see training.report)
        self.last_round_path: str | None = None
        self.warnings: list[str] = []  # rounds whose weights never changed (also in summary.json)
        self._trained = False  # whether this fit ran (a finished run resumed does not: nothing is rewritten)
        self._module: Any = None  # the trained module (setup): its images_seen counts the images
        self._checked_images = 0  # images in the round at the last evaluation check
        self._legacy_images_in_round: int | None = None

    @property
    def images_in_round(self) -> int:
        """Real images trained on in the round in progress (from the module's ``images_seen``)."""
        return int(self._module.images_seen) - self.round_start_images if self._module is not None else 0

    @property
    def best_path(self) -> str:
        return os.path.join(self.dirpath, "best.pt")

    def round_path(self, n: int) -> str:
        """The full checkpoint written when round ``n`` (1-based) ends."""
        return os.path.join(self.dirpath, "rounds", f"round-{n}.ckpt")

    # ---- state ---------------------------------------------------------------------------------------
    STATE = (
        "round",
        "round_start_images",
        "best_score",
        "best_images",
        "evaluations",
        "promotions",
        "last_round_path",
        "warnings",
    )

    def state_dict(self) -> dict[str, Any]:
        """The state, and ``images_in_round`` for a reader of the checkpoint (derived: not read back)."""
        return {**{k: getattr(self, k) for k in self.STATE}, "images_in_round": self.images_in_round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if "history" in state:  # a checkpoint from before the records were split: one mixed list
            history = state.pop("history")
            state["evaluations"] = [h for h in history if "metrics" in h]
            state["promotions"] = [h for h in history if "improved" in h]
        if "round_start_images" not in state:  # ... and before the round's start was kept: fixed at train start
            self._legacy_images_in_round = int(state.get("images_in_round", 0))
        for k in self.STATE:
            if k in state:
                setattr(self, k, state[k])

    # ---- hooks ---------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            if not isinstance(pl_module, DDOModule):
                raise TypeError(f"SelfPlay needs a DDOModule, got {type(pl_module).__name__}")
            if pl_module.evaluator is None:
                raise ValueError(
                    "SelfPlay picks each round's best checkpoint by an evaluation: give the module an `evaluator`"
                )
            self._module = pl_module
            self.dirpath = self.dirpath or trainer.default_root_dir
            self.summary_path = self.summary_path or os.path.join(self.dirpath, "summary.json")
            os.makedirs(self.dirpath, exist_ok=True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the checkpoint's callback states are restored before on_fit_start (except with ModelParallelStrategy:
        # on_train_start checks again); stopping here skips the training loop and every write
        self._stop_if_finished(trainer)

    def _stop_if_finished(self, trainer: pl.Trainer) -> bool:
        if self.round < self.rounds:
            return False
        if not trainer.should_stop:
            rank_zero_info(
                f"[selfplay] this run already finished its {self.rounds} rounds: nothing to train, "
                "nothing rewritten (give more `rounds` to continue it)"
            )
        trainer.should_stop = True
        return True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_train_start, not on_fit_start: with ModelParallelStrategy (FSDP2) Lightning restores a
        # checkpoint after on_fit_start, and the round, reference and pool must be the restored ones
        self._t0 = time.perf_counter()
        if self._stop_if_finished(trainer):
            return
        self._trained = True
        if self._legacy_images_in_round is not None:
            self.round_start_images = int(pl_module.images_seen) - self._legacy_images_in_round
            self._legacy_images_in_round = None
        fresh = self.best_score is None  # a fresh start: the reference itself is the first candidate
        if fresh:
            self.round_start_images = int(pl_module.images_seen)
        self._checked_images = self.images_in_round
        pl_module.start_round(self.round)
        if fresh:
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        before, now = self._checked_images, self.images_in_round
        self._checked_images = now
        pl_module.log("round", float(self.display_round))
        round_done = now >= self.images_per_round
        if round_done or now // self.eval_every_images > before // self.eval_every_images:
            self._evaluate(trainer, pl_module)
        if round_done:
            self._end_round(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self._trained:
            self._write_report(trainer)
            rank_zero_info(self.table())
        ends = self.promotions
        if ends and not any(h.get("weights_changed", True) for h in ends):
            # after the summary is written: nothing is lost, but the exit status says the run did nothing
            raise WeightsNeverChangedError(
                f"no round changed the weights ({len(ends)} round(s), summary: {self.summary_path}): "
                + self.warnings[-1]
            )

    @property
    def display_round(self) -> int:
        """The round in progress, counted from 1 (what messages, logs and file names show)."""
        return self.round + 1

    # ---- evaluation and promotion --------------------------------------------------------------------
    def _better(self, score: float) -> bool:
        if self.best_score is None:
            return True
        if math.isnan(score):
            return False
        return score < self.best_score if self.mode == "min" else score > self.best_score

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = pl_module.evaluate()
        if self.monitor not in metrics:
            raise KeyError(f"SelfPlay monitors '{self.monitor}' but the evaluator returned {sorted(metrics)}")
        score = metrics[self.monitor]
        entry = {
            "round": self.round,
            "kimg_in_round": self.images_in_round / 1000,
            "kimg": int(pl_module.images_seen) / 1000,
            "metrics": metrics,
        }
        self.evaluations.append(entry)
        report.publish_evaluation(
            trainer, pl_module, metrics, round_index=self.display_round, kimg_in_round=entry["kimg_in_round"]
        )
        if self._better(score):
            self.best_score, self.best_images = score, self.images_in_round
            net = pl_module.ema.model
            weights = on_rank_zero(net, trainer.is_global_zero, lambda: full_state_dict(net))
            if weights is not None:
                atomic_torch_save(weights, self.best_path)
            trainer.strategy.barrier("selfplay-best")
        others = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k != self.monitor)
        rank_zero_info(
            f"[round {self.display_round} @ {entry['kimg_in_round']:.1f} kimg] {self.monitor}={_fmt(score)} "
            f"(best {_fmt(self.best_score)} @ {self.best_images / 1000:.1f} kimg) | {others}"
        )

    def _end_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        weights = read_tensor_file(self.best_path, map_location=pl_module.device)
        improved = self.best_images > 0
        changed = target_moved(trainer, pl_module)  # before promote() overwrites the target
        if not changed:
            self.warnings.append(vanished_update_message(self.display_round, pl_module))
            rank_zero_warn(self.warnings[-1])
        pl_module.promote(weights)
        rank_zero_info(
            f"[round {self.display_round}] promoted the EMA at {self.best_images / 1000:.1f} kimg ({self.monitor}={_fmt(self.best_score)})"
            if improved
            else f"[round {self.display_round}] nothing beat the round's starting weights: the reference carries over unchanged"
        )
        self.promotions.append(
            {
                "round": self.round,
                "promoted_kimg_in_round": self.best_images / 1000,
                "improved": improved,
                "best_score": self.best_score,
                "weights_changed": changed,
            }
        )
        finished = self.round + 1
        self.round, self.best_images = finished, 0  # best_score: the new reference's
        self.round_start_images = self._checked_images = int(pl_module.images_seen)
        pl_module.start_round(self.round)
        if self.round >= self.rounds:
            trainer.should_stop = True
        path = self.round_path(finished)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"  # a sharded checkpoint is a directory that its IO does not write atomically
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, path)
            self._write_report(trainer)
        trainer.strategy.barrier("selfplay-round")
        self.last_round_path = path

    # ---- reporting (training.report) ----------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The starting reference's metrics and, per round, the metrics of the promoted checkpoint."""
        wall = time.perf_counter() - self._t0 if self._t0 is not None else None
        return report.summary(self.evaluations, self.promotions, self.monitor, self.mode, self.warnings, wall)

    def table(self) -> str:
        return report.table(self.summary())

    def _write_report(self, trainer: pl.Trainer) -> None:
        """``summary.json``, and ``curve.png`` in each file logger's directory (else in ``dirpath``)."""
        report.write_summary(self.summary_path, self.summary())
        report.write_curve(
            report.logger_dirs(trainer) or [self.dirpath], self.evaluations, self.promotions, self.monitor
        )
