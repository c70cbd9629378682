"""NumPy reference implementations (pure functions, no torch).

``forward(x, ...) -> (y, cache)`` and ``backward(dy, cache) -> grads``, as in CS231n's
``layers.py``. Outputs keep the input's floating dtype (float32 or float64).
"""

from .batchnorm import BatchNormCache, batch_norm_backward, batch_norm_forward

__all__ = ["BatchNormCache", "batch_norm_forward", "batch_norm_backward"]
