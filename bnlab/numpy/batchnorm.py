"""BatchNorm in NumPy: the reference every other implementation is checked against.

Shapes: x is (N, C) or (N, C, *spatial) with 1 to 3 spatial axes; gamma, beta,
running_mean, running_var are (C,). Statistics reduce over every axis except 1, so each
channel's statistics use m = N * prod(spatial) numbers.
"""

import numpy as np

from .._validate import (
    channel_reduction_axes,
    check_batch_norm,
)
from .normalize import (
    as_floating_input,
    check_channel_params,
    channel_column,
    channel_layout,
    normalization_backward,
    normalization_forward,
    update_running,
)


def check_running_array(where, name, a):
    """Running statistics are updated in place, so they must be NumPy arrays."""
    if not isinstance(a, np.ndarray):
        raise ValueError(
            f"{where}: expected {name} to be a NumPy array (it is updated in "
            f"place); got {type(a).__name__}."
        )


def batch_norm_forward(x, gamma, beta, *, running_mean=None, running_var=None,
                       training=True, momentum=0.1, eps=1e-5):
    """BatchNorm forward: y = gamma * x_hat + beta (eq-bn-mean .. eq-bn-affine).

    x: (N, C, *spatial) float32/float64. gamma, beta: (C,) or None (no affine).
    running_mean, running_var: (C,) arrays or None. In training they are updated in place,
    running = (1 - momentum) * running + momentum * batch_stat (eq-bn-running-mean), with the
    UNBIASED batch variance for running_var (eq-bn-running-var), as torch does. In eval
    (training=False) they replace the batch statistics (eq-bn-eval).
    Returns y with x's shape and dtype, and a NormCache for batch_norm_backward.
    """
    where = "batch_norm_forward"
    x = as_floating_input(where, x, max_rank=5)
    check_channel_params(where, x, gamma=gamma, beta=beta, running_mean=running_mean,
                         running_var=running_var)
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        if v is not None:
            check_running_array(where, name, v)
    check_batch_norm(where, x.shape, training=training,
                     has_running_mean=running_mean is not None,
                     has_running_var=running_var is not None, eps=eps)

    layout = channel_layout(x.shape, x.shape, channel_reduction_axes(x.ndim))
    stats = None  # training: the batch's own statistics
    if not training:  # eq-bn-eval: (C,) -> (1, C, 1, ...)
        stats = (channel_column(running_mean, x.ndim, x.dtype),
                 channel_column(running_var, x.ndim, x.dtype))
    y, cache, mu, var = normalization_forward(x, layout, gamma, beta, eps, stats=stats,
                                              family="batch_norm")
    if training and running_mean is not None:
        update_running(running_mean, running_var, mu.ravel(), var.ravel(),
                       x.size // x.shape[1], momentum)
    return y, cache


def batch_norm_backward(dy, cache):
    """BatchNorm backward: returns (dx, dgamma, dbeta) for upstream gradient dy.

    dbeta = sum(dy) (eq-bn-dbeta), dgamma = sum(dy * x_hat) (eq-bn-dgamma), both (C,),
    or None without affine. dx (N, C, *spatial): in training the closed form eq-bn-dx,
    which carries the paths through the batch mean and variance; in eval the statistics
    are constants and dx = dy * gamma * rstd (eq-bn-dx-eval).
    """
    return normalization_backward(dy, cache, "batch_norm")
