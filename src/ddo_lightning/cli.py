"""The ``ddo`` command: LightningCLI with the model and data chosen by class path in YAML.

    ddo fit --config configs/toy2d_pretrain.yaml     # MLE pretraining (model: MLEModule)
    ddo fit --config configs/toy2d.yaml              # DDO rounds (model: DDOModule + SelfPlay)
    ddo fit --config configs/toy2d.yaml --run_dir outputs/mine  # all outputs under one run directory
    ddo validate --config configs/toy2d.yaml --ckpt_path outputs/toy2d/rounds/round-2.ckpt
    ddo --help                                       # the commands and the presets, one line each
    ddo fit --help / --help-all / --print_config      # DDO's options first / everything / the config
    ddo fit --config configs/toy2d.yaml --selfplay.rounds 5 --selfplay.kimg_per_round 100
    ddo convert edm-cifar10-32x32-uncond-vp.pkl edm-cifar10-uncond.pt   # NVIDIA pickle -> plain weights
    ddo fetch --config configs/edm_cifar10.yaml     # the files a preset names as "cache:NAME" (docs/fetch.md)
    ddo sample --config configs/digits.yaml --ckpt outputs/digits/best.pt --seeds 0-99 --out grid/
    ddo fid --config configs/digits.yaml --ckpt outputs/digits/best.pt --features digits --ref ref.npz
    ddo fid --write-stats ref.npz --config configs/digits.yaml --features digits  (see commands.py)
    ddo slurm --config configs/toy2d.yaml --nodes 1 --devices 2 --cpus-per-task 1 --time 00:30:00 --job-name toy --output-dir runs/toy --dry-run

Pretraining and DDO are the same subcommand with different presets: the preset's ``model.class_path``
selects ``MLEModule`` or ``DDOModule``. Every output of a run goes under its run directory; a rerun
resumes it, ``--new_version`` starts ``DIR-v2`` beside it (``ddo_lightning.run_dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback


class LogConfigCallback(SaveConfigCallback):
    """Lightning's ``config.yaml`` in the log directory, and the full resolved config logged to every
    logger as hyperparameters (W&B: the run's config; CSV: ``hparams.yaml``)."""

    def save_config(self, trainer, pl_module, stage) -> None:  # noqa: ANN001
        import yaml

        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class DDOCLI(LightningCLI):
    """LightningCLI with every option typed from the classes' signatures. Checkpoints are written
    atomically (``AtomicCheckpointIO`` unless the config names a checkpoint plugin), and a resume
    checkpoint that cannot be read falls back to the newest good one in its directory."""

    run_plan: Any = None  # the run directory's RunPlan (``ddo fit`` with a run directory), set before parsing ends

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Any:
        from lightning.fabric.plugins import CheckpointIO
        from lightning.pytorch.strategies import ModelParallelStrategy

        from .training.run_io import AtomicCheckpointIO

        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        strategy = config.get("strategy")
        # a ModelParallelStrategy (FSDP2) writes checkpoint directories through its own IO; a strategy given
        # by name is one of Lightning's registered ones, none of which is model-parallel
        sharded = isinstance(strategy, ModelParallelStrategy)
        if not sharded and not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, self._with_progress_bar(config, callbacks))

    def add_arguments_to_parser(self, parser: Any) -> None:
        from .run_dir import add_run_dir_arguments

        add_run_dir_arguments(parser)
        add_selfplay_arguments(parser)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub:  # --selfplay.* folded into the SelfPlay callback first: the run directory compares the result
            apply_selfplay_arguments(self.config[sub])
        self._use_run_dir()

    def _use_run_dir(self) -> None:
        """One root for every output of the run (``ddo_lightning.run_dir``): fill the unset paths from it and,
        for ``fit``, resume it, version it or refuse; store its config as ``DIR/config.yaml``."""
        import yaml
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        from .run_dir import default_run_dir, fill_paths, prepare_fit

        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        run_dir = cfg.get("run_dir") or default_run_dir(cfg.get("config"))
        self.run_plan = None
        if sub != "fit":
            fill_paths(cfg.trainer, run_dir, sub)
            return
        dump = lambda c: self._parser(sub).dump(c, skip_none=False)  # noqa: E731
        as_if_resumed = cfg.clone()  # compared with DIR/config.yaml as it would be stored: paths filled alike
        as_if_resumed.run_dir = run_dir
        fill_paths(as_if_resumed.trainer, run_dir, sub)
        plan = prepare_fit(
            run_dir,
            yaml.safe_load(dump(as_if_resumed)),
            ckpt_path=cfg.get("ckpt_path"),
            new_version=bool(cfg.get("new_version")),
            force_resume=bool(cfg.get("force_resume")),
        )
        cfg.run_dir, cfg.ckpt_path, self.run_plan = plan.path, plan.ckpt_path, plan
        fill_paths(cfg.trainer, plan.path, sub)
        if rank_zero_only.rank == 0:  # every rank decides alike (same files); one writes and speaks
            print(plan.message, flush=True)
        # written once the classes are built (after the files' preflight): a config that fails to start leaves
        # nothing behind; the text is taken now, before "cache:NAME" values are resolved to this machine's paths
        self._run_config_text = dump(cfg) if plan.write_config else None

    def _write_run_config(self) -> None:
        """``DIR/config.yaml`` (the previous one kept as ``config.before-step-N.yaml`` on a forced resume)."""
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        from .files import atomic_write_text

        plan = self.run_plan
        if plan is None or rank_zero_only.rank != 0:
            return
        stored = os.path.join(plan.path, "config.yaml")
        if plan.keep_old_config_as and os.path.isfile(stored):
            os.replace(stored, plan.keep_old_config_as)
        if self._run_config_text is not None:
            atomic_write_text(stored, self._run_config_text)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        self._write_run_config()
        from .training.run_io import RunCSVLogger

        step = self.run_plan.resume_step if self.run_plan is not None else None
        for logger in self.trainer.loggers if step is not None else []:
            if isinstance(logger, RunCSVLogger):
                logger.resume_step = step  # it drops the rows the interrupted run logged after that step

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint here first (for hyperparameters): check it before that
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if isinstance(path, str) and os.path.isfile(path):
            from .training.run_io import usable_checkpoint

            self.config[sub].ckpt_path = usable_checkpoint(path)
            check_checkpoint_kind(self.config[sub].ckpt_path, self.config[sub].get("model"))
        if sub == "fit":
            # LightningCLI would now overwrite the model's arguments with the ones stored in the checkpoint,
            # silently undoing what --force_resume just allowed (and the harmless changes: evaluation sizes,
            # init_from). For fit the config, already compared with the run's own, is what runs; the
            # checkpoint gives the weights and the training state.
            return
        super()._parse_ckpt_path()

    # ---- readable command line (cli_help.py, training/callbacks/progress.py) -----------------------
    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        config = self.config[sub] if sub else self.config
        from .training.base import check_precision

        check_precision(config.trainer.get("precision"))  # as given, before Lightning normalises it
        self._check_files(config, sub)

    @staticmethod
    def _check_files(config: Any, sub: str | None) -> None:
        """Every needed file checked before anything is built (one message, no traceback), and the config's
        "cache:NAME" strings replaced by their paths (docs/fetch.md)."""
        from .fetch import FetchError, preflight

        configs = [str(c) for c in (config.get("config") or [])]
        try:
            message = preflight(config, configs, prog=f"ddo {sub or 'fit'}")
        except FetchError as err:  # an unknown cache name
            message = f"ddo {sub or 'fit'}: {err}"
        if message:
            print(message, file=sys.stderr)
            raise SystemExit(2)

    def instantiate_classes(self) -> None:
        """As LightningCLI's, but an error raised by a class while the config is built surfaces as itself
        (its message the last line of the output), not inside jsonargparse's dump of the whole config."""
        try:
            super().instantiate_classes()
        except Exception as err:  # noqa: BLE001 - re-raised, unwrapped
            root = root_cause(err)
            if root is err:
                raise
            raise root from None

    @staticmethod
    def _with_progress_bar(config: dict, callbacks: list) -> list:
        """Add ``default_progress_bar`` (round, kimg, last evaluation) unless the progress bar is off or the
        config names its own."""
        from lightning.pytorch.callbacks import ProgressBar

        from .training.callbacks.progress import default_progress_bar

        given = config.get("callbacks") or []
        given = given if isinstance(given, (list, tuple)) else [given]
        if (
            config.get("enable_progress_bar") is False
            or config.get("barebones")
            or any(isinstance(c, ProgressBar) for c in [*given, *callbacks])
        ):
            return callbacks
        return [*callbacks, default_progress_bar(int(config.get("log_every_n_steps") or 50))]


