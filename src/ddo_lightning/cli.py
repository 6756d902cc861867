"""The ``ddo`` command: LightningCLI with the model and data chosen by class path in YAML.

    ddo fit --config configs/toy2d_pretrain.yaml     # MLE pretraining (model: MLEModule)
    ddo fit --config configs/toy2d.yaml              # DDO rounds (model: DDOModule + SelfPlay)
    ddo fit --config configs/toy2d.yaml --run_dir outputs/mine  # all outputs under one run directory
    ddo validate --config configs/toy2d.yaml --ckpt_path outputs/toy2d/rounds/round-3.ckpt
    ddo fit --help / --print_config
    ddo convert edm-cifar10-32x32-uncond-vp.pkl edm-cifar10-uncond.pt   # NVIDIA pickle -> plain weights
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

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Any:
        from lightning.fabric.plugins import CheckpointIO

        from .training.checkpoint_io import AtomicCheckpointIO

        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        strategy = config.get("strategy")
        sharded = "ModelParallel" in type(strategy).__name__ or "ModelParallel" in str(strategy)
        if not sharded and not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser: Any) -> None:
        from .run_dir import add_run_dir_arguments

        add_run_dir_arguments(parser)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        super().parse_arguments(parser, args)
        self._use_run_dir()

    def _use_run_dir(self) -> None:
        """One root for every output of the run (``ddo_lightning.run_dir``): fill the unset paths from it and,
        for ``fit``, resume it, version it or refuse; store its config as ``DIR/config.yaml``."""
        import yaml
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        from .run_dir import default_run_dir, fill_paths, prepare_fit
        from .training.atomic import atomic_write_text

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
        plan = prepare_fit(run_dir, yaml.safe_load(dump(as_if_resumed)), ckpt_path=cfg.get("ckpt_path"),
                           new_version=bool(cfg.get("new_version")), force_resume=bool(cfg.get("force_resume")))
        cfg.run_dir, cfg.ckpt_path, self.run_plan = plan.path, plan.ckpt_path, plan
        fill_paths(cfg.trainer, plan.path, sub)
        if rank_zero_only.rank == 0:  # every rank decides alike (same files); one writes and speaks
            print(plan.message, flush=True)
            stored = os.path.join(plan.path, "config.yaml")
            if plan.keep_old_config_as and os.path.isfile(stored):
                os.replace(stored, plan.keep_old_config_as)
            if plan.write_config:
                atomic_write_text(stored, dump(cfg))

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        from .training.csv_logger import RunCSVLogger

        step = getattr(getattr(self, "run_plan", None), "resume_step", None)
        for logger in self.trainer.loggers if step is not None else []:
            if isinstance(logger, RunCSVLogger):
                logger.resume_step = step  # it drops the rows the interrupted run logged after that step

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint here first (for hyperparameters): check it before that
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if isinstance(path, str) and os.path.isfile(path):
            from .training.checkpoint_io import usable_checkpoint

            self.config[sub].ckpt_path = usable_checkpoint(path)
        super()._parse_ckpt_path()


def run(args: list[str] | None = None) -> DDOCLI:
    """Parse ``args`` (default: the command line), run the subcommand, return the CLI object."""
    return DDOCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},  # the run's config: <run dir>/config.yaml
        args=args,
        auto_configure_optimizers=False,
    )


def convert(args: list[str]) -> str:
    """``ddo convert IN.pkl OUT.pt``: the network of an NVIDIA EDM/EDM2 pickle (read without executing
    its stored code) as a plain checkpoint: ``{"state_dict": ..., "nvidia_class": ..., "init_kwargs_json": ...}``,
    loadable with ``torch.load(weights_only=True)`` and usable as ``model.init_from``."""
    import torch

    from .checkpoints.nvidia_pickle import read_nvidia_network

    parser = argparse.ArgumentParser(prog="ddo convert", description=convert.__doc__)
    parser.add_argument("pickle", help="NVIDIA network pickle (.pkl)")
    parser.add_argument("out", help="output file (.pt)")
    parser.add_argument("--key", default="ema", help="entry of the pickle holding the network (default: ema)")
    parser.add_argument("--keep-dtype", action="store_true", help="keep the file's dtypes (EDM2: fp16) instead of fp32")
    ns = parser.parse_args(args)
    class_name, init_kwargs, state, _ = read_nvidia_network(ns.pickle, ns.key)
    if not ns.keep_dtype:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"state_dict": state, "nvidia_class": class_name,
               "init_kwargs_json": json.dumps(init_kwargs, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))}
    tmp = ns.out + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, ns.out)
    print(f"wrote {ns.out}: {class_name}, {len(state)} tensors, {sum(v.numel() for v in state.values()):,} values")
    return ns.out


def main(args: list[str] | None = None) -> None:
    """The ``ddo`` console script (returns nothing, so the exit status is 0 on success)."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["convert"]:
        convert(argv[1:])
        return
    if argv[:1] in (["-h"], ["--help"]) or not argv:
        print("ddo: LightningCLI subcommands below (fit, validate, test, ...), plus:\n"
              "  ddo sample --help    samples of a checkpoint to PNGs or .npz\n"
              "  ddo fid --help       FID of a checkpoint or image set; reference statistics of a dataset\n"
              "  ddo convert --help   an NVIDIA EDM/EDM2 pickle to plain weights\n"
              "  ddo slurm --help     run ddo fit under SLURM (sbatch script, one task per device)\n")
    if argv[:1] == ["slurm"]:
        from .launch.slurm import main as slurm_main

        raise SystemExit(slurm_main(argv[1:]))
    if argv[:1] in (["sample"], ["fid"]):
        from .commands import run_command

        run_command(argv[0], argv[1:])
        return
    from .run_dir import RunDirError

    try:
        run(args)
    except RunDirError as err:
        raise SystemExit(f"ddo {argv[0] if argv else 'fit'}: error: {err}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
