"""Batch Renormalization (Ioffe 2017) in NumPy: BatchNorm plus a per-channel correction.

In training, BatchNorm's x_hat is corrected towards what the running statistics would give:
    r = clip(sigma_B / sigma, 1 / rmax, rmax),   d = clip((mu_B - mu) / sigma, -dmax, dmax),
    x_hat = (x - mu_B) / sigma_B * r + d,        y = gamma * x_hat + beta,
with sigma_B = sqrt(var_B + eps) and mu, sigma = running_mean, sqrt(running_var + eps).
r and d are treated as constants in the backward pass, which makes it BatchNorm's backward
with gamma * r in place of gamma: this module calls batch_norm_backward for it.
"""

from typing import NamedTuple, Optional

import numpy as np

from .._renorm import batch_renorm_schedule
from .._validate import (
    channel_reduction_axes,
    check_batch_norm,
    check_renorm,
)
from .batchnorm import batch_norm_backward, check_running_array
from .normalize import (
    as_floating_input,
    check_channel_params,
    NormCache,
    channel_column,
    channel_layout,
    moments,
    update_running,
)

__all__ = ["BatchRenormCache", "batch_renorm_forward", "batch_renorm_backward",
           "batch_renorm_schedule"]


class BatchRenormCache(NamedTuple):
    """What the backward pass needs from the forward pass."""

    bn: NormCache  # BatchNorm's cache: x_hat before the correction, gamma * r as gamma
    r: np.ndarray  # (C,), the clipped scale correction (ones in eval)
    d: np.ndarray  # (C,), the clipped shift correction (zeros in eval)
    gamma: Optional[np.ndarray]  # (C,) or None
    has_beta: bool


def batch_renorm_forward(x, gamma, beta, *, running_mean=None, running_var=None,
                         training=True, momentum=0.01, eps=1e-5, rmax=3.0, dmax=5.0):
    """Batch Renormalization forward; returns (y, BatchRenormCache).

    x: (N, C, *spatial); gamma, beta: (C,) or None; running_mean, running_var: (C,) NumPy
    arrays, REQUIRED (the correction is towards them; start them at zeros and ones).
    Training: r (eq-brn-r) and d (eq-brn-d) from the batch statistics and the running ones
    BEFORE this batch's update, x_hat = x_hat_BN * r + d (eq-brn-xhat), y = gamma * x_hat +
    beta; then the running statistics are updated in place exactly like BatchNorm's
    (eq-bn-running-mean, eq-bn-running-var). ``momentum`` defaults to 0.01, the update rate
    of TensorFlow's renorm_momentum=0.99. rmax >= 1, dmax >= 0: use
    batch_renorm_schedule(step) for the paper's warm-up (rmax=1, dmax=0 is BatchNorm).
    Evaluation (training=False) is BatchNorm's: the running statistics, r = 1, d = 0.
    """
    where = "batch_renorm_forward"
    x = as_floating_input(where, x, max_rank=5)
    check_channel_params(where, x, gamma=gamma, beta=beta, running_mean=running_mean,
                         running_var=running_var)
    check_renorm(where, rmax=rmax, dmax=dmax, has_running_mean=running_mean is not None,
                 has_running_var=running_var is not None)
    check_running_array(where, "running_mean", running_mean)
    check_running_array(where, "running_var", running_var)
    check_batch_norm(where, x.shape, training=training, has_running_mean=True,
                     has_running_var=True, eps=eps)

    axes = channel_reduction_axes(x.ndim)

    def col(v):  # (C,) -> (1, C, 1, ...), in x's dtype
        return channel_column(v, x.ndim, x.dtype)

    if training:
        mu, var = moments(x, axes)  # (1, C, 1, ...) each
        sigma = np.sqrt(col(running_var) + eps)
        r = np.clip(np.sqrt(var + eps) / sigma, 1 / rmax, rmax)  # eq-brn-r
        d = np.clip((mu - col(running_mean)) / sigma, -dmax, dmax)  # eq-brn-d
        update_running(running_mean, running_var, mu.ravel(), var.ravel(),
                       x.size // x.shape[1], momentum)  # after r and d used the old ones
    else:
        mu, var = col(running_mean), col(running_var)  # eq-bn-eval
        r, d = np.ones_like(mu), np.zeros_like(mu)
    x_mu, rstd = x - mu, 1.0 / np.sqrt(var + eps)  # BatchNorm's x_hat = x_mu * rstd
    x_hat = x_mu * (rstd * r) + d  # eq-brn-xhat

    y = x_hat
    if gamma is not None:
        gamma = np.asarray(gamma, dtype=x.dtype)
        y = y * col(gamma)
    if beta is not None:
        y = y + col(beta)
    r, d = r.ravel(), d.ravel()  # (1, C, 1, ...) -> (C,)
    layout = channel_layout(x.shape, x.shape, axes)
    bn = NormCache(x_mu, rstd, r if gamma is None else gamma * r, True, layout,
                   bool(training), True, "batch_norm")
    return y, BatchRenormCache(bn, r, d, gamma, beta is not None)


def batch_renorm_backward(dy, cache):
    """(dx, dgamma, dbeta) with r and d held constant (eq-brn-dx, eq-brn-dgamma).

    dx: BatchNorm's backward with gamma * r in place of gamma, i.e. dx_hat scaled by r.
    dgamma = sum(dy * x_hat) = r * sum(dy * x_hat_BN) + d * sum(dy); dbeta = sum(dy).
    """
    if not isinstance(cache, BatchRenormCache):
        raise ValueError("batch_renorm_backward: expected the cache returned by "
                         f"batch_renorm_forward; got {type(cache).__name__}.")
    dx, dgamma_bn, dbeta = batch_norm_backward(dy, cache.bn)  # dgamma_bn = sum(dy * x_hat_BN)
    dgamma = None if cache.gamma is None else cache.r * dgamma_bn + cache.d * dbeta
    return dx, dgamma, dbeta if cache.has_beta else None