SELFPLAY_ARGUMENTS = {  # --selfplay.NAME: type, help (the SelfPlay callback's arguments)
    "rounds": (int, "number of self-play rounds"),
    "kimg_per_round": (float, "real images per round, in thousands"),
    "eval_every_kimg": (float, "evaluate the EMA every this many kimg"),
    "monitor": (str, "the evaluator's metric that picks each round's best checkpoint"),
    "mode": (str, "'min' or 'max': whether lower or higher monitor values are better"),
    "start_round": (int, "the first round this fit plays (1-based; with --selfplay.rounds R: round R alone)"),
    "candidates": (
        list[dict[str, float]],
        "the round's hyper-parameter candidates, a JSON list of dicts, e.g. '[{\"model.objective.alpha\": 2}]'",
    ),
    "allow_large_search": (bool, "allow more candidates than the search's limit"),
    "control": (bool, "after the last round, continue the starting reference by MLE for the same real images"),
    "report_seed_sets": (int, "0, or K >= 3 report seed sets re-evaluating every reported model (mean ± std)"),
}


def add_selfplay_arguments(parser: Any) -> None:
    """``--selfplay.rounds`` etc.: set on the config's SelfPlay callback (``trainer.callbacks``) before it
    is built; unset (null) leaves the preset's value."""
    from typing import Optional

    for name, (kind, text) in SELFPLAY_ARGUMENTS.items():
        parser.add_argument(
            f"--selfplay.{name}",
            type=Optional[kind],  # noqa: UP045 (jsonargparse builds the option from a typing.Optional)
            default=None,
            help=f"{text} (sets SelfPlay's {name} in trainer.callbacks; default: the preset's)",
        )


