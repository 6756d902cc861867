"""One directory per run, never clobbered: ``ddo fit --run_dir DIR``.

Every output of ``ddo fit`` derives from one root (default ``outputs/<stem of the first --config>``)::

    DIR/config.yaml              the resolved config the run started with
    DIR/checkpoints/             ModelCheckpoint files, last.ckpt (the final state, after resumes too)
    DIR/logs/metrics.csv         CSV log (RunCSVLogger), continued across resumes; hparams.yaml, curve.png, samples/
    DIR/rounds/round-N.ckpt      SelfPlay: full checkpoint at the end of round N
    DIR/best.pt, DIR/summary.json, DIR/samples.png

How the paths are filled (``fill_paths``): the CLI sets ``trainer.default_root_dir`` to DIR; the
project's callbacks (``SelfPlay``, the figures, ``Preemption``) put their files there when their path
argument is unset. For Lightning's own classes the CLI fills the unset keys: a ``ModelCheckpoint`` without
``dirpath`` gets ``DIR/checkpoints`` (and no ``-v1`` renaming: the run is the folder's only writer); no
logger configured gets ``RunCSVLogger`` in ``DIR/logs``; a configured logger with an unset ``save_dir``
(null, or W&B's ``"."``) gets DIR. A path a config does set is kept as it is (relative to the current
directory).

What a rerun does (``prepare_fit``):

* DIR has checkpoints (``checkpoints/*.ckpt``, ``rounds/*.ckpt``): resume from the newest readable one
  (an unreadable one is skipped with a warning). The config must agree with ``DIR/config.yaml`` in every
  key that changes the result (anything outside ``HARMLESS``), otherwise the run is refused with the
  differing keys, unless ``--force_resume`` (then the old config is kept as
  ``config.before-step-S.yaml``). A finished run resumed has nothing to do and rewrites nothing.
* ``--new_version``: when DIR already holds a run, start a fresh one in ``DIR-v2`` (``-v3``, ...).
* DIR holds results (``best.pt``, ``summary.json``, ``samples.png``, ``logs/metrics.csv``) but no
  checkpoint (killed before its first one): refused, suggesting ``--new_version`` — overwriting them
  would lose the earlier run's results. A DIR with nothing but ``config.yaml`` (a run that failed
  while setting up) is reused.
* An explicit ``--ckpt_path`` is honoured as given (Lightning's meaning); the config check still applies
  when DIR has a ``config.yaml``. With ``--new_version`` it starts a new versioned run from that checkpoint.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import RunDirError

RESULT_FILES = ("best.pt", "summary.json", "samples.png", os.path.join("logs", "metrics.csv"))
CHECKPOINT_GLOBS = (os.path.join("checkpoints", "*.ckpt"), os.path.join("rounds", "*.ckpt"))

# Keys (flattened with dots; callbacks keyed by class name) that may differ between the run's config and
# a resume's without changing what the run computes: lengths (extending a run is what resuming is for),
# output and logging, hardware placement, evaluation/generation batch sizes, the pretrained weights file
# (a resume takes every weight from the checkpoint). Everything else is compared.
HARMLESS = (
    "config",
    "run_dir",
    "new_version",
    "force_resume",
    "ckpt_path",
    "selfplay.*",  # --selfplay.*: in SelfPlay's
    "trainer.default_root_dir",
    "trainer.logger",
    "trainer.logger.*",
    "trainer.callbacks.*",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.max_time",
    "trainer.min_steps",
    "trainer.min_epochs",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "trainer.limit_predict_batches",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.strategy.*",
    "trainer.plugins",
    "trainer.plugins.*",
    "trainer.profiler",
    "trainer.profiler.*",
    "trainer.detect_anomaly",
    "trainer.barebones",
    "*.num_workers",
    "*.eval_batch_size",
    "*.generation_batch_size",
    "model.init_args.evaluator.*batch_size",
    "model.init_args.init_from",
)
# SelfPlay's settings do change the result (which EMA is promoted), except these
SELFPLAY_HARMLESS = ("rounds", "dirpath", "summary_path")


@dataclass
class RunPlan:
    """What ``ddo fit`` does with its run directory."""

    path: str
    ckpt_path: str | None = None  # the checkpoint to resume from (None: a fresh start)
    resume_step: int | None = None
    message: str = ""
    write_config: bool = True  # store the config as DIR/config.yaml
    keep_old_config_as: str | None = None  # --force_resume: the run's previous config.yaml moves here
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)


# ---- the directory --------------------------------------------------------------------------------------
def default_run_dir(config_files: list[Any] | None) -> str:
    """``outputs/<stem of the first config file>`` (``outputs/run`` without one)."""
    first = next((str(getattr(c, "relative", c)) for c in config_files or [] if c), None)
    return os.path.join("outputs", os.path.splitext(os.path.basename(first))[0] if first else "run")


def checkpoints_in(run_dir: str) -> list[str]:
    """The run's checkpoints (files, or folders of a sharded save), newest (modification time) first."""
    found = {p for pattern in CHECKPOINT_GLOBS for p in glob.glob(os.path.join(run_dir, pattern))}
    return sorted(found, key=os.path.getmtime, reverse=True)


