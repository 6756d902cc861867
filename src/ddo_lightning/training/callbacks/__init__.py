from .evaluation import SampleGrids, publish_evaluation
from .figures import ImageGridFigure, ScatterFigure, TokenFigure
from .preemption import Preemption
from .self_play import SelfPlay, atomic_torch_save

__all__ = ["ImageGridFigure", "Preemption", "SampleGrids", "ScatterFigure", "SelfPlay", "TokenFigure", "atomic_torch_save", "publish_evaluation"]
