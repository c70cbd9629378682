"""torch implementations: hand-written backward passes, drop-in modules, ``convert``.

Written independently of bnlab.numpy (no NumPy reference code is called), so comparing
the two backends checks something. Every layer runs on one autograd Function,
``bnlab.torch.function.Normalize``, with a layout per family; BatchNorm on a CUDA tensor runs
on bnlab's Triton kernels instead (``bnlab.kernels``; ``backend="auto"``, the default, picks
them; ``"torch"`` or ``"triton"`` forces one).
"""

from . import functional
from .._renorm import batch_renorm_schedule
from .convert import convert
from .modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GhostBatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
)

__all__ = ["functional", "convert", "batch_renorm_schedule",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
           "RMSNorm", "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d",
           "GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d"]