def apply_selfplay_arguments(config: Any) -> None:
    """Copy the given ``--selfplay.*`` values into the SelfPlay entry of ``config.trainer.callbacks``."""
    given = {k: v for k, v in vars(config.get("selfplay") or argparse.Namespace()).items() if v is not None}
    if not given:
        return
    from .training import SelfPlay

    callbacks = config.trainer.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    targets = [c for c in callbacks if _is_subclass_path(getattr(c, "class_path", None), SelfPlay)]
    if not targets:
        names = ", ".join(f"--selfplay.{k}" for k in given)
        raise ValueError(
            f"{names} set(s) the SelfPlay callback, but this config has none in trainer.callbacks "
            "(an MLE pretraining preset?): use a DDO preset, or add SelfPlay to trainer.callbacks"
        )
    for cb in targets:
        for k, v in given.items():
            cb.init_args[k] = v


def _is_subclass_path(class_path: Any, cls: type) -> bool:
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, name = class_path.rsplit(".", 1)
    try:
        obj = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type) and issubclass(obj, cls)


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of ``err``'s chain (``raise ... from``, or raised while handling another)."""
    seen = {id(err)}
    while True:
        nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if nxt is None or id(nxt) in seen:
            return err
        seen.add(id(nxt))
        err = nxt


def check_checkpoint_kind(path: str, model_config: Any) -> None:
    """Refuse an MLE checkpoint as ``--ckpt_path`` of a DDO run: ``--ckpt_path`` resumes a run of the same
    kind, and an MLE checkpoint has no reference weights (``reference.*``) to resume DDO from."""
    from .training import DDOModule

    if not _is_subclass_path(getattr(model_config, "class_path", None), DDOModule):
        return
    from .files import read_tensor_file

    try:
        ckpt = read_tensor_file(path, mmap=True)
    except (OSError, ValueError):  # not readable this way: Lightning's own load reports it
        return
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    if state and not any(k.startswith("reference.") for k in state):
        kind = (ckpt.get("hyper_parameters") or {}).get("_class_path") or "no reference.* weights"
        raise ValueError(
            f"--ckpt_path {path} is an MLE checkpoint ({kind}), not a DDO run's: --ckpt_path resumes a run of "
            f"the same kind. To start DDO from an MLE checkpoint, use --model.init_args.init_from {path}"
        )


