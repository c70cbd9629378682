"""BatchNorm in NumPy: the reference every other implementation is checked against.

Shapes: x is (N, C) or (N, C, *spatial) with 1 to 3 spatial axes; gamma, beta,
running_mean, running_var are (C,). Statistics reduce over every axis except 1, so each
channel's statistics use m = N * prod(spatial) numbers.
"""

from typing import NamedTuple, Optional

import numpy as np

from .._validate import (
    channel_reduction_axes,
    check_batch_norm,
    check_input,
    check_per_channel,
    check_same_shape,
)
from .normalize import moments, normalize, normalize_backward


class BatchNormCache(NamedTuple):
    """What the backward pass needs from the forward pass."""

    x_hat: np.ndarray  # (N, C, *spatial), normalized input
    rstd: np.ndarray  # (1, C, 1, ...), 1 / sqrt(var + eps)
    gamma: Optional[np.ndarray]  # (C,) or None when there is no scale
    has_beta: bool  # whether there is a shift (dbeta is None without one)
    axes: tuple  # the reduced axes, (0, 2, 3, ...)
    training: bool  # batch statistics (depend on x) or running ones (constants)


def _as_channel_column(v, ndim):
    """(C,) -> (1, C, 1, ..., 1) so that it broadcasts against (N, C, *spatial)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _check_array(name, a):
    if not isinstance(a, np.ndarray):
        raise ValueError(
            f"batch_norm_forward: expected {name} to be a NumPy array (it is updated in "
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
    Returns y with x's shape and dtype, and a BatchNormCache for batch_norm_backward.
    """
    where = "batch_norm_forward"
    x = np.asarray(x)
    check_input(where, x.shape, x.dtype, np.issubdtype(x.dtype, np.floating)
                and x.dtype in (np.float32, np.float64))
    num_channels = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta),
                    ("running_mean", running_mean), ("running_var", running_var)):
        if v is not None:
            check_per_channel(where, name, np.shape(v), num_channels)
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        if v is not None:
            _check_array(name, v)
    check_batch_norm(where, x.shape, training=training,
                     has_running_mean=running_mean is not None,
                     has_running_var=running_var is not None, eps=eps)

    axes = channel_reduction_axes(x.ndim)
    if training:
        mu, var = moments(x, axes)  # (1, C, 1, ...) each
        if running_mean is not None:
            m = x.size // num_channels
            unbiased_var = var.ravel() * (m / (m - 1))
            running_mean *= 1 - momentum
            running_mean += momentum * mu.ravel()
            running_var *= 1 - momentum
            running_var += momentum * unbiased_var
    else:
        mu = _as_channel_column(running_mean.astype(x.dtype), x.ndim)
        var = _as_channel_column(running_var.astype(x.dtype), x.ndim)
    x_hat, rstd = normalize(x, mu, var, eps)

    y = x_hat
    if gamma is not None:
        y = y * _as_channel_column(np.asarray(gamma, dtype=x.dtype), x.ndim)
    if beta is not None:
        y = y + _as_channel_column(np.asarray(beta, dtype=x.dtype), x.ndim)
    gamma_cache = None if gamma is None else np.asarray(gamma, dtype=x.dtype)
    return y, BatchNormCache(x_hat, rstd, gamma_cache, beta is not None, axes, bool(training))


def batch_norm_backward(dy, cache):
    """BatchNorm backward: returns (dx, dgamma, dbeta) for upstream gradient dy.

    dbeta = sum(dy) (eq-bn-dbeta), dgamma = sum(dy * x_hat) (eq-bn-dgamma), both (C,),
    or None without affine. dx (N, C, *spatial): in training the closed form eq-bn-dx,
    which carries the paths through the batch mean and variance; in eval the statistics
    are constants and dx = dy * gamma * rstd (eq-bn-dx-eval).
    """
    if not isinstance(cache, BatchNormCache):
        raise ValueError(
            "batch_norm_backward: expected the cache returned by batch_norm_forward; got "
            f"{type(cache).__name__}."
        )
    x_hat, rstd, gamma, has_beta, axes, training = cache
    dy = np.asarray(dy)
    check_same_shape("batch_norm_backward", "dy", dy.shape, x_hat.shape)
    dy = dy.astype(x_hat.dtype, copy=False)

    dbeta = dy.sum(axis=axes) if has_beta else None
    dgamma = None
    dx_hat = dy  # eq-bn-dxhat: dL/dx_hat = dy * gamma
    if gamma is not None:
        dgamma = (dy * x_hat).sum(axis=axes)
        dx_hat = dy * _as_channel_column(gamma, dy.ndim)
    if training:
        dx = normalize_backward(dx_hat, x_hat, rstd, axes)
    else:
        dx = dx_hat * rstd
    return dx, dgamma, dbeta
