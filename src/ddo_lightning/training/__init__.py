"""The Lightning layer: modules, data module, fake sources and callbacks."""

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
from .checkpoint_io import AtomicCheckpointIO, CorruptCheckpoint, usable_checkpoint
from .csv_logger import RunCSVLogger
from .datamodule import DDODataModule
from .ema import EMA, PowerEMA
from .fake_sources import FakeSource, OnlineFakeSource, PoolFakeSource
from .module import DDOModule, NonFiniteLossError
from .pretrain import MLEModule

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
