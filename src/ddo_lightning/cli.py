"""The ``ddo`` command: LightningCLI with the model and data chosen by class path in YAML.

    ddo fit --config configs/toy2d_pretrain.yaml     # MLE pretraining (model: MLEModule)
    ddo fit --config configs/toy2d.yaml              # DDO rounds (model: DDOModule + SelfPlay)
    ddo validate --config configs/toy2d.yaml --ckpt_path outputs/demo/ddo/round-3.ckpt
    ddo fit --help / --print_config

Pretraining and DDO are the same subcommand with different presets: the preset's ``model.class_path``
selects ``MLEModule`` or ``DDOModule``.
"""

from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class DDOCLI(LightningCLI):
    """LightningCLI with every option typed from the classes' signatures."""


def run(args: list[str] | None = None) -> DDOCLI:
    """Parse ``args`` (default: the command line), run the subcommand, return the CLI object."""
    return DDOCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """The ``ddo`` console script (returns nothing, so the exit status is 0 on success)."""
    run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
