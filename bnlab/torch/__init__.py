"""torch implementations: hand-written backward passes, drop-in modules, ``convert``.

Written independently of bnlab.numpy (no NumPy reference code is called), so comparing
the two backends checks something.
"""

from . import functional
from .convert import convert
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["functional", "convert", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]
