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

A round may try several *candidates* (``candidates``: overrides of the round's hyper-parameters, e.g.
α and β; ``training.search``). They run one after another, each for ``kimg_per_round``: each starts from
the round's reference (target and EMA reset to it, a fresh Adam), with its overrides applied (objective
attributes, the optimizer's lr, the EMA length) and its own training-noise seed
(``search.candidate_seed``: base seed, round, overrides), on the same fake pool rewound to its start, with
the same fixed-seed evaluations. The best (candidate, evaluation) of the round, the reference's own
included, is promoted. The candidate in progress, where it started and its overrides are in every
checkpoint, and a resume re-applies the overrides (objective attributes are not in the state dict).
No candidates (or one without overrides) is a plain round, number for number.

The MLE *control* (``control``, docs/search.md "The MLE control"): after the last round, the run's
starting reference (saved as ``reference-start.pt`` when the run starts) is trained further by the model
family's MLE objective (``objectives.mle_counterpart``: DSM with the same P_mean/P_std, or TokenMLE with
the same label_drop), on real batches alone, for exactly as many real images as the DDO rounds of this
fit consumed together (every candidate's), with the module's lr, betas and EMA settings (fresh Adam and
EMA), evaluated on the rounds' schedule with the selection seeds; its best evaluation (the starting
reference included) is selected like a round's. Its records are kept apart (``control_evaluations``,
``control_record``) and logged under ``control/``.

