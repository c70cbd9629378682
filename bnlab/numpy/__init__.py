"""NumPy reference implementations (pure functions, no torch).

``forward(x, ...) -> (y, cache)`` and ``backward(dy, cache) -> grads``, as in CS231n's
``layers.py``. Outputs keep the input's floating dtype (float32 or float64).

One computation over different layouts (normalize.py: ``normalization_forward`` and
``normalization_backward``) serves BatchNorm (batchnorm.py), LayerNorm, GroupNorm,
InstanceNorm, RMSNorm and Ghost BatchNorm (family.py); Batch Renormalization (renorm.py)
adds a correction to BatchNorm's. SyncBatchNorm's merge of per-replica statistics is in
sync.py, folding an evaluation-mode BatchNorm into the preceding layer in fold.py.
"""

from .batchnorm import batch_norm_backward, batch_norm_forward
from .family import (
    ghost_batch_norm_backward,
    ghost_batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
)
from .fold import fold_batch_norm
from .normalize import Layout, NormCache, normalization_backward, normalization_forward
from .renorm import (
    BatchRenormCache,
    batch_renorm_backward,
    batch_renorm_forward,
    batch_renorm_schedule,
)
from .sync import merge_batch_statistics, sync_running_statistics

__all__ = [
    "batch_norm_forward", "batch_norm_backward",
    "Layout", "NormCache", "normalization_forward", "normalization_backward",
    "layer_norm_forward", "layer_norm_backward",
    "group_norm_forward", "group_norm_backward",
    "instance_norm_forward", "instance_norm_backward",
    "rms_norm_forward", "rms_norm_backward",
    "ghost_batch_norm_forward", "ghost_batch_norm_backward",
    "BatchRenormCache", "batch_renorm_forward", "batch_renorm_backward",
    "batch_renorm_schedule",
    "merge_batch_statistics", "sync_running_statistics", "fold_batch_norm",
]
