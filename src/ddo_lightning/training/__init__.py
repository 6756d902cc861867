"""The Lightning layer: modules, data module (with the fake sources), callbacks and the run's files."""

from .base import DataNetworkMismatch, DenoiserModule, check_data_fits_network, disable_dropout
from .callbacks import (
    ImageGridFigure,
    LineProgress,
    Preemption,
    RoundProgressBar,
    SampleGrids,
    ScatterFigure,
    SelfPlay,
    TokenFigure,
    WeightsNeverChangedError,
)
from .datamodule import DDODataModule, FakeSource, OnlineFakeSource, PoolFakeSource
from .ema import EMA, PowerEMA
from .module import DDOModule, NonFiniteLossError
from .pretrain import MLEModule
from .run_io import AtomicCheckpointIO, CorruptCheckpoint, RunCSVLogger, usable_checkpoint

__all__ = [
    "AtomicCheckpointIO",
    "CorruptCheckpoint",
    "DDODataModule",
    "DDOModule",
    "ImageGridFigure",
    "TokenFigure",
    "DenoiserModule",
    "EMA",
    "PowerEMA",
    "FakeSource",
    "MLEModule",
    "NonFiniteLossError",
    "OnlineFakeSource",
    "PoolFakeSource",
    "Preemption",
    "RunCSVLogger",
    "SampleGrids",
    "ScatterFigure",
    "SelfPlay",
    "disable_dropout",
    "usable_checkpoint",
    "DataNetworkMismatch",
    "check_data_fits_network",
    "LineProgress",
    "RoundProgressBar",
    "WeightsNeverChangedError",
]
