"""torch implementations: hand-written backward passes, drop-in modules, ``convert``.

Written independently of bnlab.numpy (no NumPy reference code is called), so comparing
the two backends checks something. Every layer runs on one autograd Function,
``bnlab.torch.function.Normalize``, with a layout per family; BatchNorm on a CUDA tensor runs
on bnlab's Triton kernels instead (``bnlab.kernels``; ``backend="auto"``, the default, picks
them; ``"torch"`` or ``"triton"`` forces one).

Beyond one device (``sync``): ``SyncBatchNorm`` on torch.distributed (gloo on CPUs, NCCL on
GPUs) and ``convert_sync_batchnorm``. At inference (``inference``): ``fold`` and
``fold_batch_norm`` (BatchNorm folded into the preceding layer), ``precise_batch_norm``
(population statistics after training), ``FrozenBatchNorm1d/2d/3d`` and
``freeze_batch_norm`` (fine-tuning with fixed statistics).
"""

from . import functional
from .._renorm import batch_renorm_schedule
from .convert import convert
from .inference import (FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d, fold,
                        fold_batch_norm, freeze_batch_norm, precise_batch_norm)
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
from .sync import SyncBatchNorm, convert_sync_batchnorm

__all__ = ["functional", "convert", "batch_renorm_schedule",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
           "RMSNorm", "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d",
           "GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d",
           "SyncBatchNorm", "convert_sync_batchnorm",
           "fold", "fold_batch_norm", "precise_batch_norm",
           "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d", "freeze_batch_norm"]
