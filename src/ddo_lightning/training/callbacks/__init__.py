from ..report import publish_evaluation
from .evaluation import SampleGrids
from .figures import ImageGridFigure, ScatterFigure, TokenFigure
from .preemption import Preemption
from .progress import LineProgress, RoundProgressBar, default_progress_bar
from .self_play import SelfPlay, WeightsNeverChangedError, atomic_torch_save

__all__ = [
    "ImageGridFigure",
    "LineProgress",
    "Preemption",
    "RoundProgressBar",
    "WeightsNeverChangedError",
    "default_progress_bar",
    "SampleGrids",
    "ScatterFigure",
    "SelfPlay",
    "TokenFigure",
    "atomic_torch_save",
    "publish_evaluation",
]
