"""The Lightning layer: modules, data module, fake sources and callbacks."""

from .base import DenoiserModule, disable_dropout
from .callbacks import ImageGridFigure, SampleGrids, ScatterFigure, SelfPlay
from .datamodule import DDODataModule
from .ema import EMA
from .fake_sources import FakeSource, OnlineFakeSource, PoolFakeSource
from .module import DDOModule, NonFiniteLossError
from .pretrain import MLEModule

__all__ = [
    "DDODataModule", "DDOModule", "ImageGridFigure", "DenoiserModule", "EMA", "FakeSource", "MLEModule", "NonFiniteLossError",
    "OnlineFakeSource", "PoolFakeSource", "SampleGrids", "ScatterFigure", "SelfPlay", "disable_dropout",
]