def run(args: list[str] | None = None, cli_class: type[DDOCLI] | None = None, **kwargs: Any) -> DDOCLI:
    """Parse ``args`` (default: the command line), run the subcommand, return the CLI object.
    ``cli_class`` (a DDOCLI subclass) and ``kwargs`` (LightningCLI arguments) serve ``ddo slurm``'s
    config check, which parses exactly as ``ddo fit`` does."""
    from .cli_help import DDOArgumentParser

    return (cli_class or DDOCLI)(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},  # the run's config: <run dir>/config.yaml
        args=args,
        auto_configure_optimizers=False,
        parser_class=DDOArgumentParser,
        **kwargs,
    )


def convert(args: list[str]) -> str:
    """``ddo convert IN.pkl OUT.pt``: the network of an NVIDIA EDM/EDM2 pickle (read without executing
    its stored code) as a plain checkpoint: ``{"state_dict": ..., "nvidia_class": ..., "init_kwargs_json": ...}``,
    loadable with ``torch.load(weights_only=True)`` and usable as ``model.init_from``."""
    from .checkpoints.nvidia_pickle import read_nvidia_network
    from .files import atomic_torch_save

    parser = argparse.ArgumentParser(prog="ddo convert", description=convert.__doc__)
    parser.add_argument("pickle", help="NVIDIA network pickle (.pkl)")
    parser.add_argument("out", help="output file (.pt)")
    parser.add_argument("--key", default="ema", help="entry of the pickle holding the network (default: ema)")
    parser.add_argument("--keep-dtype", action="store_true", help="keep the file's dtypes (EDM2: fp16) instead of fp32")
    ns = parser.parse_args(args)
    class_name, init_kwargs, state, _ = read_nvidia_network(ns.pickle, ns.key)
    if not ns.keep_dtype:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "state_dict": state,
        "nvidia_class": class_name,
        "init_kwargs_json": json.dumps(init_kwargs, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)),
    }
    atomic_torch_save(payload, ns.out)
    print(f"wrote {ns.out}: {class_name}, {len(state)} tensors, {sum(v.numel() for v in state.values()):,} values")
    return ns.out


def main(args: list[str] | None = None) -> None:
    """The ``ddo`` console script (returns nothing, so the exit status is 0 on success)."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["convert"]:
        convert(argv[1:])
        return
    readable_help(argv)
    if argv[:1] == ["slurm"]:
        from .launch.slurm import main as slurm_main

        raise SystemExit(slurm_main(argv[1:]))
    if argv[:1] == ["promote"]:
        from .launch.promote import main as promote_main

        raise SystemExit(promote_main(argv[1:]))
    if argv[:1] in (["sample"], ["fid"], ["fetch"]):
        from .commands import run_command

        run_command(argv[0], argv[1:])
        return
    from .cli_help import FULL_HELP_FLAG
    from .run_dir import RunDirError

    try:
        run([("--help" if a == FULL_HELP_FLAG else a) for a in argv] if FULL_HELP_FLAG in argv else args)
    except RunDirError as err:
        raise SystemExit(f"ddo {argv[0] if argv else 'fit'}: error: {err}") from None


def readable_help(argv: list[str]) -> None:
    """``ddo --help`` (commands and presets) and ``ddo fit --help`` (DDO's options first, one line
    each) print and exit; ``--help-all`` goes on to jsonargparse's full help."""
    from .cli_help import SUBCOMMANDS, fit_help, main_help

    if argv[:1] in (["-h"], ["--help"]) or not argv:
        print(main_help(), end="")
        raise SystemExit(0)
    if argv[:1] and argv[0] in SUBCOMMANDS and ("-h" in argv or "--help" in argv):
        print(fit_help(argv[0], argv[1:]), end="")
        raise SystemExit(0)


if __name__ == "__main__":
    main()