Report seeds (``report_seed_sets`` K ≥ 3): every reported model (the starting reference, each round's
promoted weights, the control's selected weights) is evaluated again on K seed sets disjoint from the
selection seeds (``base.evaluation_seed``), each when it is current (at the run's start, at its round's
end, at the control's end), so nothing is kept on disk for it; ``summary.json`` reports mean ± std and
``claims`` (``training.report``).

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

from ...errors import SearchError, WeightsNeverChangedError
from ...files import atomic_torch_save, read_tensor_file
from ...losses import check_alpha_beta
from ...objectives import mle_counterpart
from ...protocols import RoundAware
from .. import report, search
from ..ema import PowerEMA, sigma_rel_to_gamma
from ..module import DDOModule
from ..report import fmt as _fmt
from ..sharding import (
    full_state_dict,
    is_sharded,
    load_full_state_dict,
    local_part,
    on_rank_zero,
    reset_optimizer_state,
)


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


def vanished_update_message(round_number: int | str, pl_module: Any) -> str:
    """Why round ``round_number``'s weights (or a named candidate's) did not move, from the objective's α,
    β and Adam's state."""
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
        f"{round_number if isinstance(round_number, str) else f'round {round_number}'}: weights never changed (α={float(alpha):g}, β={float(beta):g}: Adam's update vanished) — "
        f"{why}; the target is bit-identical to the round's reference. Lower alpha/beta (the paper: alpha in "
        "[0.5, 50], beta in [0.01, 0.1]) or raise lr."
    )


class SelfPlay(pl.Callback):
    """Rounds of DDO with best-checkpoint promotion, over the round's evaluations and candidates.

    Args:
        rounds: the last round to play (1-based); training stops after its promotion.
        kimg_per_round: real images per round, in thousands (paper: 1500 for CIFAR-10); per candidate
            when the round tries several.
        eval_every_kimg: evaluate the EMA every this many kimg (the round's end is always evaluated).
        monitor: the evaluator's metric that picks the best checkpoint (e.g. 'energy_distance', 'fid').
        mode: 'min' if lower is better.
        dirpath: where ``best.pt``, ``summary.json`` and ``rounds/round-N.ckpt`` go (default: the trainer's
            ``default_root_dir``, which ``ddo fit`` sets to the run directory).
        summary_path: where the JSON summary goes (default ``<dirpath>/summary.json``): the starting
            reference's metrics, and per round the promoted checkpoint's metrics and its evaluation curve.
        candidates: the round's hyper-parameter candidates, each a dict of overrides keyed as in
            ``training.search.ROUND_KEYS`` (e.g. ``{model.objective.alpha: 2, model.objective.beta: 0.05}``;
            ``{}`` is the preset's settings). None or ``[]``: one candidate without overrides, the plain round.
        start_round: the first round this fit plays (1-based): a fit that plays one round of a longer run
            (``ddo slurm --sweep``: ``--selfplay.start_round R --selfplay.rounds R``) from that round's
            reference. Its fakes and seeds are those of round ``start_round``.
        allow_large_search: allow more than ``search.MAX_CANDIDATES`` candidates.
        control: after the last round, train the MLE control (see above) and report it in ``summary.json``
            (``control``) beside the rounds.
        report_seed_sets: 0 (no report evaluations) or K ≥ 3: re-evaluate every reported model on K seed
            sets disjoint from the selection seeds; ``summary.json`` gets ``report`` (mean ± std) and
            ``claims`` (an improvement only with a margin above 2 std).

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
        candidates: list[dict[str, float]] | None = None,
        start_round: int = 1,
        allow_large_search: bool = False,
        control: bool = False,
        report_seed_sets: int = 0,
    ):
        if rounds < 1 or not kimg_per_round > 0 or not eval_every_kimg > 0:
            raise ValueError("rounds, kimg_per_round and eval_every_kimg must be positive")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if isinstance(start_round, bool) or not isinstance(start_round, int) or not 1 <= start_round <= rounds:
            raise ValueError(f"start_round must be a round number from 1 to rounds={rounds}, got {start_round!r}")
        if (
            isinstance(report_seed_sets, bool)
            or not isinstance(report_seed_sets, int)
            or not (report_seed_sets == 0 or report_seed_sets >= 3)
        ):
            raise ValueError(
                f"report_seed_sets must be 0 (no report evaluations) or at least 3 (a mean ± std), got {report_seed_sets!r}"
            )
        if not isinstance(control, bool):
            raise ValueError(f"control must be true or false, got {control!r}")
        self.control, self.report_seed_sets = control, report_seed_sets
        self.rounds, self.monitor, self.mode, self.dirpath = rounds, monitor, mode, dirpath
        self.summary_path = summary_path  # None: <dirpath>/summary.json, once dirpath is known (setup)
        self.images_per_round = int(kimg_per_round * 1000)
        self.eval_every_images = int(eval_every_kimg * 1000)
        self.candidates = search.check_candidates(candidates, allow_large_search) if candidates else [{}]
        self.searching = self.candidates != [{}]  # else: the plain round (no candidate fields in the logs)
        self.labels = [search.candidate_label(c) for c in self.candidates]
        self.start_round = start_round
        # state (saved in every checkpoint)
        self.round = start_round - 1
        self.round_start_images = 0  # the module's images_seen when the round in progress started
        self.candidate = 0  # the candidate in progress (0-based index into candidates)
        self.candidate_start_images = 0  # images_seen when it started (= round_start_images for the first)
        self.candidate_start_step = 0  # global step when it started (its noise stream counts from there)
        self.candidates_moved: list[bool] = []  # whether each finished candidate of the round moved its target
        self.best_score: float | None = None
        self.best_images = 0  # images into its candidate at the best evaluation (0: the round's starting weights)
        self.best_candidate = 0  # the candidate of the best evaluation
        self.evaluations: list[dict[str, Any]] = []  # one per evaluation: round, kimg_in_round, kimg, metrics
        self.promotions: list[dict[str, Any]] = []  # one per finished round (see training.report)
        self.last_round_path: str | None = None
        self.warnings: list[str] = []  # rounds whose weights never changed (also in summary.json)
        self._trained = False  # whether this fit ran (a finished run resumed does not: nothing is rewritten)
        self._module: Any = None  # the trained module (setup): its images_seen counts the images
        self._checked_images = 0  # images in the candidate at the last evaluation check
        self._legacy_images_in_round: int | None = None
        self._baseline: dict[str, float] = {}  # the module's own values of the keys any candidate overrides
        self.run_start_images = 0  # images_seen when this fit's first round started
        self.ddo_images = 0  # real images the finished rounds of this fit consumed (every candidate's)
        self.phase = "rounds"  # "rounds", then with `control` "control", then "done"
        self.control_images = 0  # the control's budget: the real images the DDO rounds consumed
        self.control_start_images = 0  # images_seen when the control started
        self.control_best_score: float | None = None
        self.control_best_images = 0  # images into the control at its best evaluation (0: the reference)
        self.control_evaluations: list[dict[str, Any]] = []  # {"kimg_in_control", "kimg", "metrics"}
        self.control_record: dict[str, Any] | None = None  # the finished control (training.report)
        self.reports: list[dict[str, Any]] = []  # {"model": "reference" | "round N" | "control", "sets": [...]}

    @property
    def images_in_round(self) -> int:
        """Real images trained on in the round in progress (from the module's ``images_seen``); with
        several candidates, in the candidate in progress."""
        return int(self._module.images_seen) - self.candidate_start_images if self._module is not None else 0

    @property
    def best_path(self) -> str:
        return os.path.join(self.dirpath, "best.pt")

    @property
    def start_path(self) -> str:
        """The run's starting reference weights (written at a fresh start when ``control`` is on)."""
        return os.path.join(self.dirpath, "reference-start.pt")

    @property
    def control_best_path(self) -> str:
        return os.path.join(self.dirpath, "control-best.pt")

    @property
    def images_in_control(self) -> int:
        return int(self._module.images_seen) - self.control_start_images if self._module is not None else 0

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
        "candidate",
        "candidate_start_images",
        "candidate_start_step",
        "candidates_moved",
        "best_candidate",
        "run_start_images",
        "ddo_images",
        "phase",
        "control_images",
        "control_start_images",
        "control_best_score",
        "control_best_images",
        "control_evaluations",
        "control_record",
        "reports",
    )

    def state_dict(self) -> dict[str, Any]:
        """The state, and for a reader of the checkpoint (derived: not read back) ``images_in_round`` and
        the overrides of the candidate in progress (``candidate_overrides``, ``candidate_label``)."""
        state = {**{k: getattr(self, k) for k in self.STATE}, "images_in_round": self.images_in_round}
        if self.searching:
            state["candidate_overrides"] = dict(self.candidates[self.candidate])
            state["candidate_label"] = self.labels[self.candidate]
            state["candidates"] = [dict(c) for c in self.candidates]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if "history" in state:  # a checkpoint from before the records were split: one mixed list
            history = state.pop("history")
            state["evaluations"] = [h for h in history if "metrics" in h]
            state["promotions"] = [h for h in history if "improved" in h]
        if "round_start_images" not in state:  # ... and before the round's start was kept: fixed at train start
            self._legacy_images_in_round = int(state.get("images_in_round", 0))
        if "candidate_start_images" not in state:  # ... and before candidates: the round's one candidate
            state["candidate_start_images"] = state.get("round_start_images", 0)
        saved = [dict(c) for c in state.get("candidates") or [{}]]
        mid_round = int(state.get("candidate", 0)) > 0 or int(state.get("images_in_round", 0)) > 0
        if mid_round and saved != self.candidates:  # at a round's boundary the next round may search anything
            raise SearchError(
                "this checkpoint was written in the middle of a round that tries "
                f"{', '.join(search.candidate_label(c) for c in saved)}; this SelfPlay tries "
                f"{', '.join(self.labels)}: resume it with the same candidates"
            )
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
            if self.searching:
                self._baseline = self.check_candidates_against(pl_module)
            self._module = pl_module
            self.dirpath = self.dirpath or trainer.default_root_dir
            self.summary_path = self.summary_path or os.path.join(self.dirpath, "summary.json")
            os.makedirs(self.dirpath, exist_ok=True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the checkpoint's callback states are restored before on_fit_start (except with ModelParallelStrategy:
        # on_train_start checks again); stopping here skips the training loop and every write
        self._stop_if_finished(trainer)

    def _stop_if_finished(self, trainer: pl.Trainer) -> bool:
        if self.round < self.rounds or (self.control and self.phase != "done"):
            return False
        if not trainer.should_stop:
            rank_zero_info(
                f"[selfplay] this run already finished its {self.rounds} rounds"
                + (" and its MLE control" if self.phase == "done" else "")
                + ": nothing to train, nothing rewritten (give more `rounds` to continue it)"
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
            self.candidate_start_images = self.round_start_images
            self._legacy_images_in_round = None
        fresh = self.best_score is None  # a fresh start: the reference itself is the first candidate
        if fresh:
            self.round_start_images = self.candidate_start_images = int(pl_module.images_seen)
            self.run_start_images = self.round_start_images
            self.candidate_start_step = int(trainer.global_step)
            if self.control:  # the control starts from these weights after the last round
                self._save_weights(trainer, pl_module.reference, self.start_path, "selfplay-start")
        elif self.control and self.phase == "rounds" and not os.path.isfile(self.start_path):
            raise FileNotFoundError(
                f"control: the run's starting reference {self.start_path} is missing (a run started without "
                "`control` cannot add it later: its starting weights were not kept); set control: false"
            )
        if self.phase == "done" and self.round < self.rounds:  # more rounds asked after the control
            self._reopen_rounds(trainer, pl_module)
        if self.phase == "control":  # resumed inside the control
            self._checked_images = self.images_in_control
            self._enter_control(trainer, pl_module)
            return
        if self.round >= self.rounds:  # the rounds are done (round-N.ckpt): the control starts now
            self._start_control(trainer, pl_module)
            return
        self._checked_images = self.images_in_round
        pl_module.start_round(self.round)
        if self.searching:  # a resumed candidate: its overrides again (objective attributes are not saved)
            self._apply_candidate(trainer, pl_module)
            if fresh:
                rank_zero_info(self._candidate_banner())
        if fresh:
            self._evaluate(trainer, pl_module)
            self._report_evaluations(pl_module, "reference")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.phase == "control":
            self._control_step(trainer, pl_module)
            return
        pl_module.log("round", float(self.display_round))
        if self.searching:
            pl_module.log("candidate", float(self.candidate))
        evaluate, done = self._step_checks(self.images_in_round, self.images_per_round)
        if evaluate:
            self._evaluate(trainer, pl_module)
        if not done:
            return
        if self.candidate + 1 < len(self.candidates):
            self._next_candidate(trainer, pl_module)
        else:
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

    @property
    def where(self) -> str:
        """``round 2`` or, in a search, ``round 2 · candidate 3/4 alpha=2,beta=0.05``."""
        text = f"round {self.display_round}"
        if self.searching:
            text += f" · candidate {self.candidate + 1}/{len(self.candidates)} {self.labels[self.candidate]}"
        return text

    # ---- candidates (training.search) ------------------------------------------------------------------
    def check_candidates_against(self, pl_module: Any) -> dict[str, float]:
        """Every candidate's keys exist on this module and its values are valid there (before any step);
        returns the module's own value of each overridden key (restored for candidates that leave it)."""
        keys = {k for c in self.candidates for k in c}
        baseline: dict[str, float] = {}
        for key in keys:
            baseline[key] = self._current(pl_module, key)
        for i, cand in enumerate(self.candidates):
            for key, value in cand.items():
                name = f"candidate {i + 1} ({self.labels[i]}): {key}={value:g}"
                try:
                    self._check_value(pl_module, key, value)
                except (TypeError, ValueError) as e:
                    raise SearchError(f"{name}: {e}") from None
        return baseline

    @staticmethod
    def _current(pl_module: Any, key: str) -> float:
        """The module's value of a round key, or a SearchError naming what this module lacks."""
        objective = pl_module.objective
        if key.startswith("model.objective."):
            attr = key.rsplit(".", 1)[-1]
            value = getattr(objective, attr, None)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SearchError(
                    f"a candidate sets {key}, but this run's objective {type(objective).__name__} has no "
                    f"`{attr}`: candidates may only change what the module has"
                )
            return float(value)
        if key == "model.lr":
            return float(pl_module.lr)
        ema = pl_module.ema
        if key == "model.ema_sigma_rel":
            if not isinstance(ema, PowerEMA):
                raise SearchError(
                    f"a candidate sets {key}, but this module's EMA is the half-life EMA (no ema_sigma_rel "
                    "given): set model.ema_halflife_kimg instead, or give the module ema_sigma_rel"
                )
            return float(ema.sigma_rel)
        if isinstance(ema, PowerEMA):  # model.ema_halflife_kimg
            raise SearchError(
                f"a candidate sets {key}, but this module uses the power-function EMA (ema_sigma_rel="
                f"{ema.sigma_rel:g}), which has no half-life: set model.ema_sigma_rel instead"
            )
        return ema.halflife_images / 1000.0

    @staticmethod
    def _check_value(pl_module: Any, key: str, value: float) -> None:
        if key in ("model.objective.alpha", "model.objective.beta"):
            objective = pl_module.objective
            alpha = value if key.endswith("alpha") else objective.alpha
            beta = value if key.endswith("beta") else objective.beta
            check_alpha_beta(alpha, beta)
        elif key == "model.ema_sigma_rel":
            sigma_rel_to_gamma(value)
        elif key != "model.objective.P_mean" and not value > 0:
            raise ValueError(f"{key.rsplit('.', 1)[-1]} must be > 0")

    def _set(self, pl_module: Any, key: str, value: float) -> None:
        if key.startswith("model.objective."):
            setattr(pl_module.objective, key.rsplit(".", 1)[-1], value)
        elif key == "model.lr":
            pl_module.lr = value
            pl_module.apply_lr()
        elif key == "model.ema_sigma_rel":
            pl_module.ema.sigma_rel, pl_module.ema.gamma = value, sigma_rel_to_gamma(value)
            pl_module.ema_sigma_rel = value
        else:  # model.ema_halflife_kimg
            pl_module.ema.halflife_images = value * 1000.0
            pl_module.ema_halflife_kimg = value

    def _apply_candidate(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """The candidate in progress's overrides (the module's own values for the keys it leaves; P_std
        after the round's ``P_std_schedule``) and its noise stream. Called at its start and on resume."""
        cand = self.candidates[self.candidate]
        for key, value in self._baseline.items():
            if key not in cand:
                self._set(pl_module, key, value)
        pl_module.start_round(self.round)  # the round's schedule (P_std) unless the candidate overrides it
        for key, value in cand.items():
            self._set(pl_module, key, value)
        seed = search.candidate_seed(int(pl_module.seed), self.display_round, cand)
        pl_module.step_stream = (seed, self.candidate_start_step)

    def _candidate_banner(self) -> str:
        cand = self.candidates[self.candidate]
        settings = ", ".join(f"{k}={v:g}" for k, v in cand.items()) or "the preset's settings"
        return f"[{self.where}] starts from the round's reference: {settings}"

    def _finish_candidate(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Whether the candidate's target moved (before the next start overwrites it): kept for the round."""
        moved = target_moved(trainer, pl_module)
        self.candidates_moved.append(moved)
        if not moved:
            what = self.where if self.searching else self.display_round
            self.warnings.append(vanished_update_message(what, pl_module))
            rank_zero_warn(self.warnings[-1])

    def _next_candidate(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """The next candidate of the round: from the round's reference, fresh Adam and EMA, the same fakes
        from their start, its overrides and its seed."""
        self._finish_candidate(trainer, pl_module)
        pl_module.restart_from_reference()
        trainer.datamodule.restart_fakes()
        self.candidate += 1
        self.candidate_start_images = self._checked_images = int(pl_module.images_seen)
        self.candidate_start_step = int(trainer.global_step)
        self._apply_candidate(trainer, pl_module)
        rank_zero_info(self._candidate_banner())

    # ---- evaluation and promotion --------------------------------------------------------------------
    def _better(self, score: float, best: float | None = None, control: bool = False) -> bool:
        best = self.best_score if not control else best
        if best is None:
            return True
        if math.isnan(score):
            return False
        return score < best if self.mode == "min" else score > best

    def _save_weights(self, trainer: pl.Trainer, net: Any, path: str, barrier: str) -> None:
        """``net``'s full weights to ``path`` (rank 0 writes, atomically; every rank gathers a sharded net)."""
        weights = on_rank_zero(net, trainer.is_global_zero, lambda: full_state_dict(net))
        if weights is not None:
            atomic_torch_save(weights, path)
        trainer.strategy.barrier(barrier)

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
            "candidate": self.candidate,
            "candidate_label": self.labels[self.candidate],
        }
        self.evaluations.append(entry)
        report.publish_evaluation(
            trainer,
            pl_module,
            metrics,
            round_index=self.display_round,
            kimg_in_round=entry["kimg_in_round"],
            candidate=self.candidate if self.searching else None,
        )
        if self._better(score):
            self.best_score, self.best_images, self.best_candidate = score, self.images_in_round, self.candidate
            self._save_weights(trainer, pl_module.ema.model, self.best_path, "selfplay-best")
        others = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k != self.monitor)
        best_at = f"{self.best_images / 1000:.1f} kimg"
        if self.searching:
            best_at += f" of candidate {self.best_candidate + 1}" if self.best_images else " (the reference)"
        rank_zero_info(
            f"[{self.where} @ {entry['kimg_in_round']:.1f} kimg] {self.monitor}={_fmt(score)} "
            f"(best {_fmt(self.best_score)} @ {best_at}) | {others}"
        )

    def _end_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_candidate(trainer, pl_module)  # before promote() overwrites the target
        weights = read_tensor_file(self.best_path, map_location=pl_module.device)
        improved = self.best_images > 0
        changed = any(self.candidates_moved)
        pl_module.promote(weights)
        if improved or not self.reports:  # the EMA holds the promoted weights now
            self._report_evaluations(pl_module, f"round {self.display_round}")
        elif self.report_seed_sets:  # carried over: the same weights as the previous model, the same numbers
            self.reports.append({"model": f"round {self.display_round}", "sets": self.reports[-1]["sets"]})
        which = f" of candidate {self.best_candidate + 1} {self.labels[self.best_candidate]}" if self.searching else ""
        rank_zero_info(
            f"[round {self.display_round}] promoted the EMA at {self.best_images / 1000:.1f} kimg{which} ({self.monitor}={_fmt(self.best_score)})"
            if improved
            else f"[round {self.display_round}] nothing beat the round's starting weights: the reference carries over unchanged"
        )
        promotion = {
            "round": self.round,
            "promoted_kimg_in_round": self.best_images / 1000,
            "improved": improved,
            "best_score": self.best_score,
            "weights_changed": changed,
        }
        if self.searching:
            promotion["candidate"] = self.best_candidate if improved else None
            promotion["candidate_label"] = self.labels[self.best_candidate] if improved else None
            promotion["candidates_moved"] = list(self.candidates_moved)
        self.promotions.append(promotion)
        self.ddo_images += int(pl_module.images_seen) - self.round_start_images
        finished = self.round + 1
        self.round, self.best_images, self.best_candidate = finished, 0, 0  # best_score: the new reference's
        self.candidate, self.candidates_moved = 0, []
        self.round_start_images = self.candidate_start_images = self._checked_images = int(pl_module.images_seen)
        self.candidate_start_step = int(trainer.global_step)
        pl_module.start_round(self.round)
        if self.round >= self.rounds:
            trainer.should_stop = not self.control  # with a control: it starts after round-N.ckpt is written
        elif self.searching:
            self._apply_candidate(trainer, pl_module)
            rank_zero_info(self._candidate_banner())
        self._save_run_checkpoint(trainer, self.round_path(finished), "selfplay-round")
        if self.round >= self.rounds and self.control:
            self._start_control(trainer, pl_module)

    # ---- the MLE control ------------------------------------------------------------------------------
    def _start_control(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Target and EMA back to the run's starting reference, a fresh Adam and EMA; the budget is every
        real image the rounds of this fit consumed. The 0-kimg point is the reference's own evaluation."""
        if not os.path.isfile(self.start_path):
            raise FileNotFoundError(
                f"control: the run's starting reference {self.start_path} is missing (written when a run with "
                "`control` starts); set control: false"
            )
        self.phase = "control"
        now = int(pl_module.images_seen)
        self.control_images = self.ddo_images
        self.control_start_images = self._checked_images = now
        weights = read_tensor_file(self.start_path, map_location=pl_module.device)
        with torch.no_grad():
            for net in (pl_module.target, pl_module.ema.model):
                load_full_state_dict(net, weights)
            pl_module.ema.images.zero_()
            for opt in trainer.optimizers:
                reset_optimizer_state(opt, is_sharded(pl_module.target))
        start = self._fit_reference_evaluation()
        self.control_best_score = start["metrics"][self.monitor] if start else None
        self.control_best_images = 0
        self.control_evaluations = (
            [{"kimg_in_control": 0.0, "kimg": now / 1000, "metrics": dict(start["metrics"])}] if start else []
        )
        self._enter_control(trainer, pl_module)
        rank_zero_info(
            f"[control] MLE ({type(pl_module.control_objective).__name__}) from the run's starting reference for "
            f"{self.control_images / 1000:g} kimg (every real image the DDO rounds consumed)"
        )

    def _reopen_rounds(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """A finished run given more ``rounds``: the control's weights leave (target and EMA back to the
        last promoted reference, fresh Adam and EMA), its records are dropped, and the next round starts;
        the control runs again after the new last round, for all the rounds' images."""
        pl_module.restart_from_reference()
        pl_module.control_objective = None
        trainer.datamodule.real_only = False
        self.phase, self.control_record, self.control_evaluations = "rounds", None, []
        self.control_best_score, self.control_best_images = None, 0
        self.reports = [r for r in self.reports if r["model"] != "control"]
        now = int(pl_module.images_seen)
        self.round_start_images = self.candidate_start_images = now
        self.candidate_start_step = int(trainer.global_step)
        rank_zero_info(f"[selfplay] more rounds after the MLE control: round {self.display_round} starts")

    def _fit_reference_evaluation(self) -> dict[str, Any] | None:
        """The evaluation of the reference this fit started from (its first round's 0-kimg point)."""
        first = self.start_round - 1
        return next((h for h in self.evaluations if h["round"] == first and h["kimg_in_round"] == 0), None)

    def _enter_control(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """The control's settings (at its start and on resume): the module's own lr/EMA/objective values
        (no candidate's overrides), the first round's P_std, the MLE objective, real batches only, the
        run's noise stream."""
        for key, value in self._baseline.items():
            self._set(pl_module, key, value)
        objective = pl_module.objective
        if isinstance(objective, RoundAware):  # the first round's settings (P_std_schedule) for the control
            objective.start_round(self.start_round - 1)
        pl_module.control_objective = mle_counterpart(objective)
        pl_module.start_round(self.round)  # the finished rounds' index again (figures name the final round)
        pl_module.step_stream = None
        trainer.datamodule.real_only = True

    def _step_checks(self, now: int, budget: int) -> tuple[bool, bool]:
        """After a step that reached ``now`` images of a phase (a candidate's, or the control's) with a budget
        of ``budget``: (evaluate now: an ``eval_every_kimg`` boundary was crossed or the phase is done, done)."""
        before, self._checked_images = self._checked_images, now
        done = now >= budget
        return done or now // self.eval_every_images > before // self.eval_every_images, done

    def _control_step(self, trainer: pl.Trainer, pl_module: Any) -> None:
        evaluate, done = self._step_checks(self.images_in_control, self.control_images)
        if evaluate:
            self._evaluate_control(trainer, pl_module)
        if done:
            self._end_control(trainer, pl_module)

    def _evaluate_control(self, trainer: pl.Trainer, pl_module: Any) -> None:
        metrics = pl_module.evaluate()
        score = metrics[self.monitor]
        entry = {"kimg_in_control": self.images_in_control / 1000, "kimg": int(pl_module.images_seen) / 1000}
        self.control_evaluations.append(entry | {"metrics": metrics})
        report.publish_evaluation(trainer, pl_module, metrics, prefix="control")
        if self._better(score, self.control_best_score, control=True):
            self.control_best_score, self.control_best_images = score, self.images_in_control
            self._save_weights(trainer, pl_module.ema.model, self.control_best_path, "selfplay-control-best")
        rank_zero_info(
            f"[control @ {entry['kimg_in_control']:.1f} kimg] {self.monitor}={_fmt(score)} "
            f"(best {_fmt(self.control_best_score)} @ {self.control_best_images / 1000:.1f} kimg)"
        )

    def _end_control(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """The control's selected weights into the EMA (the starting reference when nothing beat it), their
        report evaluations, ``rounds/control.ckpt``, the summary; the run stops."""
        path = self.control_best_path if self.control_best_images > 0 else self.start_path
        load_full_state_dict(pl_module.ema.model, read_tensor_file(path, map_location=pl_module.device))
        self._report_evaluations(pl_module, "control")
        self.control_record = {
            "kimg": self.control_images / 1000,
            "selected_kimg": self.control_best_images / 1000,
            "improved": self.control_best_images > 0,
            "best_score": self.control_best_score,
        }
        self.phase = "done"
        trainer.should_stop = True
        pl_module.control_objective = None
        trainer.datamodule.real_only = False
        rank_zero_info(
            f"[control] selected the EMA at {self.control_best_images / 1000:.1f} kimg "
            f"({self.monitor}={_fmt(self.control_best_score)})"
        )
        self._save_run_checkpoint(trainer, os.path.join(self.dirpath, "rounds", "control.ckpt"), "selfplay-control")

    def _save_run_checkpoint(self, trainer: pl.Trainer, path: str, barrier: str) -> None:
        """The full checkpoint at ``path`` (a round's or the control's end), then the report (summary.json)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"  # a sharded checkpoint is a directory that its IO does not write atomically
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, path)
            self._write_report(trainer)
        trainer.strategy.barrier(barrier)
        self.last_round_path = path

    # ---- report seeds -----------------------------------------------------------------------------------
    def _report_evaluations(self, pl_module: Any, model: str) -> None:
        """The EMA's metrics on each report seed set (none when ``report_seed_sets`` is 0)."""
        if not self.report_seed_sets:
            return
        sets = [pl_module.evaluate(seed_set=k) for k in range(self.report_seed_sets)]
        self.reports.append({"model": model, "sets": sets})
        rank_zero_info(f"[report] {model}: " + report.mean_std_line(sets, self.monitor))

    # ---- reporting (training.report) ----------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The starting reference's metrics and, per round, the metrics of the promoted checkpoint; in a
        search, every candidate's curve too."""
        wall = time.perf_counter() - self._t0 if self._t0 is not None else None
        return report.summary(
            self.evaluations,
            self.promotions,
            self.monitor,
            self.mode,
            self.warnings,
            wall,
            candidates=self.candidates if self.searching else None,
            control=self._control_summary(),
            reports=self.reports or None,
            provenance=self._provenance(),
        )

    def _control_summary(self) -> dict[str, Any] | None:
        if not self.control or self.phase == "rounds":
            return None
        return report.control_summary(
            self.control_evaluations, self.control_record, self.control_images, self.monitor, self.mode
        )

    def _provenance(self) -> dict[str, Any] | None:
        """How the numbers were measured: the selection seeds' and each report set's provenance."""
        mod = self._module
        if mod is None or mod.sample_shape is None:
            return None
        out = {"selection": mod.evaluation_provenance(None)}
        if self.report_seed_sets:
            out["report"] = [mod.evaluation_provenance(k) for k in range(self.report_seed_sets)]
        return out

    def table(self) -> str:
        return report.table(self.summary())

    def _write_report(self, trainer: pl.Trainer) -> None:
        """``summary.json``, and ``curve.png`` (in a search also ``candidates-round-N.png``) in each file
        logger's directory (else in ``dirpath``)."""
        report.write_summary(self.summary_path, self.summary())
        dirs = report.logger_dirs(trainer) or [self.dirpath]
        report.write_curve(dirs, self.evaluations, self.promotions, self.monitor, self.control_evaluations)
        if self.searching:
            report.write_candidate_curves(dirs, self.evaluations, self.promotions, self.monitor, self.labels)