def results_in(run_dir: str) -> list[str]:
    """The run's outputs worth keeping that exist (relative to ``run_dir``), checkpoints included."""
    found = [os.path.relpath(p, run_dir) for p in checkpoints_in(run_dir)]
    return found + [f for f in RESULT_FILES if os.path.exists(os.path.join(run_dir, f))]


def next_version(run_dir: str) -> str:
    """``run_dir-vK`` for the smallest K >= 2 that holds no results (so every rank of a job picks the same one)."""
    k = 2
    while results_in(f"{run_dir}-v{k}"):
        k += 1
    return f"{run_dir}-v{k}"


def newest_readable_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint of ``run_dir`` that loads; unreadable newer ones are skipped with a warning."""
    from lightning.pytorch.utilities import rank_zero_warn

    from .training.run_io import CorruptCheckpoint, check_checkpoint

    candidates = checkpoints_in(run_dir)
    bad = []
    for path in candidates:
        if os.path.isdir(path):  # a sharded checkpoint: its strategy reads (and checks) it
            return path
        try:
            check_checkpoint(path)
        except CorruptCheckpoint as err:
            bad.append(str(err))
            continue
        if bad:
            rank_zero_warn("; ".join(bad) + f". Resuming from the newest readable checkpoint instead: {path}")
        return path
    if bad:
        raise RunDirError(f"run directory {run_dir} has checkpoints but none can be read: " + "; ".join(bad))
    return None


def checkpoint_step(path: str) -> int | None:
    """``global_step`` of a checkpoint file (None for a sharded folder or a file without it)."""
    from .files import read_tensor_file

    if os.path.isdir(path):
        return None
    step = read_tensor_file(path, mmap=True).get("global_step")
    return int(step) if step is not None else None


# ---- config comparison ----------------------------------------------------------------------------------
def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``{"a.b.c": leaf}``; a list of ``class_path`` entries (callbacks, loggers) keyed by
    each entry's class name (``trainer.callbacks.SelfPlay.init_args.rounds``), so adding a callback does
    not renumber the others."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) and "class_path" in v for v in value):
        out, seen = {}, {}
        for v in value:
            name = str(v["class_path"]).rsplit(".", 1)[-1]
            seen[name] = seen.get(name, 0) + 1
            out.update(flatten(v, f"{prefix}.{name}" + (f"#{seen[name]}" if seen[name] > 1 else "")))
        return out
    return {prefix: value}


def changes_result(key: str) -> bool:
    """Whether a config key can change what a run computes (see ``HARMLESS``)."""
    if ".SelfPlay" in key or key.startswith("selfplay."):
        return key.rsplit(".", 1)[-1] not in SELFPLAY_HARMLESS
    return not any(fnmatch.fnmatchcase(key, p) for p in HARMLESS)


_UNSET = "(unset)"


def _class_defaults(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{flattened key: default}`` for every ``init_args`` entry of a ``class_path`` in ``value`` whose class
    is importable and declares that argument with a default (keys as :func:`flatten` writes them)."""
    import importlib
    import inspect

    out: dict[str, Any] = {}
    if isinstance(value, dict):
        if isinstance(value.get("class_path"), str) and isinstance(value.get("init_args"), dict):
            module, _, name = value["class_path"].rpartition(".")
            try:
                params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
            except (ImportError, AttributeError, TypeError, ValueError):
                params = {}
            for arg, p in params.items():
                if p.default is not inspect.Parameter.empty:
                    out[f"{prefix}.init_args.{arg}" if prefix else f"init_args.{arg}"] = p.default
        for k, v in value.items():
            out.update(_class_defaults(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value and all(isinstance(v, dict) and "class_path" in v for v in value):
        seen: dict[str, int] = {}
        for v in value:
            name = str(v["class_path"]).rsplit(".", 1)[-1]
            seen[name] = seen.get(name, 0) + 1
            out.update(_class_defaults(v, f"{prefix}.{name}" + (f"#{seen[name]}" if seen[name] > 1 else "")))
    return out


def config_differences(old: dict, new: dict) -> tuple[list[tuple[str, Any, Any]], list[str]]:
    """(keys that change the result with their old and new values, harmless keys that differ).

    A key the run's stored config does not have (it was written by an earlier version, before the argument
    existed) is no difference when its value now is what the run had anyway: unset (None), or the default
    its class declares."""
    a, b = flatten(old), flatten(new)
    defaults = _class_defaults(new)
    for k in b.keys() - a.keys():
        owner, sep, _ = k.rpartition(".init_args.")
        if sep:  # an argument of a class the run had (not of one added since, e.g. a new callback)
            if owner + ".class_path" in a and k in defaults and defaults[k] == b[k]:
                a[k] = b[k]
        elif b[k] is None and any(x.startswith(k.rpartition(".")[0] + ".") for x in a):
            a[k] = b[k]  # an option of a section the run had, left unset
    differing = sorted(k for k in a.keys() | b.keys() if a.get(k, _UNSET) != b.get(k, _UNSET))
    result = [(k, a.get(k, _UNSET), b.get(k, _UNSET)) for k in differing if changes_result(k)]
    return result, [k for k in differing if not changes_result(k)]


def _format_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, old, new in changes)


# ---- the decision -----------------------------------------------------------------------------------------
def prepare_fit(
    run_dir: str, config: dict, *, ckpt_path: str | None = None, new_version: bool = False, force_resume: bool = False
) -> RunPlan:
    """Decide how ``ddo fit`` uses ``run_dir`` given the resolved ``config`` (a plain dict); raise
    :class:`RunDirError` when it must not (nothing is written here)."""
    import yaml

    results = results_in(run_dir)
    if new_version and results:
        new = next_version(run_dir)
        return RunPlan(
            new,
            ckpt_path=ckpt_path,
            message=f"[run_dir] {run_dir} already holds a run: starting a new one in {new} (--new_version)"
            + (f" from {ckpt_path}" if ckpt_path else ""),
        )
    if ckpt_path and os.path.isfile(ckpt_path):
        from .training.run_io import usable_checkpoint

        ckpt_path = usable_checkpoint(ckpt_path)  # an unreadable one: the newest good one beside it, with a warning
    resume = ckpt_path or newest_readable_checkpoint(run_dir)
    if resume is None:
        if results:
            raise RunDirError(
                f"run directory {run_dir} holds results of an earlier run ({', '.join(results)}) but no checkpoint "
                f"to resume from: add --new_version to start {next_version(run_dir)} beside it, or choose another "
                "--run_dir (nothing was changed)"
            )
        return RunPlan(run_dir, message=f"[run_dir] new run in {run_dir}")
    step = checkpoint_step(resume)
    plan = RunPlan(
        run_dir,
        ckpt_path=resume,
        resume_step=step,
        write_config=False,
        message=f"[run_dir] resuming {run_dir} from {resume}" + (f" (step {step})" if step is not None else ""),
    )
    stored = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(stored):
        plan.write_config = True  # e.g. a run started before run directories stored their config
        return plan
    with open(stored) as f:
        old = yaml.safe_load(f) or {}
    changes, harmless = config_differences(old, config)
    if changes and not force_resume:
        raise RunDirError(
            f"cannot resume {run_dir}: the config differs from the run's ({stored}) in settings that change the "
            f"result:\n{_format_changes(changes)}\nUndo them, add --new_version to start a new run, or add "
            "--force_resume to resume with them anyway (nothing was changed)"
        )
    if changes:
        plan.changes, plan.write_config = changes, True
        plan.keep_old_config_as = os.path.join(run_dir, f"config.before-step-{step if step is not None else 'x'}.yaml")
        plan.message += (
            f"; --force_resume with a changed config ({', '.join(k for k, _, _ in changes)}); the "
            f"run's previous config is kept as {plan.keep_old_config_as}"
        )
    elif harmless:
        plan.message += f"; changed settings that do not change the result: {', '.join(harmless)}"
    return plan


def add_run_dir_arguments(parser: Any) -> None:
    """``--run_dir``, ``--new_version``, ``--force_resume`` (added to every subcommand's parser)."""
    parser.add_argument(
        "--run_dir",
        type=str | None,
        default=None,
        help="root of every output of the run (default: outputs/<stem of the first --config>); "
        "a run directory with checkpoints is resumed from its newest readable one",
    )
    parser.add_argument(
        "--new_version",
        type=bool,
        default=False,
        help="fit: when the run directory already holds a run, start a new one in DIR-v2 (-v3, ...)",
    )
    parser.add_argument(
        "--force_resume",
        type=bool,
        default=False,
        help="fit: resume even though the config differs from the run's in keys that change the result",
    )


# ---- filling the paths ------------------------------------------------------------------------------------
def _get(ns: Any, key: str, default: Any = None) -> Any:
    return ns.get(key, default) if hasattr(ns, "get") else getattr(ns, key, default)


def fill_paths(trainer: Any, run_dir: str, subcommand: str = "fit") -> None:
    """Fill the unset output paths of a parsed ``trainer`` config (a jsonargparse Namespace) from ``run_dir``
    (see the module docstring). ``fit`` logs to ``RunCSVLogger`` in ``DIR/logs``; other subcommands
    (``validate``, ``test``, ``predict``) to ``DIR/logs/<subcommand>/version_N``."""
    from jsonargparse import Namespace

    trainer.default_root_dir = run_dir
    logger = _get(trainer, "logger")
    if logger is None or logger is True:
        if subcommand == "fit":
            trainer.logger = Namespace(
                class_path="ddo_lightning.training.RunCSVLogger",
                init_args=Namespace(save_dir=run_dir, name="logs", version=""),
            )
        else:
            trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=Namespace(save_dir=os.path.join(run_dir, "logs"), name=subcommand),
            )
    elif logger is not False:
        for entry in logger if isinstance(logger, list) else [logger]:
            args = _get(entry, "init_args")
            if args is not None and "save_dir" in args and args.save_dir in (None, "."):
                args.save_dir = run_dir
                if subcommand != "fit" and str(_get(entry, "class_path", "")).endswith("RunCSVLogger"):
                    # `ddo validate` and co. log beside the run's metrics.csv, not into it
                    args.save_dir, args.name, args.version = os.path.join(run_dir, "logs"), subcommand, None
    for entry in _get(trainer, "callbacks") or []:
        args = _get(entry, "init_args")
        if (
            str(_get(entry, "class_path", "")).endswith("ModelCheckpoint")
            and args is not None
            and _get(args, "dirpath") is None
        ):
            args.dirpath = os.path.join(run_dir, "checkpoints")
            args.enable_version_counter = False  # last.ckpt is the run's final state, never last-v1.ckpt
