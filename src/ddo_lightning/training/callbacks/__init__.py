from .figures import ImageGridFigure, ScatterFigure
from .self_play import SelfPlay, atomic_torch_save

__all__ = ["ImageGridFigure", "ScatterFigure", "SelfPlay", "atomic_torch_save"]
