from .figures import ScatterFigure
from .self_play import SelfPlay, atomic_torch_save

__all__ = ["ScatterFigure", "SelfPlay", "atomic_torch_save"]
